"""Ponte's alerts (PrometheusRule) and Grafana dashboard (ConfigMap), as rendered.

The rule groups are taken from the rendered PrometheusRule and given to ``promtool``:
``check rules`` (syntax, PromQL, templates) for every tree, and ``test rules`` with
``tests/deploy/alerts_test.yaml``, which feeds series and says when each alert fires and
when it stays quiet. promtool is Debian's ``prometheus`` package (see PROMTOOL_INSTALL);
without it these tests fail, they do not skip. Every metric the rules, the dashboard and
docs/alerts.md name must be one the modules of METRIC_MODULES define (or one of the few
external ones listed here), so renaming a metric in the code breaks this test.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from ponte.deliver.status_back import metrics as status_back_metrics
from ponte.shared import metrics
from ponte.shared.settings import Settings
from tests.deploy.test_manifests import OVERLAYS, REPO, of_kind, render

TREES = ["base", *(f"overlays/{name}" for name in OVERLAYS)]
UNIT_TESTS = Path(__file__).resolve().parent / "alerts_test.yaml"
ALERTS_DOC = REPO / "docs" / "alerts.md"
DASHBOARD_CONFIGMAP = "ponte-grafana-dashboard"

PROMTOOL_INSTALL = "apt-get install -y --no-install-recommends prometheus"

METRIC_MODULES = (metrics, status_back_metrics)
"""Where Ponte's metrics are defined: ``ponte.shared.metrics``, and the status-back
counter (``ponte.deliver.status_back.metrics``, beside the code that counts it)."""

EXTERNAL_METRICS = {
    # Strimzi's Kafka Exporter (spec.kafkaExporter of the Kafka resource): lag per partition.
    "kafka_consumergroup_lag": "Kafka Exporter",
    # Prometheus itself, for every target.
    "up": "Prometheus",
}
CLIENT_METRICS = {"process_start_time_seconds"}
"""From prometheus_client's default collectors: checked against what it really exports."""

DASHBOARD_MUST_SHOW = {
    "ponte_source_last_success_timestamp_seconds",
    "ponte_ingest_events_total",
    "ponte_transform_events_total",
    "ponte_transform_rejections_total",
    "ponte_deliver_records_total",
    "ponte_ingest_requests_total",
    "ponte_ingest_request_seconds_bucket",
    "ponte_transform_batch_seconds_bucket",
    "ponte_transform_outbox_published_total",
    "ponte_transform_parked_references",
    "kafka_consumergroup_lag",
    "ponte_status_back_events_total",
}

PROMQL_WORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "inf", "nan",
}  # fmt: skip


# --- helpers ------------------------------------------------------------------------------


def promtool() -> str:
    if path := shutil.which("promtool"):
        return path
    pytest.fail(
        "promtool is not on PATH, so the alert rules cannot be checked. It comes with "
        f"Debian's prometheus package: `{PROMTOOL_INSTALL}` (as root)."
    )


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), *args], capture_output=True, text=True, check=False, timeout=120
    )


def rule_groups(tree: str) -> list[dict[str, Any]]:
    """A copy of the rendered groups (``render`` is cached: callers may change theirs)."""
    (rule,) = of_kind(render(tree), "PrometheusRule")
    return copy.deepcopy(list(rule["spec"]["groups"]))


def alerts(tree: str = "base") -> list[dict[str, Any]]:
    return [rule for group in rule_groups(tree) for rule in group["rules"] if "alert" in rule]


def dashboard(tree: str = "base") -> dict[str, Any]:
    (configmap,) = [
        obj
        for obj in of_kind(render(tree), "ConfigMap")
        if obj["metadata"]["name"] == DASHBOARD_CONFIGMAP
    ]
    assert configmap["metadata"]["labels"].get("grafana_dashboard") == "1", tree
    (text,) = configmap["data"].values()
    return dict(json.loads(text))


