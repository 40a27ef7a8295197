"""Broker security settings reach both Kafka clients, and the passwords reach nothing else.

One ``Settings`` feeds confluent-kafka (``Settings.confluent_config``: topic admin, snapshot
follower, test producers) and Faust/aiokafka (``streams.app.faust_credentials``). Each side is
checked the way its client reads it: librdkafka parses the confluent dict, aiokafka's client
constructor validates the keyword arguments Faust derives from the credentials. The only
connections that succeed go to a loopback TLS server of this module, which asks each client
for its certificate (mutual TLS): no broker here serves TLS.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import shutil
import socket
import ssl
import subprocess
from pathlib import Path

import faust
import pytest
from confluent_kafka import KafkaException, Producer
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from faust.types.auth import AuthProtocol, CredentialsT, SASLMechanism

from streams import cli
from streams.app import faust_credentials
from streams.errors import ConfigError
from streams.runner import run_worker
from streams.settings import Secret, Settings
from tests.pki import CLIENT_NAME, KEY_PASSWORD, ClientCertificateServer, Pki, make_pki

PASSWORD = "s3cr3t-Pa55word-do-not-log"
USERNAME = "pushflow-svc"
CA_NAME = "pushflow-test-ca"
AIOKAFKA_MECHANISMS = ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def ca_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway self-signed CA certificate in PEM."""
    path = tmp_path_factory.mktemp("tls") / "ca.pem"
    try:
        _ca_with_cryptography(path)
    except ImportError:
        openssl = shutil.which("openssl")
        if openssl is None:
            pytest.skip("neither the cryptography package nor the openssl CLI is available")
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
             "-subj", f"/CN={CA_NAME}", "-keyout", str(path.with_suffix(".key")),
             "-out", str(path)],
            check=True, capture_output=True, timeout=60,
        )
    return path


def _ca_with_cryptography(path: Path) -> None:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, CA_NAME)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def secure_env(protocol: str, mechanism: str = "SCRAM-SHA-512", **more: str) -> dict[str, str]:
    return {
        "PUSHFLOW_SECURITY_PROTOCOL": protocol,
        "PUSHFLOW_SASL_MECHANISM": mechanism,
        "PUSHFLOW_SASL_USERNAME": USERNAME,
        "PUSHFLOW_SASL_PASSWORD": PASSWORD,
        **more,
    }


def settings_from(env: dict[str, str], port: int = 9093) -> Settings:
    return Settings.from_env(env, broker=f"kafka://127.0.0.1:{port}")


def librdkafka_accepts(config: dict[str, str]) -> None:
    """Build (and drop) a producer: librdkafka rejects unknown keys, bad values, bad CAs."""
    producer = Producer(config, logger=logging.getLogger("test.librdkafka"))
    producer.flush(0)


def aiokafka_accepts(credentials: CredentialsT | None) -> dict[str, object]:
    """The keyword arguments Faust passes to aiokafka, validated by aiokafka's client."""
    from aiokafka.client import AIOKafkaClient

    auth = dict(credentials_to_aiokafka_auth(credentials))

    async def build() -> None:
        client = AIOKafkaClient(bootstrap_servers=f"127.0.0.1:{closed_port()}", **auth)
        await client.close()

    asyncio.run(build())
    return auth


# --------------------------------------------------------------------------- confluent-kafka


def test_sasl_ssl_from_the_environment_gives_the_confluent_config(ca_file: Path) -> None:
    port = closed_port()
    settings = settings_from(secure_env("SASL_SSL", PUSHFLOW_SSL_CAFILE=str(ca_file)), port)
    assert isinstance(settings.sasl_password, Secret)
    assert settings.confluent_config() == {
        "bootstrap.servers": f"127.0.0.1:{port}",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": USERNAME,
        "sasl.password": PASSWORD,
        "ssl.ca.location": str(ca_file),
    }
    librdkafka_accepts(settings.confluent_config())


