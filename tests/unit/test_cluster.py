"""The files of cluster/ against the specs and the code they run (no Kubernetes, no Ray cluster).

Each manifest is read the way its tool reads it and checked for what would break on a cluster:
the command a job runs exists and its spec validates, the GPUs and CPUs hold the spec's training
workers, every Ray container has token authentication and the tracking server, the Serve
builder imports, the launcher config passes Ray's own schema, the images agree.
"""

from __future__ import annotations

import configparser
import copy
import importlib
import importlib.util
import inspect
import re
import shlex
import tomllib
import types
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from tests.conftest import ROOT
from workflows.spec import load_spec

CLUSTER = ROOT / "cluster"
KUBERAY = CLUSTER / "kuberay"
RAY_KINDS = {"RayCluster", "RayJob", "RayService"}
KNOWN = {("ray.io/v1", kind) for kind in RAY_KINDS} | {
    ("v1", "Service"), ("v1", "ConfigMap"), ("apps/v1", "Deployment"), ("apps/v1", "StatefulSet"),
    ("kustomize.config.k8s.io/v1beta1", "Kustomization"),
}
RAY_JOBS = ["rayjob.yaml", "rayjob-multinode.yaml"]


# --- reading ---------------------------------------------------------------------------------


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def one(path: Path, kind: str) -> dict:
    found = [d for d in docs(path) if d.get("kind") == kind]
    assert len(found) == 1, f"{path.name}: expected one {kind}, found {len(found)}"
    return found[0]


def manifests() -> list[Path]:
    return sorted(p for p in CLUSTER.rglob("*.yaml") if p.name != "aws.yaml")


def image() -> str:
    """The tag cluster/Dockerfile's first line builds (`docker build ... -t IMAGE .`)."""
    first = (CLUSTER / "Dockerfile").read_text().splitlines()[0]
    return re.search(r"-t (\S+)", first).group(1)


def ray_clusters() -> list[tuple[str, dict]]:
    """(file, RayClusterSpec) of every KubeRay manifest: a RayCluster's spec, a RayJob's rayClusterSpec,
    a RayService's rayClusterConfig."""
    out = []
    for path in sorted(KUBERAY.glob("*.yaml")):
        for d in docs(path):
            spec = {"RayCluster": lambda s: s, "RayJob": lambda s: s["rayClusterSpec"],
                    "RayService": lambda s: s["rayClusterConfig"]}[d["kind"]](d["spec"])
            out.append((path.name, spec))
    return out


def pod_groups(spec: dict) -> list[tuple[str, dict, dict]]:
    """(group name, rayStartParams, pod spec) of the head and every worker group."""
    groups = [("head", spec["headGroupSpec"].get("rayStartParams") or {}, spec["headGroupSpec"]["template"]["spec"])]
    groups += [(g["groupName"], g.get("rayStartParams") or {}, g["template"]["spec"]) for g in spec.get("workerGroupSpecs", [])]
    return groups


def quantity(value) -> float:
    """A Kubernetes quantity as a number: '500m' -> 0.5, '64Gi' -> 64 * 2**30, '8' -> 8."""
    text = str(value)
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    for unit in sorted(units, key=len, reverse=True):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * units[unit]
    return float(text)


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def pod_resources(params: dict, pod: dict) -> tuple[float, float]:
    """(CPUs, GPUs) Ray sees on a pod: rayStartParams when given, else the container's limits (as KubeRay does)."""
    limits = pod["containers"][0]["resources"]["limits"]
    cpus = float(params.get("num-cpus", quantity(limits["cpu"])))
    gpus = float(params.get("num-gpus", quantity(limits.get("nvidia.com/gpu", 0))))
    return cpus, gpus