def dashboard_exprs(board: dict[str, Any]) -> list[str]:
    return [
        target["expr"]
        for panel in board["panels"]
        for target in panel.get("targets", [])
        if target.get("expr")
    ]


def defined_metrics(families: bool = False) -> set[str]:
    """The sample names the METRIC_MODULES export (``_total``, ``_bucket``, …), and with
    ``families`` the histograms' own names too (prose speaks of those)."""
    suffixes = {
        "counter": ("_total",),
        "gauge": ("",),
        "histogram": ("_bucket", "_sum", "_count"),
        "summary": ("_sum", "_count", ""),
    }
    names = set()
    collectors = [value for module in METRIC_MODULES for value in vars(module).values()]
    for collector in collectors:
        if isinstance(collector, MetricWrapperBase):
            for family in collector.describe():
                names.update(family.name + suffix for suffix in suffixes[family.type])
                if families and family.type == "histogram":
                    names.add(family.name)
    assert names, "ponte.shared.metrics defines no metric"
    return names


def promql_metrics(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are neither functions,
    keywords, label names (in matchers and by/on clauses) nor durations."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][\w:]*", expr):
        word = match.group()
        if word.lower() in PROMQL_WORDS or expr[match.end() :].lstrip().startswith("("):
            continue
        names.add(word)
    return names


def named_in_text(text: str) -> set[str]:
    """Metric names mentioned in prose (annotations, docs): ponte_* and kafka_*."""
    return set(re.findall(r"\b(?:ponte|kafka)_[a-z0-9_]+\b", text))


# --- promtool -----------------------------------------------------------------------------


@pytest.mark.parametrize("tree", TREES)
def test_rules_pass_promtool_check(tree: str, tmp_path: Path) -> None:
    rules = tmp_path / "ponte.rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": rule_groups(tree)}, sort_keys=False))
    result = run_promtool("check", "rules", str(rules))
    assert result.returncode == 0, f"{tree}: promtool check rules:\n{result.stdout}{result.stderr}"


