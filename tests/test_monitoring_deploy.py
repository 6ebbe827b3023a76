"""The monitoring files in deploy/ work with the real tools: Prometheus's promtool accepts the
scrape config, the alert rules and every PromQL expression of the Grafana dashboard; every
molsub_* name they (and docs/operations.md) use is a metric the node or a worker exports; the
compose file wires Prometheus and Grafana to files that exist and to ports its services use.

Without promtool (Debian package ``prometheus``, scripts/setup installs it) the promtool tests
are skipped, unless MOLSUB_REQUIRE_PROMETHEUS=1 (.ci/run), which makes them fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
PROMETHEUS_YML = DEPLOY / "prometheus" / "prometheus.yml"
ALERTS_YML = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "molsub.json"
COMPOSE = DEPLOY / "docker-compose.yml"
OPERATIONS_MD = REPO / "docs" / "operations.md"
REQUIRE_PROMETHEUS_ENV = "MOLSUB_REQUIRE_PROMETHEUS"

# The metrics contract (docs/operations.md): name -> Prometheus type. The node exports the
# first group on its [http] port, each worker the second on --metrics-port.
NODE_METRICS = {
    "molsub_objects_received": "counter",
    "molsub_bytes_received": "counter",
    "molsub_associations_active": "gauge",
    "molsub_units": "gauge",
    "molsub_stage_seconds": "histogram",
    "molsub_unit_failures": "counter",
    "molsub_deliveries": "counter",
    "molsub_queue_depth": "gauge",
    "molsub_model_info": "gauge",
    "molsub_spool_free_bytes": "gauge",
    "molsub_spool_size_bytes": "gauge",
    "molsub_spool_min_free_bytes": "gauge",
    "molsub_ready": "gauge",
}
WORKER_METRICS = {
    "molsub_worker_tasks": "counter",
    "molsub_worker_task_seconds": "histogram",
    "molsub_worker_busy": "gauge",
    "molsub_worker_gpu_memory_bytes": "gauge",
    "molsub_worker_info": "gauge",
}
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
}
# Grafana's variables, replaced by what they stand for when the dashboard runs.
GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "$window": "1h",
    "$instance": ".*",
}
# Panel types that ship with Grafana: the dashboard needs no plugin.
BUILTIN_PANELS = {"row", "stat", "table", "timeseries", "gauge", "bargauge", "text"}
METRIC_NAME = re.compile(r"\bmolsub_[a-z0-9_]+\b")


def sample_names(metrics: dict[str, str]) -> set[str]:
    """Every series name the families in ``metrics`` produce (a counter's _total, ...)."""
    return {name + suffix for name, kind in metrics.items() for suffix in SUFFIXES[kind]}


EXPORTED = sample_names(NODE_METRICS) | sample_names(WORKER_METRICS)


def promtool() -> str:
    """promtool's path; skips the calling test without it, or fails it under .ci/run."""
    path = shutil.which("promtool")
    if path is None:
        message = (
            "promtool not found (Debian package prometheus; scripts/setup installs it); "
            f"skipped unless {REQUIRE_PROMETHEUS_ENV}=1"
        )
        if os.environ.get(REQUIRE_PROMETHEUS_ENV) == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


def run_promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *map(str, args)], capture_output=True, text=True, timeout=60, check=False
    )


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_expressions() -> list[str]:
    return [t["expr"] for p in panels(dashboard()) for t in p.get("targets", []) if "expr" in t]