def test_librdkafka_rejects_a_missing_ca_file(tmp_path: Path) -> None:
    """The check above can fail: the CA file is really read when the client is built."""
    missing = tmp_path / "missing-ca.pem"
    settings = settings_from(secure_env("SASL_SSL", PUSHFLOW_SSL_CAFILE=str(missing)))
    with pytest.raises(KafkaException, match="ssl.ca.location"):
        librdkafka_accepts(settings.confluent_config())


def test_plaintext_confluent_config_has_no_credentials() -> None:
    settings = settings_from({"PUSHFLOW_SASL_PASSWORD": PASSWORD})
    config = settings.confluent_config()
    assert config["security.protocol"] == "PLAINTEXT"
    assert not {key for key in config if key.startswith(("sasl.", "ssl."))}


# ----------------------------------------------------------------------------- Faust/aiokafka


def test_plaintext_gives_no_faust_credentials() -> None:
    assert faust_credentials(Settings()) is None
    assert faust_credentials(settings_from({"PUSHFLOW_SASL_PASSWORD": PASSWORD})) is None
    assert credentials_to_aiokafka_auth(None) == {"security_protocol": "PLAINTEXT"}


@pytest.mark.parametrize("mechanism", AIOKAFKA_MECHANISMS)
def test_sasl_plaintext_gives_sasl_credentials(mechanism: str) -> None:
    credentials = faust_credentials(settings_from(secure_env("SASL_PLAINTEXT", mechanism)))
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.mechanism is SASLMechanism(mechanism)
    assert credentials.protocol is AuthProtocol.SASL_PLAINTEXT
    assert (credentials.username, credentials.password) == (USERNAME, PASSWORD)
    auth = aiokafka_accepts(credentials)
    assert auth["sasl_mechanism"] == mechanism and auth["ssl_context"] is None


def test_sasl_ssl_gives_sasl_credentials_with_the_ca(ca_file: Path) -> None:
    settings = settings_from(secure_env("SASL_SSL", PUSHFLOW_SSL_CAFILE=str(ca_file)))
    credentials = faust_credentials(settings)
    assert isinstance(credentials, faust.SASLCredentials)
    assert credentials.mechanism is SASLMechanism.SCRAM_SHA_512
    assert credentials.protocol is AuthProtocol.SASL_SSL
    assert credentials.username == USERNAME and credentials.password == PASSWORD
    assert_verifies_against_the_ca(credentials.ssl_context)
    auth = aiokafka_accepts(credentials)
    assert auth["security_protocol"] == "SASL_SSL"


def test_ssl_gives_ssl_credentials_with_the_ca(ca_file: Path) -> None:
    settings = settings_from({"PUSHFLOW_SECURITY_PROTOCOL": "SSL",
                              "PUSHFLOW_SSL_CAFILE": str(ca_file)})
    credentials = faust_credentials(settings)
    assert isinstance(credentials, faust.SSLCredentials)
    assert_verifies_against_the_ca(credentials.context)
    assert aiokafka_accepts(credentials)["security_protocol"] == "SSL"


def assert_verifies_against_the_ca(context: ssl.SSLContext | None) -> None:
    """Server certificates are verified, host names checked, against the configured CA."""
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    subjects = [ca["subject"] for ca in context.get_ca_certs()]
    assert ((("commonName", CA_NAME),),) in subjects


# ------------------------------------------------------------------------------------ secrets


def test_the_password_is_in_no_repr_or_str() -> None:
    settings = settings_from(secure_env("SASL_PLAINTEXT"))
    credentials = faust_credentials(settings)
    shown = [repr(settings), str(settings), f"{settings.sasl_password}",
             repr(settings.sasl_password), repr(credentials), str(credentials)]
    assert not [text for text in shown if PASSWORD in text]
    assert "Secret('**********')" in repr(settings)


