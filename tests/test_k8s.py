"""The Kubernetes deployment of k8s/, validated offline: every YAML parses; the kustomization's
references resolve and it renders (a renderer of the kustomize fields the base uses, which
refuses any other field); the built-in kinds, and the pod templates inside the RayJob and
RayCluster, validate against the Kubernetes OpenAPI schemas (kubernetes-validate, strict);
the RayJob and RayCluster follow KubeRay's ray.io/v1 API; every pod is locked down; no Secret
values are in the repository; and checkov finds nothing over k8s/ and the Dockerfile."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import mlflow
import pytest
import ray
import yaml

from dist_contrast.config import load_config

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
# The kustomize fields the renderer implements; a kustomization using any other fails the test.
KUSTOMIZE_FIELDS = {"apiVersion", "kind", "namespace", "labels", "resources",
                    "configMapGenerator", "generatorOptions"}
CLUSTER_SCOPED = {"Namespace", "PersistentVolume", "StorageClass", "ClusterRole",
                  "ClusterRoleBinding", "CustomResourceDefinition"}
# KubeRay ray.io/v1 API reference: the fields of RayJobSpec, RayClusterSpec and the groups.
RAYJOB_SPEC = {"activeDeadlineSeconds", "backoffLimit", "rayClusterSpec", "submitterPodTemplate",
               "metadata", "clusterSelector", "submitterConfig", "managedBy",
               "deletionStrategy", "entrypoint", "runtimeEnvYAML", "jobId", "submissionMode",
               "entrypointResources", "entrypointNumCpus", "entrypointNumGpus",
               "ttlSecondsAfterFinished", "preRunningDeadlineSeconds",
               "shutdownAfterJobFinishes", "suspend"}
RAYCLUSTER_SPEC = {"upgradeStrategy", "authOptions", "suspend", "managedBy", "autoscalerOptions",
                   "headServiceAnnotations", "enableInTreeAutoscaling",
                   "gcsFaultToleranceOptions", "headGroupSpec", "rayVersion", "workerGroupSpecs"}
HEAD_GROUP = {"template", "headService", "enableIngress", "resources", "labels",
              "rayStartParams", "serviceType"}
WORKER_GROUP = {"suspend", "groupName", "replicas", "minReplicas", "maxReplicas",
                "idleTimeoutSeconds", "resources", "labels", "rayStartParams", "template",
                "scaleStrategy", "numOfHosts"}
HEAD_PORTS = {6379: "gcs-server", 8265: "dashboard", 10001: "client"}


# ----------------------------------------------------------------------------- rendering


def _kustomization(folder: Path) -> Path:
    for name in KUSTOMIZATION_NAMES:
        if (folder / name).is_file():
            return folder / name
    raise AssertionError(f"{folder} has no kustomization file")


def _inside(root: Path, path: Path) -> Path:
    resolved = path.resolve()
    assert resolved.is_relative_to(root.resolve()), f"{path} is outside {root} (kustomize's " \
        "load restrictor refuses it)"
    assert resolved.is_file(), f"{path} does not exist"
    return resolved


def render(folder: Path) -> list[dict[str, Any]]:
    """What `kubectl apply -k folder` applies, for the fields in KUSTOMIZE_FIELDS."""
    spec = yaml.safe_load(_kustomization(folder).read_text())
    unknown = set(spec) - KUSTOMIZE_FIELDS
    assert not unknown, f"{folder}: kustomize fields the offline renderer does not know: {unknown}"
    assert spec["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert spec["kind"] == "Kustomization"
    resources: list[dict[str, Any]] = []
    for entry in spec.get("resources", []):
        path = folder / entry
        if path.is_dir():  # another kustomization (may live outside this root)
            resources += render(path)
        else:
            resources += [doc for doc in yaml.safe_load_all(_inside(folder, path).read_text())
                          if doc]
    options = spec.get("generatorOptions", {})
    assert set(options) <= {"disableNameSuffixHash", "labels"}
    for generator in spec.get("configMapGenerator", []):
        assert set(generator) <= {"name", "files"}, generator
        # Kustomize appends a content hash to generated names unless told not to; references
        # from inside custom resources (KubeRay's pod templates) are not rewritten to it.
        assert options.get("disableNameSuffixHash") is True
        data = {}
        for item in generator["files"]:
            key, _, path = item.rpartition("=") if "=" in item else (None, "", item)
            data[key or Path(path).name] = _inside(folder, folder / path).read_text()
        resources.append({"apiVersion": "v1", "kind": "ConfigMap",
                          "metadata": {"name": generator["name"],
                                       "labels": dict(options.get("labels", {}))},
                          "data": data})
    for resource in resources:
        metadata = resource.setdefault("metadata", {})
        if "namespace" in spec and resource["kind"] not in CLUSTER_SCOPED:
            metadata["namespace"] = spec["namespace"]
        for label in spec.get("labels", []):
            assert set(label) == {"pairs"}, "labels: only pairs (no selectors, no templates)"
            metadata.setdefault("labels", {}).update(label["pairs"])
    return resources


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    return render(K8S)


def _one(rendered: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [r for r in rendered if r["kind"] == kind
             and (name is None or r["metadata"]["name"] == name)]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def _pod_templates(rendered: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every pod template in the render, by where it is."""
    templates = {}
    for resource in rendered:
        kind, name, spec = resource["kind"], resource["metadata"]["name"], resource.get("spec", {})
        if kind in ("Deployment", "StatefulSet"):
            templates[f"{kind}/{name}"] = spec["template"]
        if kind == "RayJob":
            templates[f"{kind}/{name} submitter"] = spec["submitterPodTemplate"]
            spec = spec["rayClusterSpec"]
        if kind in ("RayJob", "RayCluster"):
            templates[f"{kind}/{name} head"] = spec["headGroupSpec"]["template"]
            for group in spec["workerGroupSpecs"]:
                templates[f"{kind}/{name} {group['groupName']}"] = group["template"]
    return templates