def test_alerts_fire_as_the_unit_tests_expect(tmp_path: Path) -> None:
    # promtool compares every annotation of a firing alert; the unit tests are about when
    # alerts fire and with which labels, so the annotations are left out here.
    groups = rule_groups("base")
    for group in groups:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "ponte.rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    shutil.copy(UNIT_TESTS, tmp_path / UNIT_TESTS.name)
    result = run_promtool("test", "rules", str(tmp_path / UNIT_TESTS.name))
    assert result.returncode == 0, f"promtool test rules:\n{result.stdout}{result.stderr}"


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    spec = yaml.safe_load(UNIT_TESTS.read_text())
    assert spec["rule_files"] == ["ponte.rules.yaml"]
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in spec["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in alerts()}
    assert fires == names, f"alerts never seen firing: {sorted(names - fires)}"
    assert quiet == names, f"alerts never checked quiet: {sorted(names - quiet)}"


# --- the rules ----------------------------------------------------------------------------


def test_alert_names_are_unique_and_have_what_a_person_needs() -> None:
    names = [rule["alert"] for rule in alerts()]
    assert names and len(names) == len(set(names)), names
    for rule in alerts():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        annotations = rule["annotations"]
        assert annotations["summary"].strip() and annotations["description"].strip()
        anchor = f"docs/alerts.md#{rule['alert'].lower()}"
        assert anchor in annotations["description"], f"{rule['alert']}: no link to {anchor}"


def test_the_same_rules_in_every_tree() -> None:
    for tree in TREES:
        assert rule_groups(tree) == rule_groups("base"), f"{tree} changes the rules"


def test_lag_alerts_watch_ponte_consumer_groups() -> None:
    settings = Settings(_env_file=None)
    expected = {settings.transform_group_id, settings.deliver_group_id}
    exprs = [rule["expr"] for rule in alerts()] + dashboard_exprs(dashboard())
    lag_exprs = [expr for expr in exprs if "kafka_consumergroup_lag" in expr]
    assert len(lag_exprs) >= 3, "two lag alerts and a dashboard panel"
    for expr in lag_exprs:
        groups = re.findall(r'consumergroup=~"([^"]*)"', expr)
        assert groups, f"lag of every consumer group in the cluster: {expr}"
        for pattern in groups:
            assert set(pattern.split("|")) == expected, f"{pattern} != {sorted(expected)}"


def test_every_metric_is_one_the_code_exports() -> None:
    ponte = defined_metrics()
    exported = prometheus_client.generate_latest().decode()
    for name in CLIENT_METRICS:
        assert re.search(rf"^{name}\b", exported, re.MULTILINE), f"{name} is not exported"
    known = ponte | set(EXTERNAL_METRICS) | CLIENT_METRICS
    board = dashboard()

    used: dict[str, set[str]] = {}
    for rule in alerts():
        used[f"alert {rule['alert']}"] = promql_metrics(rule["expr"])
        used[f"annotations of {rule['alert']}"] = named_in_text(json.dumps(rule["annotations"]))
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            used[f"panel {panel['title']!r} {target['refId']}"] = promql_metrics(target["expr"])
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            used[f"variable {variable['name']}"] = set(
                re.findall(r"label_values\(([A-Za-z_:][\w:]*)", variable["definition"])
            )
    used["docs/alerts.md"] = named_in_text(ALERTS_DOC.read_text(encoding="utf-8"))
    in_prose = known | defined_metrics(families=True)

    for where, names in used.items():
        assert names or where.startswith("annotations"), f"{where}: no metric found"
        unknown = names - (in_prose if where == "docs/alerts.md" else known)
        assert not unknown, f"{where} uses {sorted(unknown)}, which the code does not export"
    on_dashboard = set().union(*(promql_metrics(expr) for expr in dashboard_exprs(board)))
    missing = DASHBOARD_MUST_SHOW - on_dashboard
    assert not missing, f"the dashboard does not show {sorted(missing)}"


def test_promql_metric_extraction() -> None:
    """The extraction the metric check relies on, so a broken regex cannot pass silently."""
    expr = (
        'time() - max by (namespace, source) (max_over_time(ponte_a{x="b_c"}[7d])) > 86400 '
        "or sum by (le) (rate(ponte_b_bucket[$__rate_interval])) unless ponte_c offset 15m "
        "and on (instance) (up offset 1h or time() - process_start_time_seconds < 9e2)"
    )
    assert promql_metrics(expr) == {
        "ponte_a", "ponte_b_bucket", "ponte_c", "up", "process_start_time_seconds",
    }  # fmt: skip


# --- the dashboard ------------------------------------------------------------------------


@pytest.mark.parametrize("tree", TREES)
def test_dashboard_is_a_grafana_sidecar_configmap(tree: str) -> None:
    board = dashboard(tree)  # the label and valid JSON
    assert board["uid"] and board["title"]
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    variables = {variable["name"] for variable in board["templating"]["list"]}
    assert {"datasource", "namespace", "source"} <= variables
    for panel in board["panels"]:
        position = panel["gridPos"]
        assert 0 <= position["x"] and position["x"] + position["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            # A namespace per overlay: every Ponte query is scoped to the chosen one.
            if "ponte_" in target["expr"]:
                assert 'namespace=~"$namespace"' in target["expr"], panel["title"]


# --- the documentation --------------------------------------------------------------------


def test_every_alert_is_documented() -> None:
    text = ALERTS_DOC.read_text(encoding="utf-8")
    documented = set(re.findall(r"^## (Ponte\w+)\s*$", text, re.MULTILINE))
    names = {rule["alert"] for rule in alerts()}
    assert documented == names, (
        f"docs/alerts.md lacks {sorted(names - documented)}, "
        f"documents unknown {sorted(documented - names)}"
    )