def test_a_password_given_as_a_plain_string_is_still_hidden() -> None:
    for settings in (
        Settings(broker="kafka://127.0.0.1:9093", sasl_password=PASSWORD),  # type: ignore[arg-type]
        Settings(broker="kafka://127.0.0.1:9093").replace(sasl_password=PASSWORD),
    ):
        assert PASSWORD not in repr(settings)
        assert isinstance(settings.sasl_password, Secret)


# ------------------------------------------------------------------------------- validation


def test_a_lower_case_protocol_means_the_same_to_both_clients() -> None:
    upper = settings_from(secure_env("SASL_PLAINTEXT"))
    try:
        lower = settings_from(secure_env("sasl_plaintext"))
    except ConfigError:
        return  # rejecting it at start-up is as good as accepting it consistently
    config = lower.confluent_config()
    config["security.protocol"] = config["security.protocol"].upper()
    assert config == upper.confluent_config()


@pytest.mark.parametrize("env", [
    {"PUSHFLOW_SECURITY_PROTOCOL": "SASL_SSSL"},
    {"PUSHFLOW_SECURITY_PROTOCOL": "TLS"},
    secure_env("SASL_PLAINTEXT", "SCRAM-SHA-1"),
    {"PUSHFLOW_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "PUSHFLOW_SASL_USERNAME": USERNAME},
], ids=["typo", "tls", "unknown-mechanism", "no-password"])
def test_impossible_security_settings_fail_at_start_up(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError):
        settings_from(env)


# ------------------------------------------------------------------------------ mutual TLS


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    made = make_pki(tmp_path_factory.mktemp("pki"))
    if made is None:
        pytest.skip("the openssl command is needed to make the test certificates")
    return made


def mtls_env(pki: Pki, protocol: str = "SSL", **more: str) -> dict[str, str]:
    sasl = secure_env(protocol) if "SASL" in protocol else {}
    return {
        **sasl,
        "PUSHFLOW_SECURITY_PROTOCOL": protocol,
        "PUSHFLOW_SSL_CAFILE": str(pki.ca),
        "PUSHFLOW_SSL_CERTFILE": str(pki.client_cert),
        "PUSHFLOW_SSL_KEYFILE": str(pki.client_key),
        "PUSHFLOW_SSL_KEY_PASSWORD": KEY_PASSWORD,
        **more,
    }


def without(env: dict[str, str], *names: str) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in names}


def context_of(credentials: CredentialsT | None) -> ssl.SSLContext:
    if isinstance(credentials, faust.SSLCredentials):
        return credentials.context
    assert isinstance(credentials, faust.SASLCredentials) and credentials.ssl_context
    return credentials.ssl_context