def as_promql(expr: str) -> str:
    """A dashboard expression with Grafana's variables replaced, as Prometheus will see it."""
    for variable, value in sorted(GRAFANA_VARIABLES.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a Grafana variable this test does not know: {expr}"
    return expr


def alert_expressions() -> list[str]:
    """The expr of each rule in alerts.yml (one line, or a folded block)."""
    exprs, lines = [], ALERTS_YML.read_text().splitlines()
    for i, line in enumerate(lines):
        key, _, value = line.strip().partition(":")
        if key != "expr":
            continue
        if value.strip() not in (">", "|"):
            exprs.append(value.strip())
            continue
        indent = len(line) - len(line.lstrip()) + 2
        block = [x.strip() for x in lines[i + 1 :]]
        ends = [
            n
            for n, x in enumerate(lines[i + 1 :])
            if x.strip() and len(x) - len(x.lstrip()) < indent
        ]
        exprs.append(" ".join(block[: ends[0] if ends else None]).strip())
    return exprs


def write_rules(path: Path, exprs: list[str]) -> Path:
    """``exprs`` as recording rules (JSON is YAML): promtool then parses each one."""
    rules = [{"record": f"molsub:dashboard_check:{i}", "expr": e} for i, e in enumerate(exprs)]
    path.write_text(json.dumps({"groups": [{"name": "dashboard", "rules": rules}]}, indent=1))
    return path


# --- promtool -------------------------------------------------------------------------------


def test_promtool_accepts_the_scrape_config_and_the_alert_rules() -> None:
    config = run_promtool("check", "config", PROMETHEUS_YML)
    assert config.returncode == 0, config.stdout + config.stderr
    assert "1 rule files found" in config.stdout + config.stderr  # alerts.yml was read
    rules = run_promtool("check", "rules", ALERTS_YML)
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert re.search(r"SUCCESS: [1-9]\d* rules found", rules.stdout + rules.stderr)


def test_every_dashboard_expression_parses_as_promql(tmp_path: Path) -> None:
    exprs = [as_promql(e) for e in dashboard_expressions()]
    assert len(exprs) >= 15
    checked = run_promtool("check", "rules", write_rules(tmp_path / "dashboard.yml", exprs))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in checked.stdout + checked.stderr
    # The check can fail: one broken expression (an unclosed bracket) is refused.
    broken = run_promtool(
        "check", "rules", write_rules(tmp_path / "broken.yml", [*exprs, "sum(rate(up[5m])"])
    )
    assert broken.returncode != 0


# --- names ----------------------------------------------------------------------------------


def literal_names(path: Path) -> set[str]:
    """The metric names a module spells out ("molsub_..." string literals)."""
    return set(re.findall(r"[\"'](molsub_[a-z0-9_]+)[\"']", path.read_text()))


def test_the_node_and_the_worker_register_exactly_the_contract(tmp_path: Path) -> None:
    from common.settings import NodeConfig, NodeSettings, QueueSettings
    from molsub.metrics import NodeMetrics
    from scp.state import StateDB
    from worker.queue.metrics import WorkerMetrics

    # Both directions, from the source: a metric renamed in code or in the contract fails here.
    assert literal_names(REPO / "molsub" / "metrics.py") == set(NODE_METRICS)
    assert literal_names(REPO / "worker" / "queue" / "metrics.py") == set(WORKER_METRICS)
    # What the registries really produce (a worker's families all exist from its start).
    worker = {m.name: m.type for m in WorkerMetrics().registry.collect()}
    assert worker == WORKER_METRICS
    config = NodeConfig(
        node=NodeSettings(spool_dir=tmp_path / "spool"), queue=QueueSettings(broker_url="")
    )
    db = StateDB(tmp_path / "state.sqlite3")
    try:
        node = NodeMetrics(config, db, associations=lambda: 0, ready=lambda: True)
        node.observe_store("1.2.840.10008.5.1.4.1.1.66.4", 0, 100)
        families = {m.name: m.type for m in node.registry.collect()}
        samples = {s.name for m in node.registry.collect() for s in m.samples}
    finally:
        db.close()
    # Every family but the model's, which needs a bundle (the live test below has one).
    assert set(NODE_METRICS) - set(families) == {"molsub_model_info"}
    assert all(NODE_METRICS[name] == kind for name, kind in families.items())
    assert samples <= EXPORTED


def test_dashboard_alerts_and_docs_use_only_exported_metric_names() -> None:
    used = {
        "dashboard": set(METRIC_NAME.findall(" ".join(dashboard_expressions()))),
        "alerts": set(METRIC_NAME.findall(" ".join(alert_expressions()))),
    }
    for where, names in used.items():
        assert names, where
        assert names <= EXPORTED, f"{where} queries series nobody exports: {names - EXPORTED}"
    # The docs may also name a family (molsub_stage_seconds) rather than one of its series.
    documented = set(METRIC_NAME.findall(OPERATIONS_MD.read_text()))
    known = EXPORTED | set(NODE_METRICS) | set(WORKER_METRICS)
    assert documented <= known, f"docs/operations.md names {documented - known}"


def test_docs_list_every_metric_and_the_dashboard_shows_the_issues_panels() -> None:
    docs = OPERATIONS_MD.read_text()
    for name in [*NODE_METRICS, *WORKER_METRICS]:
        assert re.search(rf"`{name}(_total)?[{{`]", docs), f"docs/operations.md lacks {name}"
    exprs = " ".join(dashboard_expressions())
    for needed in (
        "molsub_objects_received_total",  # throughput
        'molsub_stage_seconds_count{stage="end_to_end"',  # units done per hour
        "histogram_quantile(0.5, sum by (le, stage) (rate(molsub_stage_seconds_bucket",
        "histogram_quantile(0.95, sum by (le, stage) (rate(molsub_stage_seconds_bucket",
        "molsub_unit_failures_total",  # failures by reason
        'molsub_deliveries_total{outcome="failed"',
        'molsub_objects_received_total{status!="0x0000"',
        "molsub_queue_depth",
        "molsub_units",
        'molsub_worker_task_seconds_sum{stage="infer"',  # GPU worker load
        "molsub_worker_busy",
        "molsub_worker_gpu_memory_bytes",
        "molsub_model_info",
        "molsub_spool_min_free_bytes",
        "molsub_ready",
    ):
        assert needed in exprs, needed
    assert "up{" in exprs


def test_dashboard_needs_no_plugin_and_takes_its_data_source_from_a_variable() -> None:
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = []
    for panel in panels(board):
        ids.append(panel["id"])
        assert panel["type"] in BUILTIN_PANELS, panel["type"]
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert all(t["datasource"] == panel["datasource"] for t in panel["targets"])
    assert len(ids) == len(set(ids))
    provisioned = (DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text()
    assert f"uid: {variables['datasource']['current']['value']}" in provisioned


# --- compose wiring -------------------------------------------------------------------------


def compose_services(text: str) -> dict[str, str]:
    """Service name -> its block of docker-compose.yml (a structural reading: no YAML parser
    is a dependency of the project)."""
    body = text.split("\nservices:\n", 1)[1].split("\n\nvolumes:\n", 1)[0]
    blocks = re.split(r"\n(?=  [a-z][a-z0-9-]*:\n)", "\n" + body)
    services = {}
    for block in blocks:
        match = re.match(r"\s*([a-z][a-z0-9-]*):\n", block)
        if match:
            services[match.group(1)] = block
    return services


def scrape_targets() -> dict[str, list[str]]:
    """job_name -> its host:port targets, from prometheus.yml."""
    jobs: dict[str, list[str]] = {}
    job = ""
    for line in PROMETHEUS_YML.read_text().splitlines():
        if m := re.match(r"\s*- job_name: (\S+)", line):
            job = m.group(1)
        elif m := re.match(r"\s*- targets: (\[.*\])", line):
            jobs.setdefault(job, []).extend(json.loads(m.group(1)))
    return jobs


def test_compose_parses_and_its_services_match_the_structural_reading() -> None:
    text = COMPOSE.read_text()
    services = compose_services(text)
    assert set(services) >= {"redis", "scp", "cpu-worker", "gpu-worker", "prometheus", "grafana"}
    try:
        import yaml  # type: ignore[import-untyped]
    except ImportError:
        return  # PyYAML is not a dependency; the structural reading above is the check
    parsed = yaml.safe_load(text)
    assert set(parsed["services"]) == set(services)


def test_compose_mounts_the_monitoring_files_that_exist() -> None:
    services = compose_services(COMPOSE.read_text())
    for service, mounts in {
        "prometheus": {
            "./prometheus/prometheus.yml": "/etc/prometheus/prometheus.yml",
            "./prometheus/alerts.yml": "/etc/prometheus/alerts.yml",
        },
        "grafana": {
            "./grafana/provisioning/datasources": "/etc/grafana/provisioning/datasources",
            "./grafana/provisioning/dashboards": "/etc/grafana/provisioning/dashboards",
            "./grafana/dashboards": "/var/lib/grafana/dashboards/molsub",
        },
    }.items():
        for source, target in mounts.items():
            assert f"- {source}:{target}:ro" in services[service], (service, source)
            assert (DEPLOY / source).exists(), source
    # Prometheus finds alerts.yml beside its config, as the mounts place it.
    assert "rule_files:\n  - alerts.yml" in PROMETHEUS_YML.read_text()
    # Grafana's dashboard provider reads where the dashboards are mounted.
    provider = (DEPLOY / "grafana/provisioning/dashboards/molsub.yml").read_text()
    assert "path: /var/lib/grafana/dashboards/molsub" in provider
    assert list((DEPLOY / "grafana/dashboards").glob("*.json")) == [DASHBOARD]
    # No default admin password: compose refuses to start Grafana without one from .env.
    assert "GF_SECURITY_ADMIN_PASSWORD: ${GRAFANA_ADMIN_PASSWORD:?" in services["grafana"]


def test_scrape_targets_are_the_ports_the_services_listen_on() -> None:
    services = compose_services(COMPOSE.read_text())
    targets = scrape_targets()
    assert set(targets) == {"molsub-node", "molsub-worker"}
    (node,) = targets["molsub-node"]
    host, port = node.split(":")
    assert host == "scp"
    assert f'MOLSUB_HTTP_PORT: "{port}"' in services["scp"]
    assert "MOLSUB_HTTP_HOST: 0.0.0.0" in services["scp"]  # reachable over the compose network
    # Published to the host on loopback only: the status page has no login.
    assert f'- "127.0.0.1:{port}:{port}"' in services["scp"]
    assert f"127.0.0.1:{port}/readyz" in services["scp"]  # the healthcheck probes readiness
    workers = dict(t.split(":") for t in targets["molsub-worker"])
    assert set(workers) == {"cpu-worker", "gpu-worker"}
    for service, port in workers.items():
        # Reachable over the compose network (the worker's default is loopback), not published.
        assert f'"--metrics-port", "{port}", "--metrics-host", "0.0.0.0"' in services[service]
        assert "ports:" not in services[service], service
    for service in ("prometheus", "grafana"):
        published = re.findall(r'- "([^"]+)"', services[service].split("ports:")[1])
        assert published and all(p.startswith("127.0.0.1:") for p in published), service


# --- a real Prometheus scraping a real node ---------------------------------------------------

PROMETHEUS_START_S = 60.0
SCRAPES_S = 60.0  # until three scrapes are stored (1 s apart) and the rules evaluated


def prometheus_binary() -> str:
    """The server's path (Debian package prometheus); skip or fail as for promtool."""
    promtool()
    path = shutil.which("prometheus")
    if path is None:
        message = f"prometheus server not found; skipped unless {REQUIRE_PROMETHEUS_ENV}=1"
        if os.environ.get(REQUIRE_PROMETHEUS_ENV) == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


class PrometheusApi:
    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def get(self, path: str, **params: str) -> Any:  # noqa: ANN401 - Prometheus's JSON
        import urllib.error
        import urllib.parse
        import urllib.request

        url = f"{self.base_url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:  # 400/422: a bad query, the body says why
            return json.loads(exc.read())

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = self.get("/api/v1/query", query=expr)
        assert answer["status"] == "success", (expr, answer)
        return list(answer["data"]["result"])

    def ready(self) -> bool:
        try:
            return self.get("/api/v1/status/buildinfo")["status"] == "success"
        except OSError:
            return False


@pytest.fixture
def prometheus(http_node: Any, tmp_path: Path) -> Iterator[PrometheusApi]:  # noqa: ANN401
    """Debian's prometheus server scraping ``http_node`` every second, with deploy's alerts."""
    from molsub.launch import free_port, stop_process, wait_for

    binary = prometheus_binary()
    node = http_node.base_url.removeprefix("http://")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS_YML)],
        "scrape_configs": [{"job_name": "molsub-node", "static_configs": [{"targets": [node]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(json.dumps(config))
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    api = PrometheusApi(f"http://127.0.0.1:{port}")
    try:
        wait_for(api.ready, PROMETHEUS_START_S, "prometheus to answer")
        yield api
    except BaseException:
        print((tmp_path / "prometheus.log").read_text(errors="replace")[-4000:])
        raise
    finally:
        stop_process(proc)
        log.close()


def values(result: list[dict[str, Any]]) -> dict[tuple[tuple[str, str], ...], float]:
    """Each series' labels (without __name__) -> its value."""
    return {
        tuple(sorted((k, v) for k, v in r["metric"].items() if k != "__name__")): float(
            r["value"][1]
        )
        for r in result
    }


@pytest.mark.slow
def test_prometheus_scrapes_the_node_and_the_dashboard_and_alerts_answer(
    prometheus: PrometheusApi,
    http_node: Any,  # noqa: ANN401
) -> None:
    from molsub.launch import wait_for

    def scraped_thrice() -> bool:
        counts = prometheus.query('count_over_time(up{job="molsub-node"}[1m])')
        return bool(counts) and float(counts[0]["value"][1]) >= 3

    wait_for(scraped_thrice, SCRAPES_S, "three scrapes of the node", every_s=0.5)
    assert values(prometheus.query('up{job="molsub-node"}')) == {
        (("instance", http_node.base_url.removeprefix("http://")), ("job", "molsub-node")): 1.0
    }
    units = {dict(k)["state"]: v for k, v in values(prometheus.query("molsub_units")).items()}
    assert units["done"] == 1 and units["failed"] == 1, units
    assert set(prometheus.query("molsub_ready")[0]["value"][1:]) == {"1"}

    # Every dashboard expression runs; the ones about what happened return that.
    answers = {expr: prometheus.query(as_promql(expr)) for expr in dashboard_expressions()}

    def answer(fragment: str) -> list[dict[str, Any]]:
        (expr,) = [e for e in answers if fragment in e]
        return answers[expr]

    for fragment in (
        "molsub_ready",
        "up{",
        "rate(molsub_bytes_received_total",
        'molsub_stage_seconds_count{stage="end_to_end"',
        "molsub_queue_depth",
        "molsub_spool_free_bytes",
    ):
        assert answer(fragment), fragment
    (model,) = answer("molsub_model_info")
    assert model["metric"]["untrained"] == "true"
    statuses = {r["metric"]["status"] for r in answer("sum by (status) (rate(")}
    assert {"0x0000", http_node.refused_status} <= statuses
    refused = {r["metric"]["status"] for r in answer('status!="0x0000"')}
    assert refused == {http_node.refused_status}
    failures = {(r["metric"]["stage"], r["metric"]["kind"]) for r in answer("unit_failures")}
    assert failures == {("prepare", "permanent")}
    for q in ("0.5", "0.95"):
        stages = {r["metric"]["stage"] for r in answer(f"histogram_quantile({q},")}
        assert stages == {"receive_to_ready", "prepare", "infer", "deliver", "end_to_end"}
    by_state = {r["metric"]["state"] for r in answer("sum by (state) (molsub_units")}
    assert {"done", "failed"} <= by_state

    # deploy's alert rules loaded and evaluated without error against the node's series.
    def evaluated() -> list[dict[str, Any]]:
        groups = prometheus.get("/api/v1/rules")["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        return rules if rules and all(r["health"] != "unknown" for r in rules) else []

    rules = wait_for(evaluated, SCRAPES_S, "the alert rules to be evaluated", every_s=0.5)
    assert len(rules) == len(alert_expressions())
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
    # A healthy node: nothing fires, but the spool alerts follow this machine's free disk.
    (free,) = values(prometheus.query("molsub_spool_free_bytes")).values()
    (watermark,) = values(prometheus.query("molsub_spool_min_free_bytes")).values()
    expected = {
        "MolsubSpoolNearWatermark": free < 2 * watermark,
        "MolsubSpoolBelowWatermark": free < watermark,
    }
    active = {r["name"]: r["state"] != "inactive" for r in rules}
    assert active == {name: expected.get(name, False) for name in active}
