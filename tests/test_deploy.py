"""Checks of the deployment files under ``deploy/``.

They run without a container engine or a cluster: every file must parse, the
alert rules must pass promtool's checks and unit tests, every metric that a rule
or a dashboard panel queries must be one that lstmad exports, and the port
(9731), the health paths (/healthz, /readyz) and the command line must agree
between the Dockerfile, the compose stack, the scrape config, the systemd unit
and the Kubernetes manifest. Tools that are not installed (promtool, vmalert,
victoria-metrics, docker compose, systemd-analyze) skip their test with the
reason.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
RULES = DEPLOY / "alerts" / "lstmad-rules.yml"
RULE_TESTS = sorted((DEPLOY / "alerts").glob("*.test.yml"))
DASHBOARD = DEPLOY / "grafana" / "lstmad-dashboard.json"
COMPOSE = DEPLOY / "docker-compose.yml"
SCRAPE = DEPLOY / "victoriametrics" / "scrape.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
EXAMPLE_CONFIG = DEPLOY / "lstmad.yml"
UNIT = DEPLOY / "systemd" / "lstmad.service"
K8S = DEPLOY / "kubernetes" / "lstmad.yaml"
PRESET = ROOT / "src" / "lstmad" / "presets" / "node_exporter.yaml"

PORT = 9731
HEALTH_PATH = "/healthz"
READY_PATH = "/readyz"
SERVE_ARGS = [
    "serve", "--config", "/etc/lstmad/config.yml",
    "--model", "/var/lib/lstmad/model", "--listen", f"0.0.0.0:{PORT}",
]
TOOL_TIMEOUT = 120

# The metrics lstmad exports, as listed in the README's metrics section.
EXPORTED_METRICS = frozenset({
    "lstmad_anomaly_score",
    "lstmad_anomaly",
    "lstmad_error",
    "lstmad_threshold",
    "lstmad_feature_error",
    "lstmad_anomalies_total",
    "lstmad_last_scored_timestamp_seconds",
    "lstmad_cycle_duration_seconds",
    "lstmad_source_errors_total",
    "lstmad_source_up",
    "lstmad_entities",
    "lstmad_stale_entities",
    "lstmad_model_info",
    "lstmad_model_trained_timestamp_seconds",
    "lstmad_retrains_total",
    "lstmad_cycles_total",
    "lstmad_last_cycle_success_timestamp_seconds",
})
HISTOGRAMS = frozenset({"lstmad_cycle_duration_seconds"})
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# A histogram is only queried through its series; `up` only for the lstmad job.
QUERYABLE = (
    (EXPORTED_METRICS - HISTOGRAMS)
    | {h + s for h in HISTOGRAMS for s in HISTOGRAM_SUFFIXES}
    | {"up"}
)


def run_tool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=TOOL_TIMEOUT, check=False
    )


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed")
    return path


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


# ---------------------------------------------------------------- PromQL names

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.IGNORECASE
)
_TOKEN = re.compile(r"(?P<num>\d[\w.]*)|(?P<name>[A-Za-z_:][\w:]*)(?P<call>\s*\()?")
_KEYWORDS = frozenset({
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
    "group_left", "group_right", "inf", "nan", "atan2",
})


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects (functions, labels, keywords removed).

    >>> sorted(metric_names('sum by (le) (rate(x_bucket{job="a"}[5m])) > 1e3 and up'))
    ['up', 'x_bucket']
    """
    text = re.sub(r"\$\{[^}]*\}|\$\w+", "", expr)
    text = _STRING.sub('""', text)
    text = re.sub(r"\{[^{}]*\}", " ", text)
    text = re.sub(r"\[[^\[\]]*\]", " ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for m in _TOKEN.finditer(text):
        name = m.group("name")
        if name and not m.group("call") and name.lower() not in _KEYWORDS:
            names.add(name)
    return names


def up_selectors(expr: str) -> list[str]:
    """The label matchers of every ``up`` selector (empty string for a bare ``up``)."""
    found = []
    for m in re.finditer(r"(?<![\w:])up(?![\w:])\s*(\{[^}]*\})?", expr):
        found.append(m.group(1) or "")
    return found


def check_queries(exprs: list[str], where: str) -> None:
    assert exprs, f"no queries found in {where}"
    for expr in exprs:
        names = metric_names(expr)
        assert names, f"{where}: no metric name found in {expr!r}"
        unknown = sorted(names - QUERYABLE)
        assert not unknown, f"{where}: {unknown} in {expr!r} are not exported by lstmad"
        for matchers in up_selectors(expr):
            assert re.search(r'job\s*=\s*"lstmad"', matchers), (
                f'{where}: expected up{{job="lstmad"}}, found up{matchers} in {expr!r}'
            )


def test_metric_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.9, sum by (le, stage) (rate(lstmad_cycle_duration_seconds_bucket'
        '{instance=~"$instance", stage!="x"}[$__rate_interval]))) > 14 * 86400 and on (instance) '
        'up{job="lstmad"} or absent(lstmad_source_up offset 5m) unless lstmad_entities == bool 0'
    )
    assert metric_names(expr) == {
        "lstmad_cycle_duration_seconds_bucket", "up", "lstmad_source_up", "lstmad_entities",
    }
    assert up_selectors(expr) == ['{job="lstmad"}']
    assert up_selectors("sum(up) + lstmad_up_time") == [""]


# ---------------------------------------------------------------- every file parses

YAML_FILES = sorted([*DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.yaml")])
JSON_FILES = sorted(DEPLOY.rglob("*.json"))


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs, f"{path} holds no YAML document"


@pytest.mark.parametrize("path", JSON_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_json_parses(path: Path) -> None:
    assert json.loads(path.read_text())


def test_expected_files_exist() -> None:
    for path in (RULES, DASHBOARD, COMPOSE, SCRAPE, DOCKERFILE, EXAMPLE_CONFIG, UNIT, K8S):
        assert path.is_file(), f"missing {path.relative_to(ROOT)}"
    assert RULE_TESTS, "no promtool test files deploy/alerts/*.test.yml"


# ---------------------------------------------------------------- alert rules


def alert_rules() -> list[dict[str, Any]]:
    return [r for g in load_yaml(RULES)["groups"] for r in g["rules"] if "alert" in r]


def template_queries(text: str) -> list[str]:
    """PromQL run by ``query (printf "...")`` in an annotation template, with %q filled in."""
    out = []
    for m in re.finditer(r'query\s*\(?\s*printf\s+"((?:[^"\\]|\\.)*)"', text):
        out.append(json.loads(f'"{m.group(1)}"').replace("%q", '"host:9100"'))
    return out


def test_promtool_check_rules() -> None:
    promtool = need("promtool")
    result = run_tool(promtool, "check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_rule_unit_tests() -> None:
    promtool = need("promtool")
    result = run_tool(promtool, "test", "rules", *RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_vmalert_accepts_rules() -> None:
    vmalert = need("vmalert")
    result = run_tool(vmalert, f"-rule={RULES}", "-dryRun", "-loggerLevel=ERROR")
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_firing_and_quiet_cases() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        spec = load_yaml(path)
        assert [Path(f).name for f in spec["rule_files"]] == [RULES.name], path
        for case in spec["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {r["alert"] for r in alert_rules()}
    assert names - firing == set(), f"alerts never tested firing: {sorted(names - firing)}"
    assert names - quiet == set(), f"alerts never tested quiet: {sorted(names - quiet)}"
    assert (firing | quiet) - names == set(), "tests name alerts that do not exist"


def test_alerts_wait_and_explain() -> None:
    names = [r["alert"] for r in alert_rules()]
    assert len(names) == len(set(names)), f"duplicate alert names: {names}"
    assert {"LstmadEntityAnomalous", "LstmadDetectorDown", "LstmadStaleData",
            "LstmadModelTooOld", "LstmadSourceErrors"} <= set(names)
    for rule in alert_rules():
        name = rule["alert"]
        assert re.fullmatch(r"\d+[mh]", rule.get("for", "")), f"{name}: needs a for: of minutes"
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}, name
        assert {"summary", "description"} <= set(rule["annotations"]), name


def test_anomaly_alert_points_at_feature_errors() -> None:
    rule = next(r for r in alert_rules() if r["alert"] == "LstmadEntityAnomalous")
    assert "lstmad_anomaly_score" in rule["expr"]
    assert "$labels.instance" in rule["annotations"]["summary"]
    assert "$value" in rule["annotations"]["summary"]
    queries = template_queries(rule["annotations"]["description"])
    assert any("lstmad_feature_error" in q for q in queries), queries


def test_rules_query_only_exported_metrics() -> None:
    exprs = []
    for rule in alert_rules():
        exprs.append(rule["expr"])
        for text in rule["annotations"].values():
            exprs.extend(template_queries(text))
    check_queries(exprs, RULES.name)


# ---------------------------------------------------------------- dashboard


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def dashboard_queries(dash: dict[str, Any]) -> list[str]:
    exprs = [t["expr"] for p in all_panels(dash["panels"]) for t in p.get("targets", [])]
    exprs += [a["expr"] for a in dash["annotations"]["list"] if "expr" in a]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
            exprs.append(m.group(1) if m else query)
    return exprs


def test_dashboard_queries_only_exported_metrics() -> None:
    check_queries(dashboard_queries(dashboard()), DASHBOARD.name)


def test_dashboard_variables() -> None:
    dash = dashboard()
    assert dash["schemaVersion"] >= 39
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    instance = variables["instance"]
    query = instance["query"]["query"] if isinstance(instance["query"], dict) else instance["query"]
    assert query == "label_values(lstmad_anomaly_score, instance)"
    assert instance["datasource"]["uid"] == "${datasource}"


def test_dashboard_panels_use_the_datasource_variable() -> None:
    panels = list(all_panels(dashboard()["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {ids}"
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for t in panel["targets"]:
            assert t["datasource"]["uid"] == "${datasource}", panel["title"]


def test_score_panel_draws_threshold_at_one() -> None:
    panel = next(
        p for p in all_panels(dashboard()["panels"])
        if p["type"] == "timeseries"
        and any(t["expr"].startswith("lstmad_anomaly_score") for t in p["targets"])
    )
    defaults = panel["fieldConfig"]["defaults"]
    assert 1 in [s["value"] for s in defaults["thresholds"]["steps"]]
    assert defaults["custom"]["thresholdsStyle"]["mode"] != "off"


def test_dashboard_covers_anomalies_and_detector_health() -> None:
    exprs = "\n".join(dashboard_queries(dashboard()))
    for needle in (
        "lstmad_anomaly_score", "lstmad_anomaly{", "lstmad_feature_error",
        "histogram_quantile(0.5,", "histogram_quantile(0.99,", "lstmad_cycle_duration_seconds_bucket",
        "lstmad_source_up", "rate(lstmad_source_errors_total", "lstmad_entities",
        "lstmad_stale_entities", "lstmad_model_trained_timestamp_seconds",
    ):
        assert needle in exprs, f"no dashboard query uses {needle}"


# ---------------------------------------------------------------- Dockerfile


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined."""
    logical, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        current += stripped
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        logical.append(current)
        current = ""
    out = []
    for line in logical:
        instruction, _, args = line.partition(" ")
        out.append((instruction.upper(), args.strip()))
    return out


def docker_instructions(name: str) -> list[str]:
    return [args for instruction, args in dockerfile() if instruction == name]


def image_uid() -> int:
    users = docker_instructions("USER")
    assert users, "the Dockerfile sets no USER"
    user = users[-1].split(":")[0]
    if user.isdigit():
        return int(user)
    created = re.search(rf"useradd\b[^&;]*--uid\s+(\d+)[^&;]*\b{user}\b", "\n".join(
        docker_instructions("RUN")))
    assert created, f"USER {user} is not created with a fixed --uid"
    return int(created.group(1))


def test_dockerfile_base_and_torch_pin() -> None:
    assert docker_instructions("FROM")[-1] == "python:3.11-slim"
    runs = "\n".join(docker_instructions("RUN"))
    assert re.search(
        r"pip install\s+--index-url\s+https://download\.pytorch\.org/whl/cpu\s+torch==2\.13\.0\b",
        runs,
    ), "torch==2.13.0 must come from the CPU index"


def test_dockerfile_runs_as_non_root() -> None:
    assert image_uid() != 0
    assert docker_instructions("USER")[-1].split(":")[0] not in {"root", "0"}


def test_dockerfile_port_entrypoint_and_healthcheck() -> None:
    assert docker_instructions("EXPOSE") == [str(PORT)]
    assert json.loads(docker_instructions("ENTRYPOINT")[-1]) == ["lstmad"]
    assert json.loads(docker_instructions("CMD")[-1]) == SERVE_ARGS
    health = docker_instructions("HEALTHCHECK")[-1]
    assert f"127.0.0.1:{PORT}{HEALTH_PATH}" in health


def test_dockerfile_copies_files_that_exist() -> None:
    for args in docker_instructions("COPY"):
        *sources, _dest = shlex.split(args)
        for source in sources:
            if not source.startswith("--"):
                assert (ROOT / source).exists(), f"COPY {source}: not in the build context"


# ---------------------------------------------------------------- compose


def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(COMPOSE)
    return data


def container_ports(service: dict[str, Any]) -> list[int]:
    ports = []
    for spec in service.get("ports", []):
        target = spec["target"] if isinstance(spec, dict) else str(spec).split(":")[-1]
        ports.append(int(str(target).split("/")[0]))
    return ports


def flags(command: list[str]) -> dict[str, str]:
    return dict(arg.lstrip("-").split("=", 1) for arg in command if "=" in arg)


def test_compose_services() -> None:
    services = compose()["services"]
    assert {"victoriametrics", "node-exporter", "lstmad", "vmalert"} <= set(services)
    for name, service in services.items():
        if "image" in service and "build" not in service:
            image = service["image"]
            assert ":" in image and not image.endswith(":latest"), f"{name}: pin a tag in {image}"
    assert services["victoriametrics"]["image"].startswith("victoriametrics/victoria-metrics:")
    assert services["node-exporter"]["image"].startswith("prom/node-exporter:")
    assert services["vmalert"]["image"].startswith("victoriametrics/vmalert:")


def test_compose_builds_lstmad_from_the_dockerfile() -> None:
    lstmad = compose()["services"]["lstmad"]
    context = (DEPLOY / lstmad["build"]["context"]).resolve()
    assert context == ROOT
    assert (context / lstmad["build"]["dockerfile"]).resolve() == DOCKERFILE.resolve()
    assert container_ports(lstmad) == [PORT]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in lstmad["volumes"]}
    assert (DEPLOY / mounts["/etc/lstmad/config.yml"]).resolve() == EXAMPLE_CONFIG.resolve()


def test_compose_mounts_files_that_exist() -> None:
    found = 0
    for name, service in compose()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                found += 1
                assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"
    assert found >= 3


def test_compose_wires_victoriametrics_and_vmalert() -> None:
    services = compose()["services"]
    vm = flags(services["victoriametrics"]["command"])
    mounted = {v.split(":")[1]: v.split(":")[0] for v in services["victoriametrics"]["volumes"]}
    assert (DEPLOY / mounted[vm["promscrape.config"]]).resolve() == SCRAPE.resolve()

    vmalert = services["vmalert"]
    args = flags(vmalert["command"])
    mounted = {v.split(":")[1]: v.split(":")[0] for v in vmalert["volumes"]}
    assert (DEPLOY / mounted[args["rule"]]).resolve() == RULES.resolve()
    assert args["datasource.url"] == "http://victoriametrics:8428"
    notifier = args.get("notifier.url", "")
    assert "-notifier.blackhole" in vmalert["command"] or (
        notifier.startswith("http://alertmanager:") and "alertmanager" in services
    )


def test_docker_compose_config_validates() -> None:
    docker = need("docker")
    if run_tool(docker, "compose", "version").returncode != 0:
        pytest.skip("the docker compose plugin is not installed")
    result = run_tool(docker, "compose", "-f", COMPOSE, "config", "-q")
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------- scrape config


def scrape_jobs() -> dict[str, dict[str, Any]]:
    return {job["job_name"]: job for job in load_yaml(SCRAPE)["scrape_configs"]}


def test_scrape_config_targets_the_compose_services() -> None:
    jobs = scrape_jobs()
    services = compose()["services"]
    assert {"node", "lstmad"} <= set(jobs)
    for job in jobs.values():
        for target in (t for sc in job["static_configs"] for t in sc["targets"]):
            assert target.split(":")[0] in services, f"{job['job_name']}: unknown host {target}"
    assert jobs["lstmad"]["static_configs"][0]["targets"] == [f"lstmad:{PORT}"]
    assert jobs["lstmad"].get("metrics_path", "/metrics") == "/metrics"


def test_lstmad_job_keeps_the_entity_label() -> None:
    assert scrape_jobs()["lstmad"].get("honor_labels") is True


def test_promtool_check_scrape_config() -> None:
    promtool = need("promtool")
    result = run_tool(promtool, "check", "config", SCRAPE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_victoriametrics_accepts_scrape_config() -> None:
    vm = need("victoria-metrics")
    result = run_tool(
        vm, f"-promscrape.config={SCRAPE}", "-promscrape.config.dryRun", "-loggerLevel=ERROR"
    )
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------- example config


def k8s_docs() -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(K8S.read_text()) if d]


def k8s(kind: str) -> list[dict[str, Any]]:
    return [d for d in k8s_docs() if d["kind"] == kind]


def configmap_config() -> tuple[str, dict[str, Any]]:
    (cm,) = k8s("ConfigMap")
    (text,) = cm["data"].values()
    return cm["metadata"]["name"], yaml.safe_load(text)


def test_example_config_matches_the_preset() -> None:
    config = load_yaml(EXAMPLE_CONFIG)
    assert config["victoriametrics"] == {"url": "http://victoriametrics:8428"}
    assert config["entity_label"] == "instance"
    assert config["interval"] == "15s"
    assert [f["name"] for f in config["features"]] == [
        "cpu_busy", "cpu_iowait", "memory_used", "load1_per_core",
        "disk_io_busy", "net_receive", "net_transmit", "fs_used",
    ]
    if PRESET.is_file():
        assert config["features"] == load_yaml(PRESET)["features"]


def test_configmap_holds_the_example_features() -> None:
    _, config = configmap_config()
    example = load_yaml(EXAMPLE_CONFIG)
    for key in ("entity_label", "interval", "features"):
        assert config[key] == example[key], key


# ---------------------------------------------------------------- systemd


def unit_entries() -> list[tuple[str, str, str]]:
    entries, section = [], ""
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        entries.append((section, key.strip(), value.strip()))
    return entries


def test_systemd_unit_is_hardened() -> None:
    service = {k: v for s, k, v in unit_entries() if s == "Service"}
    assert service["ExecStart"] == (
        "/usr/local/bin/lstmad serve --config /etc/lstmad/config.yml "
        "--model /var/lib/lstmad/model"
    )
    assert service.get("DynamicUser") == "yes" or service.get("User") == "lstmad"
    assert service["ProtectSystem"] == "strict"
    assert service["StateDirectory"] == "lstmad"
    assert service["Restart"] == "on-failure"
    assert service["NoNewPrivileges"] == "yes"
    assert service["CapabilityBoundingSet"] == ""


def verifiable_unit(tmp_path: Path) -> Path:
    """A copy whose ExecStart binary exists here, since verify checks that it does."""
    copy = tmp_path / UNIT.name
    copy.write_text(UNIT.read_text().replace("/usr/local/bin/lstmad ", "/bin/true ", 1))
    return copy


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = need("systemd-analyze")
    copy = verifiable_unit(tmp_path)
    result = run_tool(tool, "verify", copy)
    complaints = [line for line in result.stderr.splitlines() if copy.name in line]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr


def test_systemd_exposure_stays_low(tmp_path: Path) -> None:
    """systemd rates exposure 0 (locked down) to 10; the threshold is in tenths."""
    tool = need("systemd-analyze")
    copy = verifiable_unit(tmp_path)
    result = run_tool(tool, "security", "--offline=yes", "--threshold=20", copy)
    if "--offline" in result.stderr or "unrecognized option" in result.stderr:
        pytest.skip("this systemd-analyze cannot assess a unit file offline")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr


# ---------------------------------------------------------------- Kubernetes


def statefulset() -> dict[str, Any]:
    (sts,) = k8s("StatefulSet")
    return sts


def lstmad_container() -> dict[str, Any]:
    containers = statefulset()["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "lstmad")


def container_port(port: int | str) -> int:
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in lstmad_container()["ports"]}
    return int(named[port])


def env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def test_k8s_shards_from_the_pod_index() -> None:
    sts = statefulset()
    variables = env(lstmad_container())
    index = variables["LSTMAD_SERVE__SHARD_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert index == "metadata.labels['apps.kubernetes.io/pod-index']"
    assert int(variables["LSTMAD_SERVE__SHARD_COUNT"]["value"]) == sts["spec"]["replicas"]
    assert sts["spec"]["replicas"] > 1


def test_k8s_shard_environment_reaches_the_config(tmp_path: Path) -> None:
    config_mod = pytest.importorskip("lstmad.config")
    _, config = configmap_config()
    path = tmp_path / "config.yml"
    path.write_text(yaml.safe_dump(config))
    environment = {"LSTMAD_SERVE__SHARD_INDEX": "1"}
    for name, spec in env(lstmad_container()).items():
        if "value" in spec:
            environment[name] = spec["value"]
    cfg = config_mod.load_config(path, env=environment)
    assert (cfg.serve.shard_index, cfg.serve.shard_count) == (1, statefulset()["spec"]["replicas"])


def test_k8s_services() -> None:
    services = {s["metadata"]["name"]: s for s in k8s("Service")}
    headless = services[statefulset()["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"
    others = [s for s in services.values() if s is not headless]
    assert others and all(s["spec"].get("clusterIP") != "None" for s in others)
    labels = statefulset()["spec"]["template"]["metadata"]["labels"]
    for service in services.values():
        assert service["spec"]["selector"].items() <= labels.items()
        for port in service["spec"]["ports"]:
            assert port["port"] == PORT
            assert container_port(port["targetPort"]) == PORT


def test_k8s_container_port_probes_and_command() -> None:
    container = lstmad_container()
    assert [p["containerPort"] for p in container["ports"]] == [PORT]
    assert container["args"] == SERVE_ARGS
    probes = {
        "livenessProbe": HEALTH_PATH, "readinessProbe": READY_PATH, "startupProbe": HEALTH_PATH,
    }
    for probe, path in probes.items():
        if probe == "startupProbe" and probe not in container:
            continue
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert container_port(get["port"]) == PORT, probe


def test_k8s_security_and_resources() -> None:
    pod = statefulset()["spec"]["template"]["spec"]
    container = lstmad_container()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == image_uid()
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]


def test_k8s_mounts_config_and_model() -> None:
    sts = statefulset()
    container = lstmad_container()
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"]["volumes"]}
    name, _ = configmap_config()
    config_volume = volumes[mounts["/etc/lstmad"]]
    assert config_volume["configMap"]["name"] == name
    (cm,) = k8s("ConfigMap")
    assert "config.yml" in cm["data"]
    claims = {c["metadata"]["name"] for c in sts["spec"].get("volumeClaimTemplates", [])}
    assert mounts["/var/lib/lstmad"] in claims | set(volumes)
