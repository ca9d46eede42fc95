"""Ray wiring of the pretrain phase: tokenize, run the Ray Train job, export, plot."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import ray.train
from ray.train.torch import TorchTrainer
from transformers import AutoTokenizer

from components import tracking
from components.artifact import Artifact, StepContext
from components.data.corpus import read_jsonl
from components.data.tokenizer import tokenize_and_pack
from components.pretrain.config import PretrainConfig
from components.pretrain.loop import ACCURACY, train_loop
from components.report import ReportToLineage, plot_curves


def run(cfg: PretrainConfig, inputs: dict[str, Artifact], ctx: StepContext) -> Artifact:
    """Pretrain a model of any family (causal, masked, seq2seq) on the dataset input with the tokenizer input."""
    dataset_step, dataset = next((name, a) for name, a in inputs.items() if a.kind == "dataset")
    tokenizer_artifact = next(a for a in inputs.values() if a.kind == "tokenizer")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_artifact.path)
    block = cfg.model.n_positions
    train_blocks = tokenize_and_pack(read_jsonl(dataset.path / "train.jsonl"), tokenizer, block)
    val_blocks = tokenize_and_pack(read_jsonl(dataset.path / "validation.jsonl"), tokenizer, block)
    if len(val_blocks) < ctx.workers or len(train_blocks) < ctx.workers:
        raise ValueError(f"{dataset.uri}: too little text for {ctx.workers} workers at {block}-token blocks")
    _log_inputs(ctx, dataset_step, dataset, train_blocks, val_blocks)

    trainer = TorchTrainer(
        train_loop,
        train_loop_config={
            "cfg": cfg.model_dump(),
            "train_blocks": train_blocks,
            "val_blocks": val_blocks,
            "tokenizer_dir": tokenizer_artifact.uri,
        },
        scaling_config=ray.train.ScalingConfig(
            num_workers=ctx.workers,
            use_gpu=ctx.gpus_per_worker > 0,
            resources_per_worker={"CPU": ctx.cpus_per_worker, **({"GPU": ctx.gpus_per_worker} if ctx.gpus_per_worker else {})},
        ),
        run_config=ray.train.RunConfig(
            # The name depends only on the cache key: a re-run after a killed driver finds
            # the same storage and Ray Train resumes from its latest checkpoint.
            name=f"{ctx.step}-{ctx.cache_key[:16]}",
            storage_path=str(ctx.storage_path),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=[ReportToLineage(ctx.tracking_uri, ctx.run_id, ctx.progress)],
        ),
    )
    result = trainer.fit()
    with result.checkpoint.as_directory() as directory:
        shutil.copytree(Path(directory) / "model", ctx.output_dir, dirs_exist_ok=True)
    metrics = {k: float(v) for k, v in result.metrics.items() if isinstance(v, (int, float))}
    plot_curves(ctx)
    if cfg.model.family == "causal":
        headline = f"ppl {metrics['ppl_initial']:.0f} -> {metrics['ppl_final']:.1f}"
    else:
        name = ACCURACY[cfg.model.family]
        headline = f"{name.replace('_', ' ')} {metrics[name + '_initial']:.1%} -> {metrics[name + '_final']:.1%}"
    keep = ("ppl_initial", "ppl_final", "ppl_ratio", *(f"{n}_{w}" for n in ACCURACY.values() for w in ("initial", "final")),
            "loss", "val_loss", "tokens_per_s")
    return Artifact(str(ctx.output_dir), "model", ctx.run_id, ctx.cache_key, {k: metrics[k] for k in keep if k in metrics}, headline)


def _log_inputs(ctx: StepContext, dataset_step: str, dataset: Artifact, train_blocks: np.ndarray, val_blocks: np.ndarray) -> None:
    """The same dataset names and digests as the data step logged, so lineage lines up."""
    for split, blocks in (("train", train_blocks), ("validation", val_blocks)):
        digest = dataset.metrics.get(f"digest_{split}")
        tracking.log_dataset(
            ctx.tracking_uri, ctx.run_id, f"{dataset_step}/{split}", str(digest or dataset.cache_key[:16]),
            dataset.uri, split, {"blocks": int(blocks.shape[0]), "block_size": int(blocks.shape[1]), "tokens": int(blocks.size)},
        )
    tracking.log_metrics(ctx.tracking_uri, ctx.run_id, {"train_tokens": float(train_blocks.size), "val_tokens": float(val_blocks.size)})