def workers_that_fit(nodes: list[tuple[float, float]], cpus_per_worker: float, gpus_per_worker: float) -> int:
    """Training workers (one bundle of CPUs + GPUs each; a bundle never spans nodes) that fit on `nodes`."""
    total = 0
    for cpus, gpus in nodes:
        by_cpu = int(cpus // cpus_per_worker)
        by_gpu = int(gpus // gpus_per_worker) if gpus_per_worker else by_cpu
        total += min(by_cpu, by_gpu)
    return total


def readme_secrets() -> dict[str, set[str]]:
    """Secret name -> keys, from the `kubectl create secret generic NAME --from-literal=KEY=...` lines of cluster/README.md."""
    text = (CLUSTER / "README.md").read_text().replace("\\\n", " ")
    found = {}
    for line in text.splitlines():
        m = re.search(r"kubectl create secret generic (\S+)(.*)", line)
        if m:
            found[m.group(1)] = set(re.findall(r"--from-literal=([A-Za-z0-9_]+)=", m.group(2)))
    return found


def secret_refs(node) -> list[tuple[str, str]]:
    """Every (secret, key) a manifest reads through secretKeyRef."""
    if isinstance(node, dict):
        here = [(node["secretKeyRef"]["name"], node["secretKeyRef"]["key"])] if "secretKeyRef" in node else []
        return here + [ref for v in node.values() for ref in secret_refs(v)]
    if isinstance(node, list):
        return [ref for v in node for ref in secret_refs(v)]
    return []


def mlflow_service() -> tuple[str, int]:
    svc = next(d for d in docs(CLUSTER / "mlflow" / "mlflow.yaml") if d["kind"] == "Service")
    return svc["metadata"]["name"], svc["spec"]["ports"][0]["port"]


# --- every file ------------------------------------------------------------------------------


def test_every_manifest_parses_to_known_kinds_and_starts_with_its_command():
    expected = {"kuberay/raycluster.yaml": {"RayCluster"}, "kuberay/rayjob.yaml": {"RayJob"},
                "kuberay/rayjob-multinode.yaml": {"RayJob"}, "kuberay/rayservice.yaml": {"RayService"},
                "mlflow/kustomization.yaml": {"Kustomization"}, "mlflow/mlflow.yaml": {"Service", "Deployment"},
                "mlflow/postgres.yaml": {"Service", "ConfigMap", "StatefulSet"}}
    seen = {}
    for path in manifests():
        rel = path.relative_to(CLUSTER).as_posix()
        first = path.read_text().splitlines()[0]
        # The first line says how to apply the file: with its own path, or its kustomization's folder.
        assert first.startswith("# kubectl apply"), f"{rel}: first line {first!r}"
        assert f"cluster/{rel}" in first or f"-k cluster/{path.parent.name}" in first, f"{rel}: {first!r}"
        for d in docs(path):
            assert (d.get("apiVersion"), d.get("kind")) in KNOWN, f"{rel}: {d.get('apiVersion')} {d.get('kind')}"
            if d["kind"] != "Kustomization":
                assert d["metadata"]["name"], rel
            seen.setdefault(rel, set()).add(d["kind"])
    assert seen == expected
    assert (CLUSTER / "aws.yaml").read_text().startswith("# ray up cluster/aws.yaml")
    assert (CLUSTER / "Dockerfile").read_text().startswith("# docker build -f cluster/Dockerfile")


def test_every_secret_a_manifest_reads_is_created_in_the_readme():
    created = readme_secrets()
    refs = {ref for path in manifests() for d in docs(path) for ref in secret_refs(d)}
    assert refs, "no secretKeyRef found"
    for name, key in sorted(refs):
        assert key in created.get(name, set()), f"secret {name}, key {key}: not created in cluster/README.md ({created})"
    # envFrom secrets (bucket credentials) are created there too.
    env_from = {e["secretRef"]["name"] for path in manifests() for d in docs(path) for e in _env_from(d) if "secretRef" in e}
    assert env_from
    assert env_from <= set(created), env_from - set(created)


def _env_from(node) -> list[dict]:
    if isinstance(node, dict):
        return list(node.get("envFrom", [])) + [e for v in node.values() for e in _env_from(v)]
    if isinstance(node, list):
        return [e for v in node for e in _env_from(v)]
    return []


def test_readme_names_every_file_it_ships():
    text = (CLUSTER / "README.md").read_text()
    for path in [*manifests(), CLUSTER / "aws.yaml", CLUSTER / "Dockerfile"]:
        rel = path.relative_to(CLUSTER).as_posix()
        assert rel in text or path.parent.name + "/" in text, rel


# --- the image -------------------------------------------------------------------------------


def test_dockerfile_builds_the_project_on_the_ray_and_python_the_code_uses():
    import ray

    text = (CLUSTER / "Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)", text, re.M).group(1)
    # The image's Ray is the Ray the clients (this venv) speak to, on Python 3.11 with CUDA.
    assert base == f"rayproject/ray:{ray.__version__}-py311-gpu", base
    assert "DS_BUILD_OPS=0" in text
    workdir = re.findall(r"^WORKDIR (\S+)", text, re.M)[-1]
    # The project is copied into the WORKDIR, so `workflows/<spec>.yaml` resolves from there...
    assert re.search(r"^COPY (--chown=\S+ )?\. \.$", text, re.M), "the project is not copied into WORKDIR"
    assert workdir == "/app"
    # ...and installed (the `lifecycle` command), with pyproject.toml's dependencies.
    assert re.search(r"pip install[^\n]* \.(\s|$)", text), "the project is not pip-installed"
    assert "pyproject.toml" in text and "lifecycle --help" in text
    # The build context leaves out what is large or private.
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".lifecycle"} <= ignored


def test_every_ray_node_runs_the_image_the_dockerfile_builds():
    tag = image()
    for name, spec in ray_clusters():
        for group, _, pod in pod_groups(spec):
            assert [c["image"] for c in pod["containers"]] == [tag], f"{name} {group}"
    for path in KUBERAY.glob("rayjob*.yaml"):
        for c in one(path, "RayJob")["spec"]["submitterPodTemplate"]["spec"]["containers"]:
            assert c["image"] == tag, path.name
    assert yaml.safe_load((CLUSTER / "aws.yaml").read_text())["docker"]["image"] == tag


# --- KubeRay: authentication, tracking, storage, resources -------------------------------------


@pytest.mark.parametrize("name,spec", ray_clusters(), ids=[n for n, _ in ray_clusters()])
def test_ray_containers_have_token_auth_tracking_and_shared_storage(name, spec):
    import ray

    from components import storage

    assert spec["rayVersion"] == ray.__version__
    auth = spec["authOptions"]
    assert auth["mode"] == "token"
    host, port = mlflow_service()
    for group, _, pod in pod_groups(spec):
        (container,) = pod["containers"]
        env = env_of(container)
        assert env["RAY_AUTH_MODE"]["value"] == "token", f"{name} {group}"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": auth["secretName"], "key": "auth_token"}
        uri = urlsplit(env["MLFLOW_TRACKING_URI"]["value"])
        assert (uri.scheme, uri.hostname, uri.port) == ("http", host, port), f"{name} {group}: {uri.geturl()}"
        for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
            assert env[var]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-auth", f"{name} {group} {var}"
        # Every node reads the artifacts; with a tracking server a model must be registered from a URI.
        assert storage.is_remote(env["LIFECYCLE_STORAGE"]["value"]), f"{name} {group}"


def test_job_submitters_carry_the_token():
    for path in KUBERAY.glob("rayjob*.yaml"):
        job = one(path, "RayJob")["spec"]
        (container,) = job["submitterPodTemplate"]["spec"]["containers"]
        env = env_of(container)
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == job["rayClusterSpec"]["authOptions"]["secretName"]


@pytest.mark.parametrize("name,spec", ray_clusters(), ids=[n for n, _ in ray_clusters()])
def test_pod_resources_are_consistent(name, spec):
    assert spec["enableInTreeAutoscaling"] is True
    for group, params, pod in pod_groups(spec):
        (container,) = pod["containers"]
        res = container["resources"]
        where = f"{name} {group}"
        # Guaranteed pods: Ray's view of the pod is what the pod really has.
        assert {k: quantity(v) for k, v in res["requests"].items()} == {k: quantity(v) for k, v in res["limits"].items()}, where
        cpus, gpus = pod_resources(params, pod)
        assert 0 <= cpus <= quantity(res["limits"]["cpu"]), where
        assert gpus == quantity(res["limits"].get("nvidia.com/gpu", 0)), where
        if group == "head":
            assert gpus == 0 and params.get("num-gpus") == "0", f"{where}: the head has no GPU"
        else:
            assert gpus > 0, f"{where}: a worker group without GPUs"
        # The object store lives in a memory-backed /dev/shm that fits in the pod's memory.
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        shm = next(v for v in pod["volumes"] if mounts.get(v["name"]) == "/dev/shm")
        assert shm["emptyDir"]["medium"] == "Memory", where
        limit = quantity(shm["emptyDir"]["sizeLimit"])
        assert limit < quantity(res["limits"]["memory"]), where
        if "object-store-memory" in params:
            assert int(params["object-store-memory"]) <= limit, where
    for g in spec["workerGroupSpecs"]:
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], f"{name} {g['groupName']}"


