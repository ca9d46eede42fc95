"""The Python API for notebooks and scripts: what `lifecycle` does, as functions that return data.

    from workflows import api as lc

    run = lc.run("tiny", "finetune.max_steps=300")   # progress lines as steps move; workdir .lifecycle
    run.steps                                   # DataFrame: step, phase, state, seconds, run_id, headline
    lc.history(".lifecycle", "pretrain")        # DataFrame: step, loss, val_loss
    lc.report(".lifecycle")                     # DataFrame: one row per evaluated checkpoint
    lc.lineage(".lifecycle", "models:/tiny-finetune@production")
    model, tokenizer = lc.load_model(".lifecycle", "finetune")
    lc.client(run.endpoint).completions.create(model="tiny", prompt="...")

These call the same engine, spec loader and tracking functions as the CLI; nothing here keeps
its own state. `workdir` is the folder `lifecycle run --workdir` uses (its `mlflow.db`), or any
folder when MLFLOW_TRACKING_URI names a tracking server. A step name means that step in the
newest workflow run of the workdir that has it (a cached step points at the run that made it).
"""

from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path
from typing import Any

import pandas as pd

from components import tracking
from components.artifact import Artifact
from workflows.engine import StepOutcome
from workflows.spec import Resolved, SpecError, load_spec

SHIPPED = Path(__file__).resolve().parent  # workflows/*.yaml


def load(spec: str | Path, *overrides: str) -> Resolved:
    """A validated spec: a path, or the name of a shipped one ("tiny", "lora-sweep", "smoke").

    overrides: "step.field=value" as on the command line, e.g. "finetune.max_steps=300".
    Raises SpecError naming the file, line or field on bad input.
    """
    path = Path(spec)
    if not path.exists() and (SHIPPED / f"{spec}.yaml").exists():
        path = SHIPPED / f"{spec}.yaml"
    return load_spec(path, list(overrides))


@dataclasses.dataclass
class Run:
    """A finished workflow run: its MLflow run id, workdir and one outcome per step."""

    run_id: str
    workdir: Path
    outcomes: list[StepOutcome]

    @property
    def ok(self) -> bool:
        return all(o.state != "failed" for o in self.outcomes)

    @property
    def steps(self) -> pd.DataFrame:
        """One row per step: step, phase, state (done | cached | failed), seconds, run_id, headline."""
        return pd.DataFrame([{"step": o.step, "phase": o.phase, "state": o.state, "seconds": round(o.seconds, 1),
                              "run_id": o.artifact.run_id if o.artifact else None,
                              "headline": o.artifact.headline if o.artifact else o.error} for o in self.outcomes])

    @property
    def endpoint(self) -> str | None:
        """Base URL (http://HOST:PORT/v1) of the OpenAI-compatible API the run deployed, if any."""
        return next((o.artifact.metrics["url"] for o in self.outcomes if o.phase == "deploy" and o.artifact), None)

    @property
    def served_model(self) -> str | None:
        """The model id clients ask the endpoint for."""
        return next((o.artifact.metrics["served_model"] for o in self.outcomes if o.phase == "deploy" and o.artifact), None)

    def artifact(self, step: str) -> Artifact:
        outcome = next((o for o in self.outcomes if o.step == step), None)
        if outcome is None or outcome.artifact is None:
            raise KeyError(f"step {step!r} has no output in run {self.run_id}")
        return outcome.artifact