# ----------------------------------------------------------------------------- the tests


def test_every_yaml_parses() -> None:
    files = sorted(K8S.rglob("*.yaml")) + [ROOT / "configs" / "Kustomization"]
    assert len(files) >= 8
    for path in files:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert documents, f"{path} is empty"
        assert all(isinstance(d, dict) for d in documents), path


def test_the_kustomization_renders_every_file_once(rendered: list[dict[str, Any]]) -> None:
    listed = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    used = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    assert listed <= used, f"k8s/ files that kubectl apply -k would leave out: {listed - used}"
    names = [(r["kind"], r["metadata"].get("namespace"), r["metadata"]["name"]) for r in rendered]
    assert len(names) == len(set(names)), "a resource is defined twice"
    assert {kind for kind, _, _ in names} >= {
        "Namespace", "ConfigMap", "PersistentVolumeClaim", "Service", "StatefulSet",
        "Deployment", "NetworkPolicy", "RayCluster", "RayJob"}
    assert all(r["metadata"]["labels"]["app.kubernetes.io/part-of"] == "dist-contrast"
               for r in rendered)
    assert {r["metadata"].get("namespace") for r in rendered if r["kind"] != "Namespace"} == {
        _one(rendered, "Namespace")["metadata"]["name"]}


def test_the_configmap_holds_every_config_of_configs(rendered: list[dict[str, Any]]) -> None:
    data = _one(rendered, "ConfigMap", "dist-contrast-configs")["data"]
    assert set(data) == {p.name for p in (ROOT / "configs").glob("*.yaml")}
    for name, text in data.items():
        assert text == (ROOT / "configs" / name).read_text()


def test_built_in_kinds_validate_against_the_kubernetes_schemas(
    rendered: list[dict[str, Any]],
) -> None:
    version = kubernetes_validate.latest_version()
    checked = 0
    for resource in rendered:
        if resource["apiVersion"].startswith("ray.io/"):
            continue
        kubernetes_validate.validate(resource, version, strict=True)
        checked += 1
    assert checked >= 10


