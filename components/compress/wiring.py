"""Ray and MLflow wiring that both compression paths share: the causal and seq2seq models' (step.py)
and the encoder classifiers' (encoder.py)."""

from __future__ import annotations

import ray
import torch

from components import tracking
from components.artifact import Artifact, StepContext


def on_a_cpu(ctx: StepContext, fn, *args):
    """fn(*args) in a Ray task holding the step's CPUs (torch limited to them): the step's own task
    reserves none, and timing or generating beside other steps' training workers would measure,
    and slow, them all."""
    threads = max(1, int(ctx.cpus_per_worker))

    def call(*args):
        torch.set_num_threads(threads)
        return fn(*args)

    return ray.get(ray.remote(call).options(num_cpus=ctx.cpus_per_worker, num_gpus=0).remote(*args))


def compressed_model(ctx: StepContext, source_step: str, source: Artifact, metrics: dict[str, float], headline: str) -> Artifact:
    """The step's output, the compressed model in ctx.output_dir: its metrics logged, and the step's run
    tagged with the source step and run it was compressed from."""
    tracking.set_tags(ctx.tracking_uri, ctx.run_id, {"lifecycle.compressed_from": source_step, "lifecycle.compressed_from_run": source.run_id})
    tracking.log_metrics(ctx.tracking_uri, ctx.run_id, metrics)
    return Artifact(str(ctx.output_dir), "model", ctx.run_id, ctx.cache_key, metrics, headline)
