"""Run a validated workflow as Ray core dataflow, with caching and MLflow lineage.

A step whose cache key has a FINISHED MLflow run with its artifact still on disk is not run
again: the driver looks every key up first. Each step still to run is one ``ray.remote`` task
that receives its upstream steps' ObjectRefs, so independent branches run at once and Ray
places them; the step task reserves no CPU (the Ray Train workers it starts do).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any

import ray

from components import storage, tracking
from components.artifact import Artifact, StepContext
from components.deploy.ingress import local_ingress_env
from workflows.phases import PHASES, load
from workflows.shared_storage import problems, refusal
from workflows.spec import Resolved, SpecError

CODE_ROOTS = ("components", "workflows")


@lru_cache(maxsize=1)
def code_version() -> str:
    """Hash of every Python source file of the project: a code change invalidates the cache."""
    digest = hashlib.sha256()
    root = Path(__file__).resolve().parent.parent
    for top in CODE_ROOTS:
        for path in sorted((root / top).rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def cache_keys(resolved: Resolved) -> dict[str, str]:
    """hash(phase, canonical config, scale, upstream keys, code version) for every step."""
    keys: dict[str, str] = {}
    for name in resolved.order:
        step = resolved.spec.steps[name]
        payload = {
            "phase": step.uses,
            "config": resolved.configs[name].model_dump(mode="json"),
            "scale": resolved.spec.scale.model_dump(),
            "upstream": {need: keys[need] for need in sorted(step.needs)},
            "code": code_version(),
        }
        keys[name] = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]
    return keys


@ray.remote(num_cpus=0)
class ProgressBoard:
    """Shared state of the live table: steps and training callbacks write, the driver reads."""

    def __init__(self):
        self.rows: dict[str, dict[str, Any]] = {}

    def update(self, step: str, fields: dict[str, Any]) -> None:
        self.rows.setdefault(step, {}).update(fields)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return self.rows


@ray.remote(num_cpus=0, max_retries=0)
def execute_step(job: dict[str, Any], board, *upstream: Artifact) -> Artifact:
    """Run one step (or reuse its cached artifact) inside a Ray task; returns its Artifact."""
    name, uri, key = job["step"], job["tracking_uri"], job["cache_key"]
    # Looked up again: another driver may have finished the same step since this one looked.
    cached = tracking.find_cached(uri, key) if PHASES[job["phase"]].cache else None
    if cached is not None:
        board.update.remote(name, {"state": "cached", "headline": cached.headline, "run_id": cached.run_id})
        return dataclasses.replace(cached, cached=True)
    tracking.close_stale_runs(uri, key)  # left RUNNING by a driver that was killed
    inputs = dict(zip(job["needs"], upstream))  # any further upstream refs were only waited for
    run_id = tracking.start_step_run(
        uri, job["parent_run_id"], name, job["phase"], key, [a.run_id for a in inputs.values()], job["spec_sha"], job["config"]
    )
    board.update.remote(name, {"state": "running", "started": time.time(), "run_id": run_id})
    workdir = Path(job["workdir"])
    root = job["storage"]  # a directory (local or shared) or an object-store URI
    final = storage.join(root, "artifacts", f"{name}-{key[:16]}")
    # Written locally; a directory root gets it by rename (same filesystem), an object store by upload.
    local_root = workdir if storage.is_remote(root) else storage.local_path(root)
    scratch = local_root / "artifacts" / ".partial" / f"{name}-{key[:16]}-{uuid.uuid4().hex[:8]}"
    scratch.mkdir(parents=True)
    phase = PHASES[job["phase"]]
    ctx = StepContext(
        step=name, phase=job["phase"], workdir=workdir, output_dir=scratch,
        storage_path=storage.join(root, "ray_storage"), tracking_uri=uri, run_id=run_id, cache_key=key, **job["scale"],
        progress=lambda metrics: board.update.remote(name, {"metrics": metrics}),
    )
    started = time.perf_counter()
    try:
        cfg = load(phase.config).model_validate(job["config"])
        artifact = load(phase.run)(cfg, inputs, ctx)
        seconds = {"step": time.perf_counter() - started, **ctx.seconds}
        tracking.log_metrics(uri, run_id, {f"seconds_{part}": s for part, s in seconds.items()})
        # Only a complete artifact takes the final name; a crash leaves just the scratch dir.
        has_adapter = (scratch / "adapter").is_dir()
        if storage.is_remote(final):
            storage.upload(scratch, final)
            shutil.rmtree(scratch)
        else:
            if Path(final).exists():
                shutil.rmtree(final)
            os.replace(scratch, final)
        artifact = dataclasses.replace(artifact, uri=str(final))
        if artifact.kind == "model":
            artifact = dataclasses.replace(artifact, metrics={**artifact.metrics, **origin_of(name, artifact, inputs)})
        if artifact.kind in ("model", "reward_model"):
            registered = f"{job['workflow']}-{name}"
            version = tracking.register_model(uri, run_id, registered, storage.as_uri(final))
            if has_adapter:  # a PEFT adapter travels with the merged model
                tracking.register_model(uri, run_id, f"{registered}-adapter", storage.as_uri(storage.join(final, "adapter")))
            artifact = dataclasses.replace(
                artifact, headline=f"{artifact.headline} (v{version})".strip(),
                metrics={**artifact.metrics, "registered_model": registered, "registered_version": version},
            )
        tracking.finish_step(uri, run_id, artifact)
    except BaseException:
        tracking.end_run(uri, run_id, "FAILED")
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    board.update.remote(name, {"state": "done", "headline": artifact.headline, "ended": time.time()})
    return artifact


def origin_of(step: str, made: Artifact, inputs: dict[str, Artifact]) -> dict[str, str]:
    """The pretrained model at the root of a model's lineage, which its forgetting is measured against
    (components/evaluate): the origin of the step's model input, or the model itself when the step had
    none (pretrain, base). {"origin_step", "origin_uri", "origin_key"}."""
    source = next(((n, a) for n, a in inputs.items() if a.kind == "model"), None)
    if source is None:
        return {"origin_step": step, "origin_uri": made.uri, "origin_key": made.cache_key}
    name, model = source
    own = {"origin_step": name, "origin_uri": model.uri, "origin_key": model.cache_key}
    return {k: str(model.metrics.get(k, v)) for k, v in own.items()}


@dataclasses.dataclass
class StepOutcome:
    step: str
    phase: str
    state: str  # done | cached | failed
    seconds: float
    artifact: Artifact | None = None
    error: str | None = None


def start_ray(address: str | None) -> bool:
    """Connect to ``address`` / RAY_ADDRESS, or start an embedded local Ray. Returns True if we started it."""
    if ray.is_initialized():
        return False
    if not address:  # Serve's HAProxy ingress, with its own files and ports (components/deploy/ingress.py)
        os.environ.update(local_ingress_env(dict(os.environ)))
    # "local": a fresh embedded Ray even if another local cluster is recorded in /tmp/ray.
    # Worker output would tear the live table; it stays in Ray's session logs. The dashboard
    # stays on: Ray Train's placement-group cleaner asks its State API whether a trainer died.
    ray.init(address=address or "local", log_to_driver=False, configure_logging=False)
    if not address:
        # Record this cluster as the current one, as `ray start` does: Ray's State API clients
        # inside it (Ray Train's placement-group cleaner, which frees a killed trainer's CPUs)
        # look the address up there, and would otherwise ask a stale cluster.
        from ray._private.utils import write_ray_address

        write_ray_address(ray.get_runtime_context().gcs_address)
    return True


def check_cluster(storage_root: str | None, tracking_uri: str | None) -> None:
    """SpecError when the connected Ray has several alive nodes and the run's lineage or storage would not
    reach them all (workflows/shared_storage.py)."""
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    found = problems(nodes, storage_root, tracking_uri)
    if found:
        raise SpecError(refusal(nodes, found))


def run(resolved: Resolved, workdir: Path, address: str | None = None, display=None,
        keep_ray: bool = False, storage_root: str | None = None) -> tuple[str, list[StepOutcome]]:
    """Execute the workflow; returns the workflow's MLflow run id and one outcome per step.

    storage_root: where artifacts and Ray Train checkpoints go: a directory every node can
    read (default: the workdir, enough on one machine) or an object-store URI (s3://, gs://).

    display: an object with ``update(rows)`` called while steps run (see workflows.progress).
    keep_ray: leave a local Ray this call started running (its Serve endpoint with it); the
    caller shuts it down.
    """
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    root = storage_root if storage_root and storage.is_remote(storage_root) else str(Path(storage_root or workdir).resolve())
    uri = tracking.tracking_uri_for(workdir)
    keys = cache_keys(resolved)
    with ThreadPoolExecutor(1) as pool:
        # A Ray it starts has one node, which check_cluster never refuses: so MLflow's first connection
        # and the cache look-ups (reads) go on while it starts (2 to 4 s of a re-run's 30 s).
        local = not address and not ray.is_initialized()
        lookups = pool.submit(_cached, resolved, keys, uri) if local else None
        started_ray = start_ray(address)
        check_cluster(storage_root, os.environ.get("MLFLOW_TRACKING_URI"))  # before anything is written
        cached = lookups.result() if lookups else _cached(resolved, keys, uri)
    parent = tracking.start_workflow_run(uri, workdir, resolved.spec.name, resolved.sha, resolved.document, _git_commit())
    board = ProgressBoard.remote()
    refs: dict[str, ray.ObjectRef] = {}
    for name in _deploys_last(resolved):
        step = resolved.spec.steps[name]
        # A cached step is passed on here, not run in a task: a re-run then starts no worker process for it.
        if name in cached:
            artifact = cached[name]
            board.update.remote(name, {"phase": step.uses, "state": "cached", "headline": artifact.headline, "run_id": artifact.run_id})
            refs[name] = ray.put(artifact)
            continue
        job = {
            "step": name, "phase": step.uses, "workflow": resolved.spec.name, "cache_key": keys[name],
            "config": resolved.configs[name].model_dump(mode="json"), "needs": step.needs, "spec_sha": resolved.sha,
            "parent_run_id": parent, "tracking_uri": uri, "workdir": str(workdir), "storage": root, "scale": resolved.spec.scale.model_dump(),
        }
        board.update.remote(name, {"phase": step.uses, "state": "waiting"})
        # A deploy step also waits for every other step: a replica holds CPUs until Ctrl-C, and a
        # training step still to come would wait for them forever.
        after = [ref for n, ref in refs.items() if n not in step.needs] if step.uses == "deploy" else []
        refs[name] = execute_step.options(name=f"step:{name}").remote(job, board, *(refs[n] for n in step.needs), *after)

    outcomes: dict[str, StepOutcome] = {}
    pending = list(refs.values())
    names = {ref: name for name, ref in refs.items()}
    evaluations = {n for n, s in resolved.spec.steps.items() if s.uses == "evaluate"}
    published = False
    status = "FINISHED"
    try:
        while pending:
            if evaluations and not published and evaluations <= outcomes.keys():
                # The report while a deploy step (which waits for every other step) starts the endpoint.
                _publish(resolved, outcomes, uri, parent)
                published = True
            ready, pending = ray.wait(pending, num_returns=1, timeout=0.5)
            rows = ray.get(board.snapshot.remote())
            for ref in ready:
                name = names[ref]
                row = rows.get(name, {})
                seconds = row.get("ended", time.time()) - row["started"] if "started" in row else 0.0
                try:
                    artifact = ray.get(ref)
                    outcomes[name] = StepOutcome(name, row.get("phase", ""), "cached" if artifact.cached else "done", seconds, artifact)
                except ray.exceptions.RayError as e:
                    outcomes[name] = StepOutcome(name, row.get("phase", ""), "failed", seconds, error=_cause(e))
                    ray.get(board.update.remote(name, {"state": "failed", "headline": outcomes[name].error[:80]}))
                    status = "FAILED"
            if display is not None:
                display.update(ray.get(board.snapshot.remote()))
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        _record(resolved, outcomes, uri, parent)
        if not published:
            _publish(resolved, outcomes, uri, parent)
        tracking.end_run(uri, parent, status)
        if started_ray and not keep_ray:
            ray.shutdown()
    return parent, [outcomes[n] for n in resolved.order]


def _cached(resolved: Resolved, keys: dict[str, str], uri: str) -> dict[str, Artifact]:
    """The artifact of every step whose cache key has a finished run and whose output still exists."""
    found = {}
    for name, step in resolved.spec.steps.items():
        artifact = tracking.find_cached(uri, keys[name]) if PHASES[step.uses].cache else None
        if artifact is not None:
            found[name] = dataclasses.replace(artifact, cached=True)
    return found


def _record(resolved: Resolved, outcomes: dict[str, StepOutcome], uri: str, parent: str) -> None:
    """Tag the workflow's run with each finished step's state and run (a cached step's is an earlier run's)."""
    summary = {n: _summary(outcomes[n]) for n in resolved.order if n in outcomes}
    tracking.set_tags(uri, parent, {"lifecycle.summary": json.dumps(summary)})


def _publish(resolved: Resolved, outcomes: dict[str, StepOutcome], uri: str, parent: str) -> None:
    """Log the comparison report of every evaluated checkpoint on the workflow's run, if any was."""
    if any(o.phase == "evaluate" and o.artifact for o in outcomes.values()):
        from components.evaluate.report import publish

        _record(resolved, outcomes, uri, parent)  # the report finds the evaluate steps' runs, cached ones too, here
        publish(uri, parent)


def _deploys_last(resolved: Resolved) -> list[str]:
    """Steps in a valid order with deploy steps (and what needs them) after all the others."""
    late: set[str] = set()
    for name in resolved.order:
        step = resolved.spec.steps[name]
        if step.uses == "deploy" or late.intersection(step.needs):
            late.add(name)
    return [n for n in resolved.order if n not in late] + [n for n in resolved.order if n in late]


def _summary(outcome: StepOutcome) -> dict[str, Any]:
    a = outcome.artifact
    return {"state": outcome.state, "seconds": round(outcome.seconds, 1), "run_id": a.run_id if a else None,
            "headline": a.headline if a else outcome.error}


def _cause(error: Exception) -> str:
    """The innermost message of a Ray error chain (a failed upstream step shows up here too)."""
    cause = getattr(error, "cause", None)
    while getattr(cause, "cause", None) is not None:
        cause = cause.cause
    text = str(cause or error).strip().splitlines()
    return text[-1] if text else type(error).__name__


def _git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except OSError:
        return None