def test_the_ray_pod_templates_validate_as_pod_template_specs(
    rendered: list[dict[str, Any]],
) -> None:
    version = kubernetes_validate.latest_version()
    templates = _pod_templates(rendered)
    assert len(templates) == 9  # 2 Deployments/StatefulSets, RayJob submitter + 3, RayCluster 3
    for where, template in templates.items():
        wrapped = {"apiVersion": "v1", "kind": "PodTemplate",
                   "metadata": {"name": re.sub(r"[^a-z0-9-]", "-", where.lower())},
                   "template": template}
        try:
            kubernetes_validate.validate(wrapped, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(f"{where}: {exc.message}") from None


def test_a_misspelt_field_in_a_pod_template_is_caught() -> None:
    """The validation above can fail: a misspelt field in a pod template is an error."""
    broken = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "x"},
              "template": {"spec": {"containers": [{"name": "c", "image": "i",
                                                    "resources": {"limit": {}}}]}}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, kubernetes_validate.latest_version(), strict=True)


def _cluster_spec(resource: dict[str, Any]) -> dict[str, Any]:
    spec = resource["spec"]
    return spec["rayClusterSpec"] if resource["kind"] == "RayJob" else spec


@pytest.mark.parametrize("kind", ["RayJob", "RayCluster"])
def test_the_kuberay_resources_follow_the_ray_io_v1_api(
    rendered: list[dict[str, Any]], kind: str
) -> None:
    resource = _one(rendered, kind)
    assert resource["apiVersion"] == "ray.io/v1"
    if kind == "RayJob":
        assert set(resource["spec"]) <= RAYJOB_SPEC, set(resource["spec"]) - RAYJOB_SPEC
    spec = _cluster_spec(resource)
    assert set(spec) <= RAYCLUSTER_SPEC, set(spec) - RAYCLUSTER_SPEC
    assert spec["rayVersion"] == ray.__version__
    assert spec["authOptions"] == {"mode": "token"}
    head = spec["headGroupSpec"]
    assert set(head) <= HEAD_GROUP
    (container,) = head["template"]["spec"]["containers"]
    assert {p["containerPort"]: p["name"] for p in container["ports"]} == HEAD_PORTS
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu"}
    for group in groups.values():
        assert set(group) <= WORKER_GROUP
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert all(isinstance(v, str) for v in group["rayStartParams"].values())
    assert all(isinstance(v, str) for v in head["rayStartParams"].values())
    gpu = groups["gpu"]["template"]["spec"]
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in (
        gpu["tolerations"])
    assert "nvidia.com/gpu" not in str(groups["cpu"])
    # Every Ray container reaches the MLflow Service with the credentials of one Secret.
    service = _one(rendered, "Service", "mlflow")
    port = service["spec"]["ports"][0]["port"]
    for template in [head["template"], *(g["template"] for g in groups.values())]:
        env = {e["name"]: e for e in template["spec"]["containers"][0]["env"]}
        assert env["MLFLOW_TRACKING_URI"]["value"] == f"http://mlflow:{port}"
        for key, name in (("username", "USERNAME"), ("password", "PASSWORD")):
            ref = env[f"MLFLOW_TRACKING_{name}"]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": "mlflow-credentials", "key": key}


