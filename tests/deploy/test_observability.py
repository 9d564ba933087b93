"""The dashboard and the alerts ask for metrics that exist: the Prometheus names of the kit's
OpenTelemetry instruments (as the collector's prometheus exporter names them), of
prometheus-nats-exporter and of kube-state-metrics; the collector config wires OTLP to them."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import TypedDict

import yaml

from .deploy_support import DEPLOY, REPO, Rendered

TELEMETRY = REPO / "libs" / "kit" / "src" / "kizuna" / "kit" / "telemetry.py"
SOURCES = [*REPO.glob("libs/kit/src/**/*.py"), *REPO.glob("services/*/src/**/*.py")]
# OTel unit -> the suffix the collector's prometheus exporter appends.
UNIT_SUFFIX = {"s": "_seconds", "ms": "_milliseconds", "By": "_bytes", "1": "_ratio", "": ""}

EXTERNAL = {
    # prometheus-nats-exporter -jsz=all / -varz
    "jetstream_consumer_num_pending",
    "jetstream_stream_total_messages",
    "gnatsd_varz_connections",
    "gnatsd_varz_jetstream_stats_storage",
    "gnatsd_varz_jetstream_config_max_storage",
    # kube-state-metrics
    "kube_pod_status_ready",
    # CloudNativePG's exporter, cert-manager
    "cnpg_collector_last_available_backup_timestamp",
    "cnpg_collector_last_failed_backup_timestamp",
    "cnpg_pg_stat_archiver_last_failed_time",
    "cnpg_pg_stat_archiver_last_archived_time",
    "certmanager_certificate_expiration_timestamp_seconds",
    "certmanager_certificate_ready_status",
}
# OpenTelemetry's FastAPI instrumentation, on the stable HTTP conventions the kit opts into
# (kizuna.kit.telemetry; tests/telemetry checks a real service exports it).
INSTRUMENTATION = {f"http_server_request_duration_seconds_{part}" for part in ("bucket", "sum", "count")}
PROMQL_WORDS = {
    "sum",
    "max",
    "min",
    "avg",
    "count",
    "rate",
    "increase",
    "delta",
    "changes",
    "histogram_quantile",
    "by",
    "without",
    "on",
    "ignoring",
    "and",
    "or",
    "unless",
    "label_values",
    "humanizePercentage",
    "humanizeDuration",
    "label_replace",
    "absent",
    "bool",
    "offset",
    "absent_over_time",
    "vector",
    "time",
}


def instrument_names(*sources: Path) -> set[str]:
    """Prometheus names of every instrument these files create (`meter.create_*("name", unit=...)`)."""
    names: set[str] = set()
    for node in (n for source in sources for n in ast.walk(ast.parse(source.read_text()))):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        kind = node.func.attr
        if not kind.startswith("create_") or not node.args or not isinstance(node.args[0], ast.Constant):
            continue
        unit = next(
            (
                k.value.value
                for k in node.keywords
                if k.arg == "unit" and isinstance(k.value, ast.Constant) and isinstance(k.value.value, str)
            ),
            "",
        )
        name = node.args[0].value
        assert isinstance(name, str), "an instrument's name is a string"
        base = re.sub(r"[^a-zA-Z0-9_]", "_", name) + UNIT_SUFFIX.get(unit, "")
        if kind == "create_counter":
            names.add(base + "_total")
        elif kind == "create_histogram":
            names |= {base + "_bucket", base + "_sum", base + "_count"}
        else:
            names.add(base)
    return names


def metrics_in(expr: str) -> set[str]:
    expr = re.sub(r'"[^"]*"', "", expr)  # strings (label values)
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)  # grouping labels
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\$\w+", "", expr)  # Grafana variables
    tokens = set(re.findall(r"(?<![\w.])([a-zA-Z_:][a-zA-Z0-9_:]*)", expr))
    return {t for t in tokens if t not in PROMQL_WORDS and not re.fullmatch(r"\d+\w*|e", t)}


def dashboard_exprs() -> list[str]:
    dashboard = json.loads((DEPLOY / "observability" / "dashboards" / "kizuna.json").read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


class AlertRule(TypedDict):
    alert: str
    expr: str
    labels: dict[str, str]
    annotations: dict[str, str]


def alert_rules() -> list[AlertRule]:
    rule = yaml.safe_load((DEPLOY / "observability" / "prometheus-operator" / "alerts.yaml").read_text())
    return [r for group in rule["spec"]["groups"] for r in group["rules"]]


def test_kit_instruments_have_the_expected_prometheus_names() -> None:
    names = instrument_names(TELEMETRY)
    assert "kizuna_events_dead_lettered_total" in names
    assert "rpc_server_duration_milliseconds_bucket" in names
    assert '_STABLE_CONVENTIONS = ("http", "database")' in TELEMETRY.read_text()


def test_metric_names_exist() -> None:
    known = instrument_names(*SOURCES) | INSTRUMENTATION | EXTERNAL
    used = {m for e in dashboard_exprs() + [r["expr"] for r in alert_rules()] for m in metrics_in(e)}
    assert used, "no metric names found (the parser is broken)"
    unknown = used - known
    assert not unknown, f"dashboard/alerts use metrics nobody emits: {sorted(unknown)}"


def test_dashboard_has_the_panels_an_sre_needs() -> None:
    dashboard = json.loads((DEPLOY / "observability" / "dashboards" / "kizuna.json").read_text())
    titles = " | ".join(p["title"].lower() for p in dashboard["panels"])
    for needed in ("credited", "spent", "consumer lag", "dead letters", "grpc", "http error", "sign-ins"):
        assert needed in titles, needed
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_alerts_cover_lag_dead_letters_errors_and_flapping() -> None:
    rules = {r["alert"]: r for r in alert_rules()}
    for name in (
        "KizunaConsumerLagHigh",
        "KizunaDeadLetters",
        "KizunaHTTPErrorRateHigh",
        "KizunaReadinessFlapping",
        "KizunaErrorBudgetBurnFast",
        "KizunaErrorBudgetBurnSlow",
        "KizunaGRPCErrorBudgetBurnFast",
        "KizunaNoMetrics",
        "KizunaTrafficDrop",
        "KizunaBackupMissing",
        "KizunaCertificateExpiring",
        "KizunaJetStreamStorageFilling",
    ):
        assert name in rules, name
    # With every NATS server down there is no series; the rule must still fire.
    assert "or vector(0)" in rules["KizunaNATSServerDown"]["expr"]
    for rule in rules.values():
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]


def test_alerts_cover_the_outbox_dead_letters_storage_backups_and_certificates() -> None:
    rules = {r["alert"]: r for r in alert_rules()}
    needs = {
        "KizunaOutboxBacklog": "kizuna_outbox_oldest_pending_age_seconds",
        "KizunaOutboxBacklogCritical": "kizuna_outbox_pending",
        "KizunaDeadLetterStreamGrowing": 'jetstream_stream_total_messages{stream_name="DEADLETTER"}',
        "KizunaDeadLettersWaiting": 'jetstream_stream_total_messages{stream_name="DEADLETTER"}',
        "KizunaDeadLetterStreamNearLimit": 'jetstream_stream_total_messages{stream_name="DEADLETTER"}',
        "KizunaJetStreamStorageFilling": "gnatsd_varz_jetstream_stats_storage",
        "KizunaJetStreamStorageFull": "gnatsd_varz_jetstream_stats_storage",
        "KizunaNATSMetricsMissing": "absent(",
        "KizunaBackupMissing": "cnpg_collector_last_available_backup_timestamp",
        "KizunaBackupFailed": "cnpg_collector_last_failed_backup_timestamp",
        "KizunaWALArchivingFailing": "cnpg_pg_stat_archiver_last_failed_time",
        "KizunaCertificateExpiring": "certmanager_certificate_expiration_timestamp_seconds",
        "KizunaCertificateExpiringSoon": "certmanager_certificate_expiration_timestamp_seconds",
    }
    for name, metric in needs.items():
        assert name in rules, name
        assert metric in rules[name]["expr"], name
    # CloudNativePG's backup timestamps carry no cluster label: each rule derives it from the pod,
    # so one failing cluster is not hidden behind another's newer backup.
    for name in ("KizunaBackupMissing", "KizunaBackupFailed"):
        expr = rules[name]["expr"]
        assert expr.count("cnpg_collector_") == expr.count("label_replace(cnpg_collector_"), name


def test_dead_letter_threshold_follows_the_rendered_limit(rendered: dict[str, Rendered]) -> None:
    (common,) = [c for c in rendered["prod"].of_kind("ConfigMap") if c["metadata"]["name"].startswith("kizuna-common")]
    limit = int(common["data"]["DEAD_LETTER_MAX_MSGS"])
    rule = next(r for r in alert_rules() if r["alert"] == "KizunaDeadLetterStreamNearLimit")
    assert rule["expr"].endswith(f"> {int(limit * 0.8)}"), "80 % of DEAD_LETTER_MAX_MSGS"


DURATION = re.compile(r"^(\d+[smhdwy])+$")
AGGREGATIONS = r"\b(?:sum|max|min|avg|count)\s+by\s*\(([^)]*)\)"


def test_alert_rules_are_well_formed() -> None:
    """What promtool would refuse or an on-call engineer could not use: duplicate names, bad
    durations, unbalanced brackets, empty label matchers, templates naming labels the expression
    aggregates away, alerts without a way in (description or runbook)."""
    rule = yaml.safe_load((DEPLOY / "observability" / "prometheus-operator" / "alerts.yaml").read_text())
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["kind"] == "PrometheusRule"
    groups = rule["spec"]["groups"]
    assert len({g["name"] for g in groups}) == len(groups), "group names are unique"
    names = [r["alert"] for g in groups for r in g["rules"]]
    assert len(set(names)) == len(names), "alert names are unique"
    for group in groups:
        for r in group["rules"]:
            assert set(r) <= {"alert", "expr", "for", "labels", "annotations"}, r["alert"]
            assert re.fullmatch(r"Kizuna[A-Z]\w+", r["alert"]), r["alert"]
            expr = re.sub(r'"[^"]*"', '""', r["expr"])
            for opening, closing in ("()", "[]", "{}"):
                assert expr.count(opening) == expr.count(closing), f"{r['alert']}: {opening}{closing}"
            assert "{}" not in expr, f"{r['alert']}: an empty label matcher"
            assert not re.search(r"[<>]=?\s*$", expr.strip()), f"{r['alert']}: a comparison without its right side"
            if "for" in r:
                assert DURATION.match(str(r["for"])), f"{r['alert']}: for {r['for']!r}"
            grouped = re.findall(AGGREGATIONS, r["expr"])
            text = " ".join(str(v) for v in r["annotations"].values())
            for label in re.findall(r"\$labels\.(\w+)", text):
                for by in grouped:
                    kept = {part.strip() for part in by.split(",")}
                    assert label in kept, (
                        f"{r['alert']}: {{{{ $labels.{label} }}}} but the expression keeps only {kept}"
                    )
            assert r["annotations"].get("summary"), r["alert"]
            if r["labels"]["severity"] == "critical":
                assert r["annotations"].get("description"), f"{r['alert']}: a page must say where to look"


def test_collector_config_wires_otlp_to_prometheus() -> None:
    config = yaml.safe_load((DEPLOY / "observability" / "otel-collector.yaml").read_text())
    assert set(config["receivers"]["otlp"]["protocols"]) == {"grpc", "http"}
    pipelines = config["service"]["pipelines"]
    assert pipelines["metrics"]["receivers"] == ["otlp"] and "prometheus" in pipelines["metrics"]["exporters"]
    assert pipelines["traces"]["receivers"] == ["otlp"]
    for pipeline in pipelines.values():
        assert "batch" in pipeline["processors"]
        for part in ("receivers", "processors", "exporters"):
            assert set(pipeline[part]) <= set(config[part]), f"{part} not declared"
    assert config["exporters"]["prometheus"]["endpoint"].endswith(":8889")
    # Traces reach the trace backend (observability/tempo), not only the collector's log.
    (exporter,) = pipelines["traces"]["exporters"]
    host = config["exporters"][exporter]["endpoint"].split(":")[0]
    tempo = yaml.safe_load_all((DEPLOY / "observability" / "tempo" / "tempo.yaml").read_text())
    services = {d["metadata"]["name"]: d for d in tempo if d and d["kind"] == "Service"}
    port = int(config["exporters"][exporter]["endpoint"].split(":")[1])
    assert port in {p["port"] for p in services[host]["spec"]["ports"]}
