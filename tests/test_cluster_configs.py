"""Offline checks for the cluster / deployment configs.

* ``cluster.yaml`` (Ray cluster launcher, AWS) is validated with Ray's own
  validation code (the same ``prepare_config`` + ``validate_config`` that
  ``ray up`` runs before touching AWS), plus project-specific invariants.
* ``deploy/*.yaml`` (KubeRay RayJob / RayService) are checked for the fields
  the KubeRay operator needs.

No network access: nothing here calls AWS or Kubernetes.
"""

from __future__ import annotations

import copy
import shlex
from pathlib import Path

import pytest
import yaml

from prodray.config import ServeConfig

REPO = Path(__file__).resolve().parents[1]
CLUSTER_YAML = REPO / "cluster.yaml"
DEPLOY_DIR = REPO / "deploy"
RAY_VERSION = "2.60.0"
RAY_IMAGE = f"rayproject/ray:{RAY_VERSION}-py311-gpu"

DEPLOY_FILES = {
    "rayjob-train.yaml": (
        "RayJob",
        "python jobs/train.py --config prodray/configs/enhancer_demo.yaml",
    ),
    "rayjob-enhance.yaml": (
        "RayJob",
        "python jobs/enhance_catalog.py --input s3://catalog/images "
        "--output s3://catalog/enhanced --actor-gpus 1",
    ),
    "rayservice.yaml": ("RayService", None),
}


def _load(path: Path) -> dict:
    with path.open() as f:
        data = yaml.safe_load(f)
    assert isinstance(data, dict), f"{path} is not a YAML mapping"
    return data


# --------------------------------------------------------------------------
# cluster.yaml (Ray cluster launcher)
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ray_util():
    return pytest.importorskip("ray.autoscaler._private.util")


@pytest.fixture()
def cluster_config() -> dict:
    return _load(CLUSTER_YAML)


def _flag_values(commands: list[str], flag: str) -> list[str]:
    """Values of ``--flag=value`` / ``--flag value`` in ``ray start`` commands."""
    values = []
    for cmd in commands:
        tokens = shlex.split(cmd.replace(";", " ; "))
        for i, tok in enumerate(tokens):
            if tok == flag and i + 1 < len(tokens):
                values.append(tokens[i + 1])
            elif tok.startswith(flag + "="):
                values.append(tok.split("=", 1)[1])
    return values


def test_cluster_yaml_passes_ray_schema(ray_util, cluster_config):
    # Raw file against Ray's JSON schema + its cross-field checks.
    ray_util.validate_config(copy.deepcopy(cluster_config))
    # And after Ray merges in the AWS provider defaults, as `ray up` does.
    prepared = ray_util.prepare_config(copy.deepcopy(cluster_config))
    ray_util.validate_config(prepared)
    assert prepared["head_node_type"] in prepared["available_node_types"]


@pytest.mark.parametrize(
    "breakage",
    [
        "drop_provider",
        "drop_cluster_name",
        "unknown_top_level_key",
        "head_type_not_defined",
        "worker_missing_node_config",
    ],
)
def test_ray_validation_rejects_broken_copy(ray_util, cluster_config, breakage):
    import jsonschema

    broken = copy.deepcopy(cluster_config)
    if breakage == "drop_provider":
        del broken["provider"]
    elif breakage == "drop_cluster_name":
        del broken["cluster_name"]
    elif breakage == "unknown_top_level_key":
        broken["not_a_ray_option"] = True
    elif breakage == "head_type_not_defined":
        broken["head_node_type"] = "no_such_node_type"
    elif breakage == "worker_missing_node_config":
        del broken["available_node_types"]["gpu_worker_spot"]["node_config"]
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        ray_util.validate_config(broken)


def test_cluster_yaml_is_aws_us_west_2(cluster_config):
    provider = cluster_config["provider"]
    assert provider["type"] == "aws"
    assert provider["region"] == "us-west-2"


def test_dashboard_bound_to_localhost(cluster_config):
    cmds = cluster_config["head_start_ray_commands"]
    head_starts = [c for c in cmds if "ray start" in c and "--head" in c]
    assert head_starts, "no `ray start --head` in head_start_ray_commands"
    assert _flag_values(head_starts, "--dashboard-host") == ["127.0.0.1"]
    assert "0.0.0.0" not in " ".join(cmds)


def test_ray_version_pinned(cluster_config):
    docker = cluster_config["docker"]
    images = [docker.get(k) for k in ("image", "head_image", "worker_image")]
    images = [i for i in images if i]
    assert images
    for image in images:
        assert image.startswith(f"rayproject/ray:{RAY_VERSION}-"), image


def test_prodray_install_is_pinned(cluster_config):
    setup = " ".join(cluster_config["setup_commands"])
    assert 'pip install "prodray==0.1.0"' in setup


def test_gpu_worker_groups_spot_and_on_demand(cluster_config):
    head = cluster_config["head_node_type"]
    node_types = cluster_config["available_node_types"]
    assert "GPU" not in node_types[head].get("resources", {}), "head should be CPU-only"

    workers = {n: t for n, t in node_types.items() if n != head}
    gpu_workers = {n: t for n, t in workers.items() if t.get("resources", {}).get("GPU", 0) >= 1}
    assert gpu_workers, "no GPU worker node type"

    spot, on_demand = [], []
    for name, t in gpu_workers.items():
        node_config = t["node_config"]
        assert node_config.get("InstanceType"), name
        assert t["min_workers"] == 0, f"{name} should scale to zero"
        assert t["max_workers"] >= 1, name
        assert t["max_workers"] <= cluster_config["max_workers"], name
        market = node_config.get("InstanceMarketOptions", {}).get("MarketType")
        (spot if market == "spot" else on_demand).append(name)
    assert spot, "no spot GPU worker group"
    assert on_demand, "no on-demand GPU fallback group"
    assert cluster_config["idle_timeout_minutes"] > 0


