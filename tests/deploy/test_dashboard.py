"""Prometheus scrapes every replica docker-compose.yml runs, and the Grafana dashboard charts series that exist.

Like test_compose.py these read the files (no Docker engine runs here) and fail naming the file and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from paymesh.chassis.metrics import Metrics
from paymesh.ops import services as mesh
from tests.deploy.dashboard import DASHBOARD, dashboard_metric_names, load_dashboard, metric_names, panels
from tests.deploy.test_compose import (
    ROOT,
    WILDCARD_HOSTS,
    argv_of,
    env_of,
    load_compose,
    module_of,
    ports_of,
    read_dockerfile,
    replicas_of,
    split_addr,
)

PROMETHEUS_YML = ROOT / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA = ROOT / "deploy" / "grafana"
DATASOURCES_YML = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARDS_YML = GRAFANA / "provisioning" / "dashboards" / "paymesh.yml"
SCRAPE_INTERVAL = "5s"
PROMETHEUS_CONFIG = "/etc/prometheus/prometheus.yml"  # the image's --config.file
GRAFANA_PROVISIONING = "/etc/grafana/provisioning"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}

# What deploy/grafana/dashboards/paymesh.json charts: counters with their `_total`, histograms by family.
EXPECTED_METRICS = {
    "grpc_server_handled_total",
    "grpc_server_handling_seconds",
    "paymesh_orders_finished_total",
    "paymesh_saga_duration_seconds",
    "paymesh_payments_total",
    "paymesh_gateway_call_seconds",
    "paymesh_breaker_state",
    "paymesh_webhook_deliveries_total",
    "paymesh_events_published_total",
    "paymesh_outbox_unsent_rows",
    "paymesh_outbox_oldest_unsent_seconds",
    "paymesh_consumer_events_total",
    "paymesh_consumer_redeliveries_total",
    "paymesh_consumer_dead_lettered_total",
    "paymesh_consumer_num_pending",
    "paymesh_consumer_num_ack_pending",
    "paymesh_consumer_num_redelivered",
}


# --- reading the files ---------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    job: str
    host: str
    port: int
    config: dict[str, Any]  # its scrape_config


@dataclass(frozen=True)
class Deploy:
    services: dict[str, dict[str, Any]]
    replicas: dict[str, str]  # compose service -> paymesh service it runs (order_svc, ...)
    targets: list[Target]


def load_prometheus() -> dict[str, Any]:
    return yaml.safe_load(PROMETHEUS_YML.read_text())


def scrape_targets(config: dict[str, Any]) -> list[Target]:
    out = []
    for job in config.get("scrape_configs") or []:
        for static in job.get("static_configs") or []:
            for target in static.get("targets") or []:
                host, port = split_addr(str(target))
                out.append(Target(str(job["job_name"]), host, port, job))
    return out


def networks_of(svc: dict[str, Any]) -> set[str]:
    networks = svc.get("networks")
    return set(networks) if networks else {"default"}


def image_tag(svc: dict[str, Any]) -> str:
    _, _, tag = str(svc.get("image", "")).rpartition(":")
    return tag if "/" not in tag else ""


def mount(svc: dict[str, Any], source: Path) -> str | None:
    """Where `svc` mounts the host path `source`, read-only, or None."""
    for entry in svc.get("volumes") or []:
        parts = str(entry).split(":")
        if len(parts) >= 2 and (ROOT / parts[0]).resolve() == source.resolve():
            assert parts[2:] == ["ro"], f"docker-compose.yml: mount {parts[0]} read-only (`:ro`)"
            return parts[1]
    return None


@pytest.fixture(scope="module")
def deploy() -> Deploy:
    services = load_compose()["services"]
    image = read_dockerfile()
    built = {svc.get("image") for svc in services.values() if "build" in svc}
    replicas = {}
    for name, svc in services.items():
        if "build" in svc or svc.get("image") in built:
            module = module_of(argv_of(svc, image))
            if module in mesh.NAMES:
                replicas[name] = module
    return Deploy(services, replicas, scrape_targets(load_prometheus()))


# --- Prometheus ----------------------------------------------------------------------------


def test_prometheus_scrapes_every_five_seconds() -> None:
    config = load_prometheus()
    assert (config.get("global") or {}).get("scrape_interval") == SCRAPE_INTERVAL, (
        f"{PROMETHEUS_YML.relative_to(ROOT)}: set global.scrape_interval: {SCRAPE_INTERVAL}"
    )
    for job in config.get("scrape_configs") or []:
        assert job.get("scrape_interval", SCRAPE_INTERVAL) == SCRAPE_INTERVAL, f"job {job['job_name']}: scrape_interval"


def test_every_target_is_a_replica_at_the_metrics_port_it_listens_on(deploy: Deploy) -> None:
    where = PROMETHEUS_YML.relative_to(ROOT)
    assert deploy.targets, f"{where}: no static_configs targets"
    for t in deploy.targets:
        assert t.host in deploy.services, f"{where}: job {t.job} scrapes {t.host}, not a docker-compose.yml service"
        module = deploy.replicas.get(t.host)
        assert module == t.job, (
            f"{where}: job {t.job} scrapes {t.host}, which runs {module}: one job per service, named after it"
        )
        assert t.config.get("metrics_path", "/metrics") == "/metrics", f"{where}: job {t.job}: services serve /metrics"
        assert t.config.get("scheme", "http") == "http", f"{where}: job {t.job}: /metrics is plain HTTP"
        variable = f"{mesh.spec(module).env_prefix}_METRICS_ADDR"
        addr = env_of(deploy.services[t.host]).get(variable)
        assert addr, (
            f"docker-compose.yml: {t.host} should set {variable}=0.0.0.0:<port> (the default binds loopback only)"
        )
        host, port = split_addr(addr)
        assert host in WILDCARD_HOSTS, (
            f"docker-compose.yml: {t.host}'s {variable}={addr}: bind 0.0.0.0 so Prometheus' container can reach it"
        )
        assert port == t.port, f"{where}: {t.host}:{t.port}, but {t.host}'s {variable} is {addr}"


def test_every_paymesh_replica_is_scraped_once(deploy: Deploy) -> None:
    assert set(deploy.replicas.values()) == set(mesh.NAMES), f"docker-compose.yml runs {sorted(deploy.replicas)}"
    scraped = [t.host for t in deploy.targets]
    doubled = sorted({h for h in scraped if scraped.count(h) > 1})
    assert not doubled, f"{PROMETHEUS_YML.relative_to(ROOT)} scrapes {doubled} more than once"
    missing = sorted(set(deploy.replicas) - set(scraped))
    assert not missing, f"{PROMETHEUS_YML.relative_to(ROOT)}: add the targets of {missing}"
    for name in deploy.replicas:
        # One target per container: `deploy.replicas` would put several behind one name.
        assert replicas_of(deploy.services[name]) == 1, f"docker-compose.yml: run {name}'s replicas as named services"


def test_prometheus_runs_the_scrape_config_next_to_the_services(deploy: Deploy) -> None:
    svc = deploy.services.get("prometheus")
    assert svc, "docker-compose.yml: add a `prometheus` service (image prom/prometheus)"
    assert str(svc.get("image", "")).startswith("prom/prometheus:") and image_tag(svc) not in ("", "latest"), (
        f"docker-compose.yml: prometheus should run prom/prometheus at a pinned tag, got {svc.get('image')}"
    )
    assert mount(svc, PROMETHEUS_YML) == PROMETHEUS_CONFIG, (
        f"docker-compose.yml: mount ./deploy/prometheus/prometheus.yml at {PROMETHEUS_CONFIG}:ro"
    )
    assert [(p.host_ip, p.published, p.target) for p in ports_of(svc)] == [("127.0.0.1", "9090", 9090)], (
        "docker-compose.yml: prometheus should publish \"127.0.0.1:9090:9090\""
    )
    for name in deploy.replicas:
        assert networks_of(svc) & networks_of(deploy.services[name]), (
            f"docker-compose.yml: prometheus shares no network with {name}"
        )


# --- Grafana -------------------------------------------------------------------------------


def test_grafana_provisions_the_prometheus_datasource_and_the_dashboard(deploy: Deploy) -> None:
    svc = deploy.services.get("grafana")
    assert svc, "docker-compose.yml: add a `grafana` service (image grafana/grafana)"
    assert str(svc.get("image", "")).startswith("grafana/grafana:") and image_tag(svc) not in ("", "latest"), (
        f"docker-compose.yml: grafana should run grafana/grafana at a pinned tag, got {svc.get('image')}"
    )
    assert env_of(svc).get("GF_AUTH_ANONYMOUS_ENABLED") == "true", "docker-compose.yml: grafana: anonymous viewers"
    assert env_of(svc).get("GF_AUTH_ANONYMOUS_ORG_ROLE", "Viewer") == "Viewer", "grafana: anonymous users only view"
    assert "prometheus" in (svc.get("depends_on") or {}), "docker-compose.yml: grafana should depend on prometheus"
    assert [(p.host_ip, p.published, p.target) for p in ports_of(svc)] == [("127.0.0.1", "3000", 3000)], (
        "docker-compose.yml: grafana should publish \"127.0.0.1:3000:3000\""
    )
    assert networks_of(svc) & networks_of(deploy.services["prometheus"]), "grafana shares no network with prometheus"
    assert mount(svc, GRAFANA / "provisioning") == GRAFANA_PROVISIONING, (
        f"docker-compose.yml: mount ./deploy/grafana/provisioning at {GRAFANA_PROVISIONING}:ro"
    )
    dashboards_dir = mount(svc, DASHBOARD.parent)
    assert dashboards_dir, "docker-compose.yml: mount ./deploy/grafana/dashboards into grafana :ro"

    (source,) = yaml.safe_load(DATASOURCES_YML.read_text())["datasources"]
    assert {"type": source["type"], "uid": source["uid"]} == DATASOURCE, f"{DATASOURCES_YML.relative_to(ROOT)}"
    url = urlsplit(source["url"])
    prometheus_port = ports_of(deploy.services["prometheus"])[0].target
    assert (url.scheme, url.hostname, url.port) == ("http", "prometheus", prometheus_port), (
        f"{DATASOURCES_YML.relative_to(ROOT)}: url should be http://prometheus:{prometheus_port}, got {source['url']}"
    )

    (provider,) = yaml.safe_load(DASHBOARDS_YML.read_text())["providers"]
    assert provider["type"] == "file" and provider["options"]["path"] == dashboards_dir, (
        f"{DASHBOARDS_YML.relative_to(ROOT)}: a file provider reading {dashboards_dir}, where grafana mounts them"
    )
    home = env_of(svc).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home:
        assert home == f"{dashboards_dir}/{DASHBOARD.name}", f"docker-compose.yml: grafana's home dashboard {home}"


def test_dashboard_parses_and_every_query_reads_the_prometheus_datasource() -> None:
    where = DASHBOARD.relative_to(ROOT)
    dashboard = load_dashboard()
    assert dashboard.get("uid") == "paymesh" and dashboard.get("title") == "paymesh", f"{where}: uid and title"
    ids = [panel.get("id") for panel in panels(dashboard)]
    assert ids and len(ids) == len(set(ids)), f"{where}: panel ids should be unique, got {ids}"
    for panel in panels(dashboard):
        if panel.get("type") == "row":
            continue
        title = panel.get("title")
        assert panel.get("type") == "timeseries", f"{where}: panel {title!r} should be a timeseries"
        assert panel.get("datasource") == DATASOURCE, f"{where}: panel {title!r}: datasource {DATASOURCE}"
        targets = panel.get("targets") or []
        assert targets, f"{where}: panel {title!r} has no queries"
        ref_ids = [t.get("refId") for t in targets]
        assert len(ref_ids) == len(set(ref_ids)), f"{where}: panel {title!r}: refIds {ref_ids} should be unique"
        for target in targets:
            assert target.get("datasource") == DATASOURCE, f"{where}: a query of {title!r}: datasource {DATASOURCE}"
            assert str(target.get("expr", "")).strip(), f"{where}: a query of {title!r} has no expr"


def test_dashboard_panels_sit_two_to_a_row_without_overlapping() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in panels(load_dashboard()):
        pos = panel["gridPos"]
        assert pos["w"] == 12 and pos["x"] in (0, 12), f"{panel['title']!r}: half the 24-column grid, gridPos {pos}"
        for row in range(pos["y"], pos["y"] + pos["h"]):
            assert (pos["x"], row) not in cells, f"{panel['title']!r} overlaps {cells[(pos['x'], row)]!r}"
            cells[(pos["x"], row)] = panel["title"]


# --- the metric names ----------------------------------------------------------------------


def test_dashboard_metric_names_are_the_families_it_charts() -> None:
    assert dashboard_metric_names() == EXPECTED_METRICS


def test_dashboard_charts_only_families_the_services_serve() -> None:
    """Offline, what the live test sees in a scrape: the `# TYPE` lines of a service's registry."""
    text = Metrics("test").text().decode()
    served = {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}
    unknown = sorted(dashboard_metric_names() - served)
    assert not unknown, f"{DASHBOARD.relative_to(ROOT)} charts {unknown}, not served by paymesh/chassis/metrics.py"


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('paymesh_breaker_state{paymesh_breaker_state="open"}', {"paymesh_breaker_state"}),
        ("sum by (paymesh_x) (rate(paymesh_y_total[5m] offset 1m))", {"paymesh_y_total"}),
        (
            'histogram_quantile(0.9, sum(rate(grpc_server_handling_seconds_bucket{grpc_method=~"paymesh_.*"}[1m])) '
            "by (le))",
            {"grpc_server_handling_seconds"},
        ),
        ("paymesh_a_total / on (job) group_left (paymesh_b) paymesh_c_count > 1e3", {"paymesh_a_total", "paymesh_c"}),
        ('{__name__="paymesh_outbox_unsent_rows", job="order_svc"}', {"paymesh_outbox_unsent_rows"}),
        ("rate(paymesh_s_sum[1m]) / rate(paymesh_s_count[1m])  # paymesh_commented", {"paymesh_s"}),
        ("sum(rate(process_cpu_seconds_total[1m])) + up", set()),
    ],
)
def test_metric_names_leave_out_functions_labels_strings_and_other_series(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names