def run(spec: str | Path | Resolved, *overrides: str, workdir: str | Path = ".lifecycle", address: str | None = None,
        storage: str | None = None, progress: bool = True) -> Run:
    """Run a workflow as `lifecycle run` does; steps already done with the same inputs are cache hits.

    address: a Ray cluster ("ray://..." or "HOST:PORT"); None starts a local Ray in this process
        and keeps it (and any endpoint the workflow deploys) up until `shutdown()`.
    storage: where artifacts go (a shared folder, s3://, gs://); default the workdir.
    progress: print a line per step state change and per logged metric.
    """
    from workflows import engine
    from workflows.progress import Display

    resolved = spec if isinstance(spec, Resolved) else load(spec, *overrides)
    with Display(log=Path(workdir) / "lifecycle.log") if progress else contextlib.nullcontext() as display:
        run_id, outcomes = engine.run(resolved, Path(workdir), address, display, keep_ray=True, storage_root=storage)
    result = Run(run_id, Path(workdir), outcomes)
    for o in outcomes:
        if o.state == "failed":
            print(f"step {o.step} failed: {o.error}")
    return result


def shutdown() -> None:
    """Disconnect from Ray: a local Ray this process started stops, its endpoint with it; a cluster's keeps running."""
    import ray

    if ray.is_initialized():
        ray.shutdown()


# --- reading a workdir -------------------------------------------------------------------------


def _uri(workdir: str | Path) -> str:
    try:
        return tracking.existing_uri(Path(workdir))
    except ValueError as e:
        raise SpecError(str(e)) from None


def runs(workdir: str | Path = ".lifecycle", limit: int = 10) -> pd.DataFrame:
    """Recent workflow runs, newest first: workflow, run_id, status, start time, steps (done/cached/failed counts)."""
    rows = []
    for r in tracking.recent_workflows(_uri(workdir), limit):
        states = [s["state"] for s in r["steps"]]
        rows.append({"workflow": r["workflow"], "run_id": r["run_id"], "status": r["status"],
                     "started": pd.Timestamp(r["start_time"], unit="ms"),
                     **{state: states.count(state) for state in ("done", "cached", "failed")}})
    return pd.DataFrame(rows)


def steps(workdir: str | Path = ".lifecycle", run_id: str | None = None) -> pd.DataFrame:
    """The steps of a workflow run (default: the newest): step, state, seconds, run_id, headline."""
    found = _workflow(workdir, run_id)
    return pd.DataFrame(found["steps"])


def _workflow(workdir, run_id: str | None) -> dict[str, Any]:
    recent = tracking.recent_workflows(_uri(workdir), 50)
    found = next((r for r in recent if run_id in (None, r["run_id"])), None)
    if found is None:
        raise LookupError(f"{workdir}: no workflow run {run_id or ''}".strip())
    return found


def step_run_id(workdir: str | Path, step: str) -> str:
    """MLflow run id of `step` in the newest workflow run that has it."""
    for r in tracking.recent_workflows(_uri(workdir), 50):
        for s in r["steps"]:
            if s["step"] == step and s.get("run_id"):
                return s["run_id"]
    raise LookupError(f"{workdir}: no run of a step named {step!r}")


def metrics(workdir: str | Path, step: str) -> dict[str, float]:
    """The latest value of every metric `step` logged."""
    return tracking.run_metrics(_uri(workdir), step_run_id(workdir, step))


def history(workdir: str | Path, step: str, keys: tuple[str, ...] = ("loss", "val_loss")) -> pd.DataFrame:
    """Metric curves of a step: one row per logged step, one column per key (NaN where not logged)."""
    uri, run_id = _uri(workdir), step_run_id(workdir, step)
    frames = [pd.DataFrame(tracking.metric_history(uri, run_id, k), columns=["step", k]).set_index("step") for k in keys]
    return pd.concat(frames, axis=1).sort_index()


def report(workdir: str | Path = ".lifecycle", run_id: str | None = None) -> pd.DataFrame:
    """The evaluation report of a workflow run (default: the newest that evaluated something): one row
    per evaluate step, indexed by the checkpoint it scored, one column per metric."""
    uri = _uri(workdir)
    candidates = [_workflow(workdir, run_id)] if run_id else tracking.recent_workflows(uri, 50)
    rows = next((found for r in candidates if (found := tracking.evaluations(uri, r["run_id"]))), [])
    if not rows:
        raise LookupError(f"{workdir}: no evaluated checkpoints in {run_id or 'any recent workflow run'}")
    return pd.DataFrame([{"model": r["model"], "evaluation": r["step"], **r["metrics"]} for r in rows]).set_index("model")


