"""Ray wiring of the pretrain phase: tokenize, run the Ray Train job, export, plot."""

from __future__ import annotations

import json
import shutil

import numpy as np
from transformers import AutoTokenizer

from components import tracking, training
from components.artifact import Artifact, StepContext
from components.data.corpus import read_jsonl
from components.data.tokenizer import tokenize_and_pack
from components.pretrain.config import PretrainConfig
from components.pretrain.loop import ACCURACY, train_loop
from components.report import plot_curves


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

    # The run's name depends only on the cache key: a re-run after a killed driver finds the same
    # storage and Ray Train resumes from its latest checkpoint.
    loop_config = {"cfg": cfg.model_dump(), "train_blocks": train_blocks, "val_blocks": val_blocks, "tokenizer_dir": tokenizer_artifact.uri}
    export = training.fit(train_loop, loop_config, ctx, cfg.max_failures, ("step", "loss", "tokens_per_s"))
    shutil.copytree(export / "model", ctx.output_dir, dirs_exist_ok=True)
    final = json.loads((export / "progress.json").read_text())["final_metrics"]  # what the loop reported last
    shutil.rmtree(export)
    metrics = {k: float(v) for k, v in final.items() if isinstance(v, (int, float))}
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