# --- RayJob: the command, the spec, the capacity ------------------------------------------------


def entrypoint_args(command: str) -> list[str]:
    """The `lifecycle` arguments of a job's entrypoint, after checking its program exists."""
    argv = shlex.split(command)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    if argv[:2] == ["python", "-m"]:
        assert importlib.util.find_spec(argv[2]) is not None, f"no module {argv[2]}"
        assert argv[2] == scripts["lifecycle"].split(":")[0], argv[2]
        return argv[3:]
    assert argv[0] in scripts, f"{argv[0]}: not a console script of the project"
    return argv[1:]


@pytest.mark.parametrize("file", RAY_JOBS)
def test_rayjob_runs_an_existing_command_on_a_valid_spec_with_room_for_its_workers(file, monkeypatch):
    from workflows import cli

    job = one(KUBERAY / file, "RayJob")["spec"]
    assert job["shutdownAfterJobFinishes"] is True
    argv = entrypoint_args(job["entrypoint"])
    # The real command line parser, with the run itself stubbed out.
    seen = {}

    def run(args, console):
        seen["args"] = args
        return 0

    monkeypatch.setattr(cli, "_run", run)
    assert cli.main(argv) == 0 and argv[0] == "run"
    args = seen["args"]
    assert args.no_wait, "a job's driver must not hold a local endpoint open"
    assert (ROOT / args.spec).is_file() and args.spec.startswith("workflows/"), args.spec
    scale = load_spec(ROOT / args.spec, args.overrides).spec.scale  # raises SpecError if invalid

    nodes = [pod_resources(g.get("rayStartParams") or {}, g["template"]["spec"])
             for g in job["rayClusterSpec"]["workerGroupSpecs"] for _ in range(g["replicas"])]
    # Present from the start (replicas), not only after scaling up: training waits for all its workers.
    assert sum(g for _, g in nodes) >= scale.workers * scale.gpus_per_worker, f"{file}: GPUs {nodes}"
    assert sum(c for c, _ in nodes) >= scale.workers * scale.cpus_per_worker, f"{file}: CPUs {nodes}"
    assert workers_that_fit(nodes, scale.cpus_per_worker, scale.gpus_per_worker) >= scale.workers, \
        f"{file}: {scale.workers} workers of {scale.cpus_per_worker} CPUs + {scale.gpus_per_worker} GPUs do not fit on {nodes}"