def test_the_rayjob_runs_our_cli_on_a_config_from_the_configmap(
    rendered: list[dict[str, Any]],
) -> None:
    job = _one(rendered, "RayJob")["spec"]
    assert job["shutdownAfterJobFinishes"] is True
    assert isinstance(job["ttlSecondsAfterFinished"], int) and job["ttlSecondsAfterFinished"] > 0
    runtime_env = yaml.safe_load(job["runtimeEnvYAML"])
    assert int(runtime_env["env_vars"]["RAY_JOB_STOP_WAIT_TIME_S"]) >= 30
    argv = shlex.split(job["entrypoint"])
    assert argv[:2] == ["dist-contrast", "train"]
    config, overrides = Path(argv[2]), argv[3:]
    head = job["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in head["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in head["volumes"]}
    (volume,) = [name for name, path in mounts.items() if Path(path) == config.parent]
    configmap = _one(rendered, "ConfigMap", volumes[volume]["configMap"]["name"])
    assert config.name in configmap["data"]
    cfg = load_config(ROOT / "configs" / config.name, overrides)  # a config that validates
    assert cfg.experiment.output_dir in {str(Path(p)) for p in mounts.values()} | {
        p.rstrip("/") for p in mounts.values()}  # checkpoints on the shared volume
    pvc = _one(rendered, "PersistentVolumeClaim",
               volumes[next(n for n, p in mounts.items() if p == cfg.experiment.output_dir)]
               ["persistentVolumeClaim"]["claimName"])
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_every_pod_runs_locked_down(rendered: list[dict[str, Any]]) -> None:
    claims = {f"StatefulSet/{r['metadata']['name']}": {c["metadata"]["name"] for c in
                                                       r["spec"].get("volumeClaimTemplates", [])}
              for r in rendered if r["kind"] == "StatefulSet"}
    for where, template in _pod_templates(rendered).items():
        spec = template["spec"]
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod.get("runAsUser", 1) != 0, where
        assert spec["automountServiceAccountToken"] is False, where
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["capabilities"] == {"drop": ["ALL"]}, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert "privileged" not in security and "add" not in security["capabilities"]
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][part]), (where, part)
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            assert set(mounts.values()) <= set(volumes) | claims.get(where, set()), where
            # What must be written goes to a volume: /tmp at least.
            assert "emptyDir" in volumes[mounts["/tmp"]], where


def _documented_secrets() -> dict[str, set[str]]:
    """The Secrets k8s/README.md creates: name -> keys (from its kubectl create commands)."""
    text = (K8S / "README.md").read_text().replace("\\\n", " ")
    secrets = {}
    for command in re.findall(r"kubectl[^\n]*create secret generic [^\n]+", text):
        name = re.search(r"create secret generic (\S+)", command)
        assert name is not None
        secrets[name.group(1)] = set(re.findall(r"--from-literal=([\w-]+)=", command))
    return secrets