def presented_by_python(context: ssl.SSLContext, server: ClientCertificateServer) -> object:
    """What the server saw of this client: its certificate's common name, or the error."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="127.0.0.1"):
        return server.presented.get(timeout=10)


def test_mutual_tls_from_the_environment_gives_the_confluent_config(pki: Pki) -> None:
    port = closed_port()
    settings = settings_from(mtls_env(pki), port)
    assert isinstance(settings.ssl_key_password, Secret)
    assert settings.confluent_config() == {
        "bootstrap.servers": f"127.0.0.1:{port}",
        "security.protocol": "SSL",
        "ssl.ca.location": str(pki.ca),
        "ssl.certificate.location": str(pki.client_cert),
        "ssl.key.location": str(pki.client_key),
        "ssl.key.password": KEY_PASSWORD,
    }
    librdkafka_accepts(settings.confluent_config())
    sasl = settings_from(mtls_env(pki, "SASL_SSL"), port).confluent_config()
    assert sasl["ssl.certificate.location"] == str(pki.client_cert)
    assert sasl["sasl.password"] == PASSWORD and sasl["ssl.key.password"] == KEY_PASSWORD


def test_librdkafka_rejects_a_wrong_key_password(pki: Pki) -> None:
    """The check above can fail: librdkafka really decrypts the key when the client is built."""
    settings = settings_from(mtls_env(pki, PUSHFLOW_SSL_KEY_PASSWORD="not-the-password"))
    with pytest.raises(KafkaException, match="ssl.key"):
        librdkafka_accepts(settings.confluent_config())


@pytest.mark.parametrize("client_certificate", [True, False], ids=["mtls", "ca-only"])
def test_librdkafka_presents_the_client_certificate(pki: Pki, client_certificate: bool) -> None:
    env = mtls_env(pki)
    if not client_certificate:
        env = without(env, "PUSHFLOW_SSL_CERTFILE", "PUSHFLOW_SSL_KEYFILE",
                      "PUSHFLOW_SSL_KEY_PASSWORD")
    with ClientCertificateServer(pki) as server:
        config = settings_from(env, server.port).confluent_config()
        producer = Producer(config, logger=logging.getLogger("test.librdkafka"))
        presented = server.presented.get(timeout=30)  # librdkafka connects on its own
        producer.flush(0)
    if client_certificate:
        assert presented == CLIENT_NAME
    else:
        assert isinstance(presented, ssl.SSLError)  # the server wanted a certificate


@pytest.mark.parametrize("protocol", ["SSL", "SASL_SSL"])
def test_the_faust_ssl_context_presents_the_client_certificate(pki: Pki, protocol: str) -> None:
    credentials = faust_credentials(settings_from(mtls_env(pki, protocol)))
    context = context_of(credentials)
    assert_verifies_against_the_ca(context)
    with ClientCertificateServer(pki) as server:
        assert presented_by_python(context, server) == CLIENT_NAME
    assert aiokafka_accepts(credentials)["ssl_context"] is context


def test_without_a_client_certificate_the_server_refuses_faust(pki: Pki) -> None:
    """The check above can fail: the server refuses a client that presents nothing."""
    env = without(mtls_env(pki), "PUSHFLOW_SSL_CERTFILE", "PUSHFLOW_SSL_KEYFILE",
                  "PUSHFLOW_SSL_KEY_PASSWORD")
    context = context_of(faust_credentials(settings_from(env)))
    with ClientCertificateServer(pki) as server:
        try:
            presented = presented_by_python(context, server)
        except (ssl.SSLError, ConnectionError):  # TLS 1.2 fails the handshake itself
            presented = server.presented.get(timeout=10)
    assert isinstance(presented, ssl.SSLError)


def test_an_unencrypted_key_needs_no_password(pki: Pki) -> None:
    env = without(mtls_env(pki, PUSHFLOW_SSL_KEYFILE=str(pki.client_key_plain)),
                  "PUSHFLOW_SSL_KEY_PASSWORD")
    settings = settings_from(env)
    assert "ssl.key.password" not in settings.confluent_config()
    librdkafka_accepts(settings.confluent_config())
    with ClientCertificateServer(pki) as server:
        assert presented_by_python(context_of(faust_credentials(settings)), server) == CLIENT_NAME


@pytest.mark.parametrize("change", [
    {"PUSHFLOW_SSL_KEY_PASSWORD": "not-the-password"},
    {"PUSHFLOW_SSL_KEY_PASSWORD": ""},  # an encrypted key and no password: no prompt either
    {"PUSHFLOW_SSL_CERTFILE": "/nonexistent/client.pem"},
    {"PUSHFLOW_SSL_KEYFILE": "/nonexistent/client.key"},
    {"PUSHFLOW_SSL_CAFILE": "/nonexistent/ca.pem"},
], ids=["wrong-password", "no-password", "no-cert-file", "no-key-file", "no-ca-file"])
def test_unusable_tls_files_are_a_config_error_at_start(pki: Pki, change: dict[str, str]) -> None:
    settings = settings_from(mtls_env(pki, **change))
    with pytest.raises(ConfigError, match="ssl_") as raised:
        faust_credentials(settings)
    assert KEY_PASSWORD not in str(raised.value)
    thresholds = gc.get_threshold()
    try:  # the worker stops there, before it starts a broker or any Kafka client
        with pytest.raises(ConfigError, match="ssl_"):
            run_worker(settings.replace(broker=None))
    finally:
        gc.set_threshold(*thresholds)


def test_the_key_password_is_in_no_repr_or_str(pki: Pki) -> None:
    settings = settings_from(mtls_env(pki, "SASL_SSL"))
    credentials = faust_credentials(settings)
    shown = [repr(settings), str(settings), f"{settings.ssl_key_password}",
             repr(credentials), str(credentials)]
    assert not [text for text in shown if KEY_PASSWORD in text or PASSWORD in text]
    plain = Settings(security_protocol="SSL", ssl_certfile="c.pem", ssl_keyfile="k.pem",
                     ssl_key_password=KEY_PASSWORD)  # type: ignore[arg-type]
    assert isinstance(plain.ssl_key_password, Secret) and KEY_PASSWORD not in repr(plain)


@pytest.mark.parametrize("env, refused", [
    ({"PUSHFLOW_SECURITY_PROTOCOL": "SSL", "PUSHFLOW_SSL_CERTFILE": "c.pem"},
     "ssl_certfile is set without ssl_keyfile"),
    ({"PUSHFLOW_SECURITY_PROTOCOL": "SSL", "PUSHFLOW_SSL_KEYFILE": "k.pem"},
     "ssl_keyfile is set without ssl_certfile"),
    ({"PUSHFLOW_SECURITY_PROTOCOL": "SSL", "PUSHFLOW_SSL_KEY_PASSWORD": KEY_PASSWORD},
     "ssl_key_password is set without ssl_keyfile"),
    ({"PUSHFLOW_SSL_CERTFILE": "c.pem", "PUSHFLOW_SSL_KEYFILE": "k.pem"},
     "sent only over TLS"),
    ({**secure_env("SASL_PLAINTEXT"), "PUSHFLOW_SSL_CERTFILE": "c.pem",
      "PUSHFLOW_SSL_KEYFILE": "k.pem"}, "sent only over TLS"),
], ids=["cert-only", "key-only", "password-only", "plaintext", "sasl-plaintext"])
def test_half_a_client_certificate_is_refused(env: dict[str, str], refused: str) -> None:
    with pytest.raises(ConfigError, match=refused):
        settings_from(env)


# ----------------------------------------------------------------- warnings at start-up


def started_with(env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
                 caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The warnings a command logs while it reads its settings."""
    for name in [n for n in os.environ if n.startswith("PUSHFLOW_")]:
        monkeypatch.delenv(name)
    for name, value in {**env, "PUSHFLOW_BROKER": "kafka://127.0.0.1:9093"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(cli, "configure_logging", lambda *args: None)  # keep caplog's handler
    with caplog.at_level(logging.WARNING):
        cli.build_settings()
    return [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("mechanism", AIOKAFKA_MECHANISMS)
def test_sasl_without_tls_logs_one_warning_at_start(
    mechanism: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    warnings = started_with(secure_env("SASL_PLAINTEXT", mechanism), monkeypatch, caplog)
    assert len(warnings) == 1
    line = warnings[0].getMessage()
    assert "\n" not in line and "SASL_PLAINTEXT" in line and "unencrypted" in line
    assert "PUSHFLOW_SECURITY_PROTOCOL=SASL_SSL" in line
    assert PASSWORD not in line and USERNAME not in line
    if mechanism == "PLAIN":
        assert "password" in line


@pytest.mark.parametrize("env", [
    {},
    secure_env("SASL_SSL"),
    {"PUSHFLOW_SECURITY_PROTOCOL": "SSL"},
], ids=["plaintext", "sasl-ssl", "ssl"])
def test_no_transport_warning_otherwise(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert started_with(env, monkeypatch, caplog) == []