def test_capacity_check_can_fail():
    # Two 8-GPU pods with 88 CPUs hold 16 workers of 1 GPU + 8 CPUs; with 60 CPUs each they hold 14.
    assert workers_that_fit([(88, 8), (88, 8)], 8, 1) == 16
    assert workers_that_fit([(60, 8), (60, 8)], 8, 1) == 14
    assert workers_that_fit([(16, 0)], 8, 1) == 0


# --- RayService: the Serve config and its builder ------------------------------------------------


def test_rayservice_serve_config_is_valid_and_its_builder_imports():
    from ray.serve.schema import ServeDeploySchema

    from components.deploy import registry

    service = one(KUBERAY / "rayservice.yaml", "RayService")["spec"]
    config = ServeDeploySchema.model_validate(yaml.safe_load(service["serveConfigV2"]))
    (app,) = config.applications
    assert app.route_prefix == "/"
    assert app.import_path == "components.deploy.registry:app"
    module, _, attr = app.import_path.partition(":")
    builder = getattr(importlib.import_module(module), attr)
    # What Serve accepts as an application builder: a plain function of one argument (the args).
    assert isinstance(builder, types.FunctionType) and len(inspect.signature(builder).parameters) == 1
    args = dict(app.args)
    ref = args.pop("model")
    cfg = registry.deploy_config(args)  # every other arg is a deploy setting
    # The model is one the shipped workflow registers and points the alias at.
    name, _, alias = ref.removeprefix("models:/").partition("@")
    resolved = load_spec(ROOT / "workflows" / "gpt2-124m.yaml")
    steps = {f"{resolved.spec.name}-{step}": step for step in resolved.spec.steps}
    assert name in steps, f"{name}: not a model workflows/gpt2-124m.yaml registers ({sorted(steps)})"
    deploys = [resolved.configs[s] for s, st in resolved.spec.steps.items() if st.uses == "deploy"]
    assert deploys and alias == deploys[0].alias
    # A replica fits on a worker pod.
    workers = [pod_resources(params, pod) for group, params, pod in pod_groups(service["rayClusterConfig"]) if group != "head"]
    assert any(c >= cfg.cpus_per_replica and g >= cfg.gpus_per_replica for c, g in workers), workers