def test_secrets_are_referenced_never_committed(rendered: list[dict[str, Any]]) -> None:
    assert not [r for r in rendered if r["kind"] == "Secret"]
    documented = _documented_secrets()
    used: dict[str, set[str]] = {}
    for template in _pod_templates(rendered).values():
        spec = template["spec"]
        for container in spec["containers"]:
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    used.setdefault(ref["name"], set()).add(ref["key"])
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                used.setdefault(volume["secret"]["secretName"], set())
    assert used, "no Secret is used"
    for name, keys in used.items():
        assert name in documented, f"Secret {name} is used but k8s/README.md does not create it"
        assert keys <= documented[name], (name, keys - documented[name])
    # The files read from the mounted Secrets are keys the README creates.
    args = " ".join(_one(rendered, "Deployment", "mlflow")["spec"]["template"]["spec"]
                    ["containers"][0]["args"])
    assert set(re.findall(r"secret ([\w-]+)\)", args)) <= documented["mlflow-server"]
    postgres = _one(rendered, "StatefulSet", "postgres")["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in postgres["containers"][0]["env"]}
    assert Path(env["POSTGRES_PASSWORD_FILE"]).name in documented["postgres-credentials"]


def test_the_mlflow_server_is_authenticated_proxied_and_probed(
    rendered: list[dict[str, Any]],
) -> None:
    deployment = _one(rendered, "Deployment", "mlflow")["spec"]["template"]
    container = deployment["spec"]["containers"][0]
    script = " ".join(container["args"])
    for flag in ("--app-name basic-auth", "--serve-artifacts", "--allowed-hosts"):
        assert flag in script
    hosts = re.search(r'--allowed-hosts "([^"]+)"', script)
    assert hosts is not None and "mlflow:5000" in hosts.group(1).split(",")
    assert container["readinessProbe"]["httpGet"]["path"] == "/health"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    env = {e["name"]: e.get("value") for e in container["env"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["volumes"]}
    artifacts = volumes[mounts[env["MLFLOW_ARTIFACTS_DESTINATION"]]]
    _one(rendered, "PersistentVolumeClaim", artifacts["persistentVolumeClaim"]["claimName"])
    # PostgreSQL keeps its data on a volume claim of its own.
    postgres = _one(rendered, "StatefulSet", "postgres")["spec"]
    assert postgres["volumeClaimTemplates"][0]["metadata"]["name"] == "data"


def test_network_policies_let_only_ray_reach_mlflow_and_only_mlflow_reach_postgres(
    rendered: list[dict[str, Any]],
) -> None:
    policies = [r["spec"] for r in rendered if r["kind"] == "NetworkPolicy"]
    mlflow_pods = _one(rendered, "Deployment", "mlflow")["spec"]["template"]["metadata"]["labels"]
    postgres_pods = _one(rendered, "StatefulSet", "postgres")["spec"]["template"]["metadata"][
        "labels"]

    def guarding(labels: dict[str, str]) -> dict[str, Any]:
        (policy,) = [p for p in policies if p["podSelector"]["matchLabels"].items()
                     <= labels.items()]
        assert policy["policyTypes"] == ["Ingress"]
        (rule,) = policy["ingress"]
        return rule

    to_mlflow, to_postgres = guarding(mlflow_pods), guarding(postgres_pods)
    assert to_mlflow["from"] == [{"podSelector": {"matchLabels": {"ray.io/is-ray-node": "yes"}}}]
    assert to_mlflow["ports"] == [{"protocol": "TCP", "port": 5000}]
    assert to_postgres["from"] == [{"podSelector": {"matchLabels": {
        "app.kubernetes.io/name": mlflow_pods["app.kubernetes.io/name"]}}}]
    assert to_postgres["ports"] == [{"protocol": "TCP", "port": 5432}]


def test_the_images_are_the_pinned_versions(rendered: list[dict[str, Any]]) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"ARG RAY_VERSION={ray.__version__}\n" in dockerfile
    assert "FROM rayproject/ray:${RAY_VERSION}-py311-${VARIANT} AS ray" in dockerfile
    assert f'"mlflow[auth]=={mlflow.__version__}"' in dockerfile
    version = re.search(r'^version = "(.+)"$', (ROOT / "pyproject.toml").read_text(), re.M)
    assert version is not None
    for where, template in _pod_templates(rendered).items():
        image = template["spec"]["containers"][0]["image"]
        if where.startswith(("RayJob", "RayCluster")):
            assert image.removesuffix("-gpu") == f"dist-contrast:{version.group(1)}", where
            assert image.endswith("-gpu") == where.endswith(" gpu"), where
    # The build context keeps exactly what the Dockerfile copies.
    ignore = (ROOT / ".dockerignore").read_text().split()
    kept = {line.removeprefix("!").rstrip("/") for line in ignore if line.startswith("!")}
    copied = set(re.findall(r"^COPY --chown=\S+ (.+) \./?\S*$", dockerfile, re.M))
    assert {p for line in copied for p in line.split()} == kept


CHECKOV = ROOT / ".venv-tools" / "bin" / "checkov"


@pytest.mark.tools  # checkov, in .venv-tools/ (`make tools`)
def test_checkov_finds_nothing_and_every_skip_says_why() -> None:
    assert CHECKOV.is_file(), "checkov is missing: `make tools` installs it in .venv-tools/"
    files = sorted(str(p) for p in K8S.glob("*.yaml")) + [str(ROOT / "Dockerfile")]
    done = subprocess.run(
        [str(CHECKOV), "--quiet", "--output", "json", "--skip-download",
         "--framework", "kubernetes", "dockerfile", "--file", *files],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    reports = json.loads(done.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    assert {r["check_type"] for r in reports} == {"kubernetes", "dockerfile"}, done.stderr[-2000:]
    for report in reports:
        summary = report["summary"]
        failed = report["results"].get("failed_checks", [])
        assert summary["failed"] == 0, [(c["check_id"], c["resource"]) for c in failed]
        assert summary["parsing_errors"] == 0
        assert summary["passed"] > 10
        for skipped in report["results"].get("skipped_checks", []):
            reason = (skipped.get("suppress_comment") or "").strip()
            assert len(reason) > 20, f"{skipped['check_id']} is skipped without a reason"
    assert done.returncode == 0