def lineage(workdir: str | Path, ref: str) -> pd.DataFrame:
    """From a run id, a step name or ``models:/NAME/VERSION`` (or ``@ALIAS``) back to the datasets:
    one row per step run (the given one first): step, phase, run_id, model, datasets, inputs."""
    uri = _uri(workdir)
    if not ref.startswith("models:/") and not _looks_like_run_id(ref):
        ref = step_run_id(workdir, ref)
    chain = tracking.lineage(uri, ref)
    return pd.DataFrame([{"step": n["step"], "phase": n["phase"], "run_id": n["run_id"], "model": n["model"],
                          "datasets": ", ".join(f"{d['name']} ({d['digest'][:8]})" for d in n["datasets"]),
                          "inputs": n["inputs"]} for n in chain])


def _looks_like_run_id(ref: str) -> bool:
    return len(ref) == 32 and all(c in "0123456789abcdef" for c in ref)


def artifact(workdir: str | Path, step: str) -> Artifact:
    """The output of `step` (its files at `.path`, headline numbers in `.metrics`)."""
    return tracking.step_artifact(_uri(workdir), step_run_id(workdir, step))


def sweep_results(workdir: str | Path, step: str = "sweep") -> pd.DataFrame:
    """A sweep step's trials: r, alpha, lr, trainable_params, val_loss, steps, wall_s, stopped_early."""
    results = tracking.load_dict(_uri(workdir), step_run_id(workdir, step), "sweep/results.json")
    return pd.DataFrame(results["trials"]).sort_values("r").reset_index(drop=True)


def load_model(workdir: str | Path, ref: str):
    """(model, tokenizer) from a step name or a registered ``models:/...`` reference, as `transformers` objects.

    An int8-quantized model comes back as the module quantization made; every other as a
    plain Hugging Face model (safetensors only).
    """
    from transformers import AutoTokenizer

    from components.core.models import load_trained
    from components.storage import localize

    if ref.startswith("models:/"):
        folder = localize(tracking.resolve_model(_uri(workdir), ref)["source"])
    else:
        folder = artifact(workdir, ref).path
    return load_trained(folder), AutoTokenizer.from_pretrained(folder)


def promote(workdir: str | Path, model: str, version: str | int, alias: str = "production") -> None:
    """Point `alias` of the registered model at `version` (what `lifecycle serve models:/NAME@ALIAS` serves)."""
    tracking.set_model_alias(_uri(workdir), model, alias, str(version))


def serve(model: str, workdir: str | Path = ".lifecycle", address: str | None = None, **settings: Any) -> str:
    """Deploy a registered model (and every LoRA adapter beside it) as `lifecycle serve` does; returns
    the API's base URL. settings: deploy fields, e.g. port=8001, max_batch_size=16."""
    from components.deploy import registry
    from components.deploy.step import start
    from workflows.engine import start_ray

    cfg, found, adapters = registry.prepare(model, settings, Path(workdir), who="api.serve")
    start_ray(address)
    return start(cfg, found, adapters)


def client(url: str, api_key: str | None = None):
    """The official OpenAI client for an endpoint URL (…/v1); api_key when LIFECYCLE_API_KEY is set on it."""
    import openai

    return openai.OpenAI(base_url=url, api_key=api_key or "unused", max_retries=0, timeout=120)


def models(url: str, api_key: str | None = None) -> pd.DataFrame:
    """What an endpoint serves: id, plus the registered name, version and run of each model."""
    return pd.DataFrame([{"id": m.id, **((m.model_extra or {}).get("metadata") or {})} for m in client(url, api_key).models.list().data])