def test_serve_builder_rejects_bad_args_naming_the_field():
    from components.deploy import registry

    with pytest.raises(ValueError, match="field 'model'"):
        registry.app({"max_batch_size": 4})
    with pytest.raises(ValueError, match="field 'max_batch_sise'"):
        registry.app({"model": "models:/m/1", "max_batch_sise": 4})
    with pytest.raises(ValueError, match="field 'gpus_per_replica'"):
        registry.app({"model": "models:/m/1", "gpus_per_replica": -1})
    with pytest.raises(ValueError, match="field 'rag': not supported in a Serve config"):
        registry.app({"model": "models:/m/1", "rag": {}})


# --- MLflow --------------------------------------------------------------------------------------


def test_mlflow_server_command_database_and_auth_config_fit_together():
    from mlflow.cli import server

    folder = CLUSTER / "mlflow"
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (folder / resource).is_file(), resource
    (generator,) = kustomization["configMapGenerator"]
    assert all((folder / f).is_file() for f in generator["files"])

    deployment = one(folder / "mlflow.yaml", "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    command = container["command"]
    assert command[:2] == ["mlflow", "server"]
    # MLflow's own parser: an unknown or malformed flag fails here.
    params = server.make_context("server", command[2:]).params
    assert params["app_name"] == "basic-auth"
    assert params["port"] == mlflow_service()[1] == container["ports"][0]["containerPort"]
    assert urlsplit(params["artifacts_destination"]).scheme == "s3"
    postgres = one(folder / "postgres.yaml", "Service")
    db = urlsplit(params["backend_store_uri"])
    assert db.scheme == "postgresql" and db.password is None, "the password comes from PGPASSWORD, not the URI"
    assert (db.hostname, db.port) == (postgres["metadata"]["name"], postgres["spec"]["ports"][0]["port"])
    assert "PGPASSWORD" in env_of(container)
    # Host validation lets the Service's own name through (what the Ray pods send).
    allowed = params["allowed_hosts"].split(",")
    assert f"{mlflow_service()[0]}:{mlflow_service()[1]}" in allowed

    # basic_auth.ini is mounted where MLFLOW_AUTH_CONFIG_PATH points, from the generated ConfigMap.
    env = env_of(container)
    path = Path(env["MLFLOW_AUTH_CONFIG_PATH"]["value"])
    mount = next(m for m in container["volumeMounts"] if Path(m["mountPath"]) == path.parent)
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == generator["name"] and path.name in generator["files"]
    assert {"MLFLOW_AUTH_ADMIN_USERNAME", "MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"} <= set(env)

    ini = configparser.ConfigParser()  # as MLflow reads it
    ini.read(folder / "basic_auth.ini")
    auth_db = urlsplit(ini["mlflow"]["database_uri"])
    assert auth_db.scheme == "postgresql" and auth_db.password is None
    assert (auth_db.hostname, auth_db.port) == (db.hostname, db.port)
    assert ini["mlflow"]["default_permission"] in ("READ", "EDIT", "MANAGE", "NO_PERMISSIONS")
    assert "admin_password" not in ini["mlflow"], "secrets belong in the Secret, not the ConfigMap"
    # The auth database is created by the init script, the tracking one by POSTGRES_DB.
    init = one(folder / "postgres.yaml", "ConfigMap")["data"]
    assert any(f"CREATE DATABASE {auth_db.path.lstrip('/')}" in sql for sql in init.values())
    statefulset = one(folder / "postgres.yaml", "StatefulSet")
    pg_env = env_of(statefulset["spec"]["template"]["spec"]["containers"][0])
    assert pg_env["POSTGRES_DB"]["value"] == db.path.lstrip("/") and pg_env["POSTGRES_USER"]["value"] == db.username


# --- the cluster launcher ------------------------------------------------------------------------


def test_launcher_config_passes_rays_schema_and_holds_the_gpt2_specs():
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    config = prepare_config(copy.deepcopy(raw))  # what `ray up` does before launching anything
    validate_config(config)
    assert config["provider"]["type"] == "aws"
    types_ = config["available_node_types"]
    head = types_[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    workers = {name: t for name, t in types_.items() if name != config["head_node_type"]}
    assert any(t["resources"].get("GPU", 0) > 0 for t in workers.values())
    for name, t in types_.items():
        assert t["node_config"].get("InstanceType"), f"{name}: no InstanceType"
    for name, t in workers.items():
        assert 0 <= t["min_workers"] <= t["max_workers"] and t["max_workers"] >= 1, name
    # Token auth on every node: the start commands and the container's environment.
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = " ".join(raw[key])
        assert "RAY_AUTH_MODE=token" in start and "ray start" in start, key
        for sourced in re.findall(r"\. (~/\S+);", start):  # files the commands load are synced there
            assert sourced in raw["file_mounts"], sourced
    assert "--env RAY_AUTH_MODE=token" in raw["docker"]["run_options"]
    assert "~/.ray/auth_token" in raw["file_mounts"]
    # Enough GPU nodes, at most max_workers of each, for the shipped cluster specs.
    for spec in ("gpt2-124m.yaml", "gpt2-124m-multinode.yaml"):
        scale = load_spec(ROOT / "workflows" / spec).spec.scale
        nodes = [(t["resources"]["CPU"], t["resources"].get("GPU", 0)) for t in workers.values() for _ in range(t["max_workers"])]
        assert workers_that_fit(nodes, scale.cpus_per_worker, scale.gpus_per_worker) >= scale.workers, spec


# --- Several nodes: lineage and storage every node reaches (workflows/shared_storage.py) -----------


def test_a_run_on_several_nodes_needs_a_tracking_server_and_shared_storage():
    from workflows.shared_storage import problems, refusal

    assert problems(1, None, None) == []  # one machine: the working folder holds both
    found = problems(2, None, None)
    assert len(found) == 2 and "MLFLOW_TRACKING_URI" in found[0] and "--storage" in found[1]
    assert "this Ray cluster has 2 nodes" in refusal(2, found) and "MLFLOW_TRACKING_URI" in refusal(2, found)
    # SQLite is not a server, even on a shared file system; a folder is not an object store the server resolves.
    assert problems(3, "s3://b/runs", "sqlite:////shared/mlflow.db") == [
        "lineage would go to sqlite:////shared/mlflow.db, not to a tracking server (MLFLOW_TRACKING_URI)"]
    assert problems(2, "/mnt/shared/runs", "http://mlflow:5000") == [
        "artifacts and checkpoints would go to the folder /mnt/shared/runs, not to an object store (--storage)"]
    assert problems(2, "gs://b/runs", "https://mlflow.internal") == []
    # The shipped cluster's pods set both, so a job there (which inherits them) passes.
    for _, spec in ray_clusters():
        for _, _, pod in pod_groups(spec):
            env = env_of(pod["containers"][0])
            assert problems(2, env["LIFECYCLE_STORAGE"]["value"], env["MLFLOW_TRACKING_URI"]["value"]) == []
