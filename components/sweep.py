"""Ray Tune sweep over LoRA rank (and alpha, learning rate): each trial is a distributed Ray Train run.

Used by finetune (trials ranked by validation loss) and classify (by held-out validation accuracy).

Tune runs one small driver function per trial; it starts a TorchTrainer whose reports reach
Tune (for ASHA) and the trial's own MLflow child run. The sweep's storage name depends only
on the step's cache key, so a re-run after an interruption restores it (`Tuner.restore`) and
finished trials are not run again.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from components import storage, tracking, training
from components.artifact import StepContext
from components.report import ReportToLineage


class EvaluationsToTune(TuneReportCallback):
    """Forward only reports with the sweep's metric (a validation score): they are the rungs ASHA compares trials at."""

    def __init__(self, metric: str):
        super().__init__()
        self.metric = metric

    def after_report(self, run_context, metrics, checkpoint):
        if self.metric in metrics[0]:
            super().after_report(run_context, metrics, checkpoint)


def _trial(config: dict, cfg, loop, loop_config: dict, ctx: StepContext, sweep_name: str, metric: str) -> None:
    """One trial: fine-tune with this rank / alpha / lr as a Ray Train run of `loop`, logged to its MLflow child run."""
    lora = cfg.lora.model_copy(update={"r": config["r"], "alpha": config["alpha_per_rank"] * config["r"]})
    trial_cfg = cfg.model_copy(update={"lora": lora, "lr": config["lr"], "sweep": None})
    trial_id = tune.get_context().get_trial_id()
    params = {"r": lora.r, "alpha": lora.alpha, "lr": trial_cfg.lr, "trial_id": trial_id}
    run_id = tracking.trial_run(ctx.tracking_uri, ctx.run_id, sweep_name, trial_id, params)
    progress = lambda metrics: ctx.progress({"trial": f"r={lora.r}", **metrics})  # noqa: E731
    callbacks = [ReportToLineage(ctx.tracking_uri, run_id, progress, ("step", "loss", metric)), EvaluationsToTune(metric)]
    training.trainer(loop, {**loop_config, "cfg": trial_cfg.model_dump()}, ctx, f"{sweep_name}-{trial_id}",
                     trial_cfg.max_failures, callbacks).fit()


def run_sweep(cfg, loop, loop_config: dict, ctx: StepContext, metric: str = "val_loss",
              mode: str = "min") -> tuple[Path, dict]:
    """Run (or resume) the sweep; returns a local copy of the best trial's export and its numbers.

    cfg: the step's config (finetune's, or any with `lora`, `lr`, `max_steps`, `eval_every`, `max_failures`, `sweep`);
    loop / loop_config: the phase's Ray Train loop and its config, each trial's run with `cfg` in it as the trial's;
    metric / mode: the reported validation score trials are ranked by, and its sense.
    """
    sweep = cfg.sweep
    name = f"{ctx.step}-sweep-{ctx.cache_key[:16]}"
    path = storage.join(ctx.storage_path, name)
    space = {
        "r": tune.grid_search(sweep.ranks),
        "alpha_per_rank": tune.grid_search(sweep.alpha_per_rank),
        "lr": tune.grid_search(sweep.lrs or [cfg.lr]),
    }
    if sweep.scheduler == "asha":
        scheduler = ASHAScheduler(time_attr="step", max_t=cfg.max_steps, grace_period=sweep.grace_period * cfg.eval_every,
                                  reduction_factor=sweep.reduction_factor)
    else:
        scheduler = FIFOScheduler()
    # The trial driver only waits on its trainer, so it reserves memory, not CPU: the Ray Train
    # workers hold the CPUs (Tune refuses an empty resource request).
    trainable = tune.with_resources(
        tune.with_parameters(_trial, cfg=cfg, loop=loop, loop_config=loop_config, ctx=dataclasses.replace(ctx),
                             sweep_name=name, metric=metric),
        {"cpu": 0, "memory": 256 * 1024**2},
    )
    if tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable, param_space=space,
            tune_config=tune.TuneConfig(metric=metric, mode=mode, scheduler=scheduler,
                                        max_concurrent_trials=sweep.max_concurrent_trials,
                                        reuse_actors=False),  # a stopped trial's actor must die, taking its Ray Train run along
            run_config=tune.RunConfig(name=name, storage_path=str(ctx.storage_path), verbose=0),
        )
    with ctx.timed("ray_tune"):
        grid = tuner.fit()

    rows = []
    for result in grid:
        m = result.metrics or {}
        trial_id = m.get("trial_id", "")
        cfg_r = result.config
        run_id = tracking.trial_run(ctx.tracking_uri, ctx.run_id, name, trial_id, {})
        row = {
            "r": cfg_r["r"], "alpha": cfg_r["alpha_per_rank"] * cfg_r["r"], "lr": cfg_r["lr"],
            "trainable_params": m.get("trainable_params", math.nan), metric: m.get(metric, math.nan),
            "steps": m.get("step", 0), "wall_s": m.get("time_total_s", math.nan),
            "stopped_early": m.get("step", 0) < cfg.max_steps, "checkpoint": m.get("checkpoint_path"), "run_id": run_id,
        }
        rows.append(row)
        tracking.log_metrics(ctx.tracking_uri, run_id, {"trainable_params": float(row["trainable_params"]), metric: float(row[metric]),
                                                        "steps": float(row["steps"]), "wall_s": float(row["wall_s"])})
        tracking.set_tags(ctx.tracking_uri, run_id, {"lifecycle.stopped_early": str(row["stopped_early"])})
        tracking.end_run(ctx.tracking_uri, run_id, "FINISHED" if result.error is None else "FAILED")
    finished = [r for r in rows if not r["stopped_early"] and r["checkpoint"]]
    if not finished:
        raise RuntimeError(f"sweep {name}: no trial ran to max_steps ({cfg.max_steps}); see the trials' runs")
    best = (min if mode == "min" else max)(finished, key=lambda r: r[metric])
    rows.sort(key=lambda r: (r["r"], r["alpha"], r["lr"]))
    summary = {
        "trials": len(rows), "trial_steps": sum(r["steps"] for r in rows),
        "trial_steps_without_early_stopping": len(rows) * cfg.max_steps, "r": best["r"], "alpha": best["alpha"],
        "lr": best["lr"], metric: best[metric],
    }
    _log_results(ctx, rows, best, summary, sweep.scheduler, metric)
    scheme = urlparse(ctx.storage_path).scheme

    def checkpoint_uri(path: str) -> str:  # Tune reports a path inside the storage's filesystem
        return f"{scheme}://{path}" if storage.is_remote(ctx.storage_path) else path

    local = Path(tempfile.mkdtemp(prefix="sweep-best-"))
    storage.download(checkpoint_uri(best["checkpoint"]), local)
    # Every finished trial's adapter travels with the output: the endpoint serves each one.
    for r in finished if (local / "adapter").exists() else ():  # a classifier's trials export merged models only
        storage.download(storage.join(checkpoint_uri(r["checkpoint"]), "adapter"), local / "trials" / trial_name(r) / "adapter")
    return local, summary


