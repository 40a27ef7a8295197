"""Broker security settings reach both Kafka clients, and the password reaches nothing else.

One ``Settings`` feeds confluent-kafka (``Settings.confluent_config``: topic admin, snapshot
follower, test producers) and Faust/aiokafka (``streams.app.faust_credentials``). Each side is
checked the way its client reads it: librdkafka parses the confluent dict, aiokafka's client
constructor validates the keyword arguments Faust derives from the credentials. Nothing here
opens a connection that could succeed: the bootstrap address is a closed loopback port.
"""

from __future__ import annotations

import asyncio
import logging
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

from streams.app import faust_credentials
from streams.errors import ConfigError
from streams.settings import Secret, Settings

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