def test_nodes_have_iam_instance_profile(cluster_config):
    for name, t in cluster_config["available_node_types"].items():
        arn = t["node_config"].get("IamInstanceProfile", {}).get("Arn", "")
        assert arn.startswith("arn:aws:iam::") and ":instance-profile/" in arn, name


# --------------------------------------------------------------------------
# deploy/*.yaml (KubeRay)
# --------------------------------------------------------------------------


def _check_container(container: dict, where: str) -> None:
    assert container.get("name"), f"{where}: container needs a name"
    assert container.get("image") == RAY_IMAGE, f"{where}: image {container.get('image')!r}"
    env = {e["name"]: e for e in container.get("env", [])}
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert key in env, f"{where}: missing env {key}"
        assert "value" not in env[key], f"{where}: {key} must not be inline"
        ref = env[key]["valueFrom"]["secretKeyRef"]
        assert ref.get("name") and ref.get("key"), f"{where}: bad secretKeyRef for {key}"
    for key in ("AWS_ENDPOINT_URL", "AWS_REGION"):
        assert key in env, f"{where}: missing env {key}"


def _check_ray_cluster_spec(spec: dict, where: str) -> None:
    head = spec["headGroupSpec"]
    params = head["rayStartParams"]
    assert isinstance(params, dict), f"{where}: rayStartParams must be a mapping"
    assert all(isinstance(v, str) for v in params.values()), (
        f"{where}: rayStartParams values must be strings"
    )
    assert "dashboard-host" in params, f"{where}: set dashboard-host explicitly"
    containers = head["template"]["spec"]["containers"]
    assert containers, f"{where}: head has no containers"
    _check_container(containers[0], f"{where} head")
    # The head must not be exposed outside the Kubernetes cluster.
    assert not spec.get("enableIngress", False), f"{where}: no ingress for the head"
    svc_type = head.get("serviceType", "ClusterIP")
    assert svc_type == "ClusterIP", f"{where}: head serviceType {svc_type}"

    groups = spec["workerGroupSpecs"]
    assert groups, f"{where}: no workerGroupSpecs"
    names = [g["groupName"] for g in groups]
    assert len(names) == len(set(names)), f"{where}: duplicate groupName"
    has_gpu = False
    for g in groups:
        gw = f"{where} worker group {g['groupName']}"
        for key in ("replicas", "minReplicas", "maxReplicas"):
            assert isinstance(g.get(key), int), f"{gw}: {key} must be an int"
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], gw
        assert isinstance(g.get("rayStartParams", {}), dict), gw
        wcontainers = g["template"]["spec"]["containers"]
        assert wcontainers, f"{gw}: no containers"
        _check_container(wcontainers[0], gw)
        limits = wcontainers[0].get("resources", {}).get("limits", {})
        if int(limits.get("nvidia.com/gpu", 0)) >= 1:
            has_gpu = True
    assert has_gpu, f"{where}: no GPU worker group"


@pytest.mark.parametrize("filename", sorted(DEPLOY_FILES))
def test_kuberay_manifest(filename):
    kind, entrypoint = DEPLOY_FILES[filename]
    doc = _load(DEPLOY_DIR / filename)
    assert doc["apiVersion"] == "ray.io/v1"
    assert doc["kind"] == kind
    assert doc["metadata"]["name"]
    spec = doc["spec"]
    if kind == "RayJob":
        assert spec["entrypoint"] == entrypoint
        for word in entrypoint.split():  # the job's script and config are files of this repository
            if word.endswith((".py", ".yaml")):
                assert (REPO / word).is_file(), word
        assert spec["shutdownAfterJobFinishes"] is True
        if "runtimeEnvYAML" in spec:
            assert isinstance(yaml.safe_load(spec["runtimeEnvYAML"]), dict)
    _check_ray_cluster_spec(spec["rayClusterSpec"], filename)
    assert spec["rayClusterSpec"].get("rayVersion", RAY_VERSION) == RAY_VERSION
    # Token auth on (KubeRay's authOptions needs spec.rayVersion >= 2.52).
    assert spec["rayClusterSpec"]["authOptions"] == {"mode": "token"}, filename


def test_rayservice_serve_config():
    doc = _load(DEPLOY_DIR / "rayservice.yaml")
    serve_config = doc["spec"]["serveConfigV2"]
    assert isinstance(serve_config, str), "serveConfigV2 must be a YAML string"
    parsed = yaml.safe_load(serve_config)
    apps = parsed["applications"]
    assert apps[0]["import_path"] == "prodray.cluster.serve:app_builder"
    assert apps[0]["route_prefix"] == "/"
    assert all(a.get("name") for a in apps)
    # The builder's args are a ServeConfig: a typo there would fail the deploy on the cluster.
    config = ServeConfig.model_validate(apps[0]["args"])
    assert config.enhancer_replicas.num_gpus == 1  # the worker group exists for the GPU replicas


def test_serve_config_accepted_by_ray_serve_schema():
    schema = pytest.importorskip("ray.serve.schema")
    doc = _load(DEPLOY_DIR / "rayservice.yaml")
    parsed = yaml.safe_load(doc["spec"]["serveConfigV2"])
    model = schema.ServeDeploySchema
    validate = getattr(model, "model_validate", None) or model.parse_obj
    validate(parsed)