def trial_name(row: dict) -> str:
    """A trial's id in file and model names, e.g. r8-alpha16-lr0.01."""
    return f"r{row['r']}-alpha{row['alpha']:g}-lr{row['lr']:g}"


def results_table(rows: list[dict], best: dict, metric: str = "val_loss") -> str:
    """The sweep as a Markdown table, best trial marked."""
    lines = [f"| rank | alpha | lr | trainable params | {metric.replace('_', ' ')} | steps | wall s | |",
             "|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        mark = "best" if r is best else ("stopped early" if r["stopped_early"] else "")
        lines.append(f"| {r['r']} | {r['alpha']:g} | {r['lr']:g} | {r['trainable_params']:,.0f} | {r[metric]:.4f} | "
                     f"{r['steps']} | {r['wall_s']:.0f} | {mark} |")
    return "\n".join(lines)


def _log_results(ctx: StepContext, rows: list[dict], best: dict, summary: dict, scheduler: str, metric: str) -> None:
    from matplotlib.figure import Figure  # deferred, matplotlib is heavy; not pyplot: no global backend switch, nothing to close

    table = results_table(rows, best, metric)
    label = metric.replace("_", " ")
    report = (f"## Sweep {ctx.step} ({scheduler}): best rank {best['r']}, {label} {best[metric]:.4f}\n\n{table}\n\n"
              f"trial-steps: {summary['trial_steps']} (without early stopping: {summary['trial_steps_without_early_stopping']})\n")
    (ctx.output_dir / "report.md").write_text(report)
    tracking.log_text(ctx.tracking_uri, ctx.run_id, report, "sweep/results.md")
    trials = [{k: v for k, v in r.items() if k != "checkpoint"} for r in rows]
    tracking.log_dict(ctx.tracking_uri, ctx.run_id, {"summary": summary, "trials": trials}, "sweep/results.json")

    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    for stopped, marker, how in ((False, "o", "ran to the end"), (True, "x", "stopped early (ASHA)")):
        pts = [r for r in rows if r["stopped_early"] == stopped]
        if pts:
            ax.scatter([r["r"] for r in pts], [r[metric] for r in pts], marker=marker, label=how)
    for r in rows:
        ax.annotate(f"{r['trainable_params']:,.0f} params", (r["r"], r[metric]), fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("LoRA rank")
    ax.set_ylabel(f"{label} at last evaluation" + (" (nats)" if metric == "val_loss" else ""))
    ax.set_title(f"{ctx.step}: sweep over LoRA rank")
    ax.legend(fontsize=8)
    fig.tight_layout()
    tracking.log_figure(ctx.tracking_uri, ctx.run_id, fig, f"sweep/{metric}_vs_rank.png")
