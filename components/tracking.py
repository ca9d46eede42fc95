"""Lineage in MLflow. The ONLY module of the project that imports mlflow.

One parent run per workflow execution, one nested run per step. Step runs carry the
tags below, so any model can be walked back to the data it came from:

    lifecycle.step        the step's name in the spec
    lifecycle.phase       the phase it uses (data, tokenizer, pretrain, ...)
    lifecycle.cache_key   hash(phase, config, upstream keys, code version)
    lifecycle.inputs      comma-separated run ids of the upstream steps
    lifecycle.spec_sha    sha256 of the resolved spec
    lifecycle.artifact    JSON of the step's Artifact, written when it finishes

Every call takes the tracking URI explicitly: steps run in other Ray processes and
must not depend on a global set somewhere else.
"""

from __future__ import annotations

import functools
import json
import os
import random
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

from components import storage
from components.artifact import Artifact

EXPERIMENT = "lifecycle"
TAG = "lifecycle."


def tracking_uri_for(workdir: Path) -> str:
    """``MLFLOW_TRACKING_URI`` when set (a server on a cluster), else a SQLite file in workdir."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(workdir).resolve()}/mlflow.db"


def existing_uri(workdir: Path) -> str:
    """`tracking_uri_for`, for reading: raises ValueError when there is no server and no mlflow.db,
    rather than letting MLflow create an empty database and answer "no such run"."""
    if not os.environ.get("MLFLOW_TRACKING_URI") and not (Path(workdir) / "mlflow.db").exists():
        raise ValueError(f"{workdir}: no lifecycle runs here (no mlflow.db); pass --workdir or set MLFLOW_TRACKING_URI")
    return tracking_uri_for(workdir)


LOCKED_TRIES = 8  # attempts of one call while SQLite answers "database is locked": about a minute of backoff in all


def _while_locked(fn, *args, **kwargs):
    """`fn(*args, **kwargs)`, tried again after a randomised backoff while the SQLite file answers
    "database is locked".

    MLflow's SQLite store waits up to 20 s for the file's lock in its sessions (busy_timeout), yet
    under load its calls still fail with it: opening the store reads the table list before any such
    session (the driver's default wait, 5 s), a transaction that read first and must then write is
    refused at once while another connection writes (SQLite's deadlock rule), and on 2 cores with
    thirty processes logging to one file (a workflow of twenty steps) a lock can be held for longer.
    Seen in CI: a step failed before its run was created, and a Ray Train controller failed opening
    the store to log a report. Retrying is safe: the refused transaction rolled back.
    """
    for attempt in range(LOCKED_TRIES):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            if "database is locked" not in str(e) or attempt == LOCKED_TRIES - 1:
                raise
            time.sleep(min(0.25 * 2**attempt, 16) * (0.5 + random.random()))


class _RetryWhileLocked:
    """An MlflowClient whose every call goes through `_while_locked`."""

    def __init__(self, client):
        self._client = client

    def __getattr__(self, name: str):
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr
        return functools.wraps(attr)(functools.partial(_while_locked, attr))


@lru_cache(maxsize=8)
def _client(uri: str):
    import logging

    # alembic prints every schema migration of a new SQLite store at INFO.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    from mlflow import MlflowClient

    if not uri.startswith("sqlite:///"):
        return MlflowClient(tracking_uri=uri, registry_uri=uri)
    # One process at a time opens the SQLite file: MLflow creates and migrates a new database's tables
    # from whichever process gets there first, and two at once collide ("table ... already exists"),
    # as a `lifecycle run` and a `lifecycle status` started together on a new workdir would.
    import fcntl

    db = Path(uri.removeprefix("sqlite:///"))
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        client = _RetryWhileLocked(_while_locked(MlflowClient, tracking_uri=uri, registry_uri=uri))
        client.search_experiments(max_results=1)  # the tracking store: creates the tables if missing
        client.search_registered_models(max_results=1)  # the registry store, on the same file
    return client


def client(uri: str):
    """The process's `MlflowClient` for `uri` (a new SQLite database gets its tables once, under a file lock)."""
    return _client(uri)


def experiment_id(uri: str, workdir: Path | None = None) -> str:
    """Get or create the ``lifecycle`` experiment; local artifacts go under workdir/mlartifacts."""
    client = _client(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is not None:
        return exp.experiment_id
    location = None
    if workdir is not None and uri.startswith("sqlite:"):
        location = (Path(workdir).resolve() / "mlartifacts").as_uri()
    try:
        return client.create_experiment(EXPERIMENT, artifact_location=location)
    except Exception:  # created concurrently by another process
        return client.get_experiment_by_name(EXPERIMENT).experiment_id


def start_workflow_run(uri: str, workdir: Path, name: str, spec_sha: str, spec: dict, git_commit: str | None) -> str:
    """Open the parent run of one workflow execution; returns its run id."""
    client = _client(uri)
    tags = {"mlflow.runName": name, TAG + "kind": "workflow", TAG + "spec_sha": spec_sha, TAG + "workflow": name}
    if git_commit:
        tags["mlflow.source.git.commit"] = git_commit
    run = client.create_run(experiment_id(uri, workdir), tags=tags)
    client.log_dict(run.info.run_id, spec, "spec.json")
    return run.info.run_id


def start_step_run(
    uri: str,
    parent_run_id: str,
    step: str,
    phase: str,
    cache_key: str,
    inputs: list[str],
    spec_sha: str,
    config: dict[str, Any],
) -> str:
    """Open a step's run nested under the workflow run; logs its config as params."""
    client = _client(uri)
    parent = client.get_run(parent_run_id)
    tags = {
        "mlflow.runName": step,
        "mlflow.parentRunId": parent_run_id,
        TAG + "kind": "step",
        TAG + "step": step,
        TAG + "phase": phase,
        TAG + "cache_key": cache_key,
        TAG + "inputs": ",".join(inputs),
        TAG + "spec_sha": spec_sha,
    }
    commit = parent.data.tags.get("mlflow.source.git.commit")
    if commit:
        tags["mlflow.source.git.commit"] = commit
    run = client.create_run(parent.info.experiment_id, tags=tags)
    flat = _flatten(config)
    # MLflow caps a param value at 6000 chars; configs are small, but be safe.
    client.log_batch(run.info.run_id, params=[_param(k, v) for k, v in flat.items()])
    client.log_dict(run.info.run_id, config, "config.json")
    return run.info.run_id


def log_metrics(uri: str, run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
    """Log numeric metrics (non-numbers are skipped) at an optional step index."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if _is_number(v)]
    if batch:
        _client(uri).log_batch(run_id, metrics=batch)


def log_metric_history(uri: str, run_id: str, history: list[dict[str, float]], step_key: str = "step") -> None:
    """Log a list of metric dicts (e.g. a loss curve), each at its own ``step_key``."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [
        Metric(k, float(v), now, int(row.get(step_key, i)))
        for i, row in enumerate(history)
        for k, v in row.items()
        if k != step_key and _is_number(v)
    ]
    for i in range(0, len(batch), 1000):  # MLflow's log_batch limit
        _client(uri).log_batch(run_id, metrics=batch[i : i + 1000])


def log_dataset(uri: str, run_id: str, name: str, digest: str, source: str, context: str, profile: dict) -> None:
    """Record a dataset as an MLflow dataset input of the run (name, digest, source URI)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    dataset = Dataset(
        name=name,
        digest=digest,
        source_type="local" if "://" not in source or source.startswith("file://") else source.split("://")[0],
        source=json.dumps({"uri": source}),
        profile=json.dumps(profile),
    )
    tags = [InputTag("mlflow.data.context", context)]
    _client(uri).log_inputs(run_id, datasets=[DatasetInput(dataset, tags=tags)])


def log_figure(uri: str, run_id: str, figure, artifact_file: str) -> None:
    """Save a matplotlib figure as a PNG artifact of the run."""
    _client(uri).log_figure(run_id, figure, artifact_file)


def log_dict(uri: str, run_id: str, obj: Any, artifact_file: str) -> None:
    _client(uri).log_dict(run_id, obj, artifact_file)


def log_text(uri: str, run_id: str, text: str, artifact_file: str) -> None:
    _client(uri).log_text(run_id, text, artifact_file)


def register_model(uri: str, run_id: str, name: str, source: str) -> str:
    """Register ``source`` (a model directory URI) as a new version of ``name``; returns the version."""
    client = _client(uri)
    try:
        client.create_registered_model(name, description="Registered by llm-lifecycle.")
    except Exception:  # already registered: a new version follows
        pass
    version = client.create_model_version(name, source=source, run_id=run_id)
    client.set_tag(run_id, TAG + "registered_model", f"models:/{name}/{version.version}")
    return str(version.version)


def finish_step(uri: str, run_id: str, artifact: Artifact) -> None:
    """Mark the step's run FINISHED and store its Artifact (what a cache hit reuses)."""
    client = _client(uri)
    client.set_tag(run_id, TAG + "artifact", artifact.to_json())
    client.set_terminated(run_id, "FINISHED")


def end_run(uri: str, run_id: str, status: str = "FINISHED") -> None:
    _client(uri).set_terminated(run_id, status)


def set_tags(uri: str, run_id: str, tags: dict[str, str]) -> None:
    for key, value in tags.items():
        _client(uri).set_tag(run_id, key, value)


def trial_run(uri: str, parent_run_id: str, sweep_key: str, trial_id: str, params: dict[str, Any]) -> str:
    """The child run of one sweep trial, nested under the step run; reused (and re-parented) on resume."""
    client = _client(uri)
    parent = client.get_run(parent_run_id)
    found = client.search_runs(
        [parent.info.experiment_id], f"tags.`{TAG}sweep` = '{sweep_key}' and tags.`{TAG}trial` = '{trial_id}'"
    )
    if found:
        run_id = found[0].info.run_id
        client.set_tag(run_id, "mlflow.parentRunId", parent_run_id)
        return run_id
    tags = {"mlflow.runName": f"trial-{trial_id}", "mlflow.parentRunId": parent_run_id, TAG + "kind": "trial",
            TAG + "sweep": sweep_key, TAG + "trial": trial_id}
    run_id = client.create_run(parent.info.experiment_id, tags=tags).info.run_id
    client.log_batch(run_id, params=[_param(k, v) for k, v in params.items()])
    return run_id


def find_cached(uri: str, cache_key: str) -> Artifact | None:
    """The Artifact of a FINISHED run with this cache key whose output still exists, else None."""
    client = _client(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        return None
    runs = client.search_runs(
        [exp.experiment_id],
        f"tags.`{TAG}cache_key` = '{cache_key}' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time DESC"],
    )
    for run in runs:
        text = run.data.tags.get(TAG + "artifact")
        if text and storage.exists(Artifact.from_json(text).uri):
            return Artifact.from_json(text)
    return None


def step_artifact(uri: str, run_id: str) -> Artifact:
    """The Artifact a finished step run recorded."""
    text = _client(uri).get_run(run_id).data.tags.get(TAG + "artifact")
    if not text:
        raise LookupError(f"run {run_id} recorded no output (not finished, or not a step)")
    return Artifact.from_json(text)


def load_dict(uri: str, run_id: str, artifact_file: str) -> Any:
    """A JSON artifact of a run (as `log_dict` wrote it)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        return json.loads(Path(_client(uri).download_artifacts(run_id, artifact_file, tmp)).read_text())


def close_stale_runs(uri: str, cache_key: str) -> int:
    """Mark RUNNING step runs with this key KILLED: their driver died. Returns how many."""
    client = _client(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        return 0
    runs = client.search_runs([exp.experiment_id], f"tags.`{TAG}cache_key` = '{cache_key}' and attributes.status = 'RUNNING'")
    for run in runs:
        client.set_terminated(run.info.run_id, "KILLED")
    return len(runs)


def lineage(uri: str, ref: str) -> list[dict[str, Any]]:
    """Walk from a run id or ``models:/NAME/VERSION`` back through every upstream step.

    Returns one dict per step run, the given one first, then its inputs depth-first:
    step, phase, run_id, status, cache_key, inputs, params, metrics, datasets, model, checkpoint.
    """
    client = _client(uri)
    run_id = ref
    if ref.startswith("models:/"):
        name, _, version = ref.removeprefix("models:/").partition("/")
        if version.startswith("@") or not version and "@" not in name:  # models:/NAME/@ALIAS, models:/NAME
            run_id = client.get_model_version_by_alias(name, version.lstrip("@") or "serving").run_id
        else:  # models:/NAME/VERSION or MLflow's own models:/NAME@ALIAS
            run_id = resolve_model(uri, ref)["run_id"]
    chain, seen, todo = [], set(), [run_id]
    while todo:
        rid = todo.pop(0)
        if rid in seen or not rid:
            continue
        seen.add(rid)
        run = client.get_run(rid)
        tags = run.data.tags
        inputs = [r for r in tags.get(TAG + "inputs", "").split(",") if r]
        chain.append(
            {
                "step": tags.get(TAG + "step", run.info.run_name),
                "phase": tags.get(TAG + "phase", ""),
                "run_id": rid,
                "status": run.info.status,
                "cache_key": tags.get(TAG + "cache_key", ""),
                "inputs": inputs,
                "model": tags.get(TAG + "registered_model", ""),
                # A base step's source (revision pinned) and the digest of its weight files' digests.
                "checkpoint": " ".join(filter(None, [tags.get(TAG + "base_source"), tags.get(TAG + "base_weights", "")[:16]])),
                "params": dict(run.data.params),
                "metrics": dict(run.data.metrics),
                "datasets": [
                    {"name": d.dataset.name, "digest": d.dataset.digest, "source": json.loads(d.dataset.source).get("uri")}
                    for d in run.inputs.dataset_inputs
                ],
            }
        )
        todo.extend(inputs)
    return chain


def recent_workflows(uri: str, limit: int = 10) -> list[dict[str, Any]]:
    """The latest workflow runs, newest first, each with its steps (cached ones point at the run reused)."""
    client = _client(uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is None:
        return []
    parents = client.search_runs(
        [exp.experiment_id], f"tags.`{TAG}kind` = 'workflow'", order_by=["attributes.start_time DESC"], max_results=limit
    )
    out = []
    for parent in parents:
        summary = parent.data.tags.get(TAG + "summary")
        if summary:
            steps = [{"step": name, **row} for name, row in json.loads(summary).items()]
        else:  # still running, or its driver was killed: read the step runs themselves
            children = client.search_runs(
                [exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'", order_by=["attributes.start_time ASC"]
            )
            steps = [
                {"step": c.data.tags.get(TAG + "step", c.info.run_name), "state": c.info.status.lower(),
                 "run_id": c.info.run_id, "headline": _headline(c.data.tags.get(TAG + "artifact"))}
                for c in children
            ]
        out.append({
            "workflow": parent.data.tags.get(TAG + "workflow", parent.info.run_name),
            "run_id": parent.info.run_id,
            "status": parent.info.status,
            "start_time": parent.info.start_time,
            "steps": steps,
        })
    return out


def _headline(artifact_json: str | None) -> str:
    return Artifact.from_json(artifact_json).headline if artifact_json else ""


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _param(key: str, value: Any):
    from mlflow.entities import Param

    return Param(key, str(value)[:6000])


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v  # drop NaN


def metric_history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) pairs of one metric, in step order."""
    return sorted((m.step, m.value) for m in _client(uri).get_metric_history(run_id, key))


def run_metrics(uri: str, run_id: str) -> dict[str, float]:
    """The latest value of every metric of a run."""
    return dict(_client(uri).get_run(run_id).data.metrics)


def model_version_by_alias(uri: str, name: str, alias: str) -> dict[str, Any] | None:
    """{version, run_id, evaluation_run} of the version of `name` holding `alias`, or None."""
    client = _client(uri)
    try:
        mv = client.get_model_version_by_alias(name, alias)
    except Exception:  # no such model or alias: nothing deployed yet
        return None
    return {"version": str(mv.version), "run_id": mv.run_id, "evaluation_run": mv.tags.get(TAG + "evaluation_run")}


def set_model_alias(uri: str, name: str, alias: str, version: str) -> None:
    """Point `alias` (e.g. production) at a version of a registered model."""
    _client(uri).set_registered_model_alias(name, alias, version)


def tag_model_version(uri: str, name: str, version: str, tags: dict[str, str]) -> None:
    for key, value in tags.items():
        _client(uri).set_model_version_tag(name, version, key, value)


def evaluations(uri: str, workflow_run_id: str) -> list[dict[str, Any]]:
    """One row per evaluate step of a workflow run, in run order: step, model (the step it scored), metrics.

    Cached evaluate steps count too: the workflow's summary names the run each step used.
    """
    client = _client(uri)
    parent = client.get_run(workflow_run_id)
    summary = json.loads(parent.data.tags.get(TAG + "summary", "{}"))
    if not summary:  # still running or killed: its own step runs
        exp = parent.info.experiment_id
        children = client.search_runs([exp], f"tags.mlflow.parentRunId = '{workflow_run_id}'", order_by=["attributes.start_time ASC"])
        summary = {c.data.tags.get(TAG + "step", c.info.run_name): {"run_id": c.info.run_id} for c in children}
    rows = []
    for step, row in summary.items():
        if not row.get("run_id"):
            continue
        run = client.get_run(row["run_id"])
        if run.data.tags.get(TAG + "phase") != "evaluate" or run.info.status != "FINISHED":
            continue
        rows.append({"step": step, "model": run.data.tags.get(TAG + "evaluated", step), "run_id": row["run_id"],
                     "metrics": dict(run.data.metrics)})
    return rows


def resolve_model(uri: str, ref: str) -> dict[str, str]:
    """{name, version, source, run_id} of ``models:/NAME/VERSION``, ``models:/NAME@ALIAS`` or ``NAME`` (latest)."""
    client = _client(uri)
    ref = ref.removeprefix("models:/")
    if "@" in ref:
        name, _, alias = ref.partition("@")
        mv = client.get_model_version_by_alias(name.rstrip("/"), alias)
    elif "/" in ref:
        name, _, version = ref.partition("/")
        mv = client.get_model_version(name, version)
    else:
        versions = client.search_model_versions(f"name = '{ref}'")
        if not versions:
            raise LookupError(f"no registered model named {ref!r}")
        mv = max(versions, key=lambda v: int(v.version))
    return {"name": mv.name, "version": str(mv.version), "source": mv.source, "run_id": mv.run_id or ""}
