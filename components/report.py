"""Ray Train reporting shared by the training phases: each report to MLflow and the live table, and the loss plot."""

from __future__ import annotations

import ray.train

from components import tracking
from components.artifact import StepContext


class ReportToLineage(ray.train.UserCallback):
    """Runs on the Ray Train controller: every report goes to MLflow and the progress table."""

    def __init__(self, tracking_uri: str, run_id: str, progress, shown: tuple[str, ...] = ("step", "loss", "tokens_per_s")):
        self.tracking_uri, self.run_id, self.progress, self.shown = tracking_uri, run_id, progress, shown

    def after_report(self, run_context, metrics, checkpoint):
        first = dict(metrics[0])  # every worker reports the same all-reduced numbers
        tracking.log_metrics(self.tracking_uri, self.run_id, first, step=int(first.get("step", 0)))
        self.progress({k: first[k] for k in self.shown if k in first})


def plot_curves(ctx: StepContext, run_id: str | None = None, keys: tuple[str, ...] = ("loss", "val_loss"),
                ylabel: str = "token cross-entropy (nats)", artifact_file: str = "loss_curve.png") -> None:
    """Plot metric histories of a run (default: the step's) against step; logged as a PNG artifact."""
    from matplotlib.figure import Figure  # not pyplot: no global backend switch, nothing to close

    run_id = run_id or ctx.run_id
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    for key in keys:
        points = tracking.metric_history(ctx.tracking_uri, run_id, key)
        if points:
            ax.plot(*zip(*points), marker="o" if key.startswith("val") else None, label=key)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{ctx.step}: {', '.join(keys)}")
    ax.legend()
    fig.tight_layout()
    tracking.log_figure(ctx.tracking_uri, run_id, fig, artifact_file)
