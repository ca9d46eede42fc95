"""The per-worker pretraining loop: what each Ray Train worker runs, top to bottom.

Data arrives in the config as token blocks ([n_blocks, block_size] int32, from the
step); every worker reads its own stride of a seeded permutation, so a batch depends
only on the step number and resuming from a checkpoint replays nothing.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import ray.train
import torch
from transformers import AutoTokenizer

from components.core.models import build_model, sentinel_ids
from components.core.objectives import objective, token_accuracy
from components.core.parallel import wrap
from components.core.perplexity import perplexity
from components.pretrain.config import PretrainConfig
from components.storage import localize
from components.train_loop import Run, batch_rows, export_model, mean_over_workers, worker


def train_loop(config: dict) -> None:
    cfg = PretrainConfig.model_validate(config["cfg"])
    train_blocks: np.ndarray = config["train_blocks"]
    val_blocks: np.ndarray = config["val_blocks"]
    rank, world, device = worker()
    on_gpu = device.type == "cuda"
    bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and on_gpu)

    # 1. Model, built from config with a fixed seed: every worker starts identical; and the family's
    #    objective (next token, masked tokens or corrupted spans) that turns blocks into inputs.
    tokenizer = AutoTokenizer.from_pretrained(localize(config["tokenizer_dir"]))
    model = build_model(cfg.model, tokenizer, cfg.seed)
    family = cfg.model.family
    make_inputs = objective(family, tokenizer, sentinel_ids(tokenizer))
    if cfg.activation_checkpointing == "on" or (cfg.activation_checkpointing == "auto" and on_gpu):
        model.gradient_checkpointing_enable()
    val_stream = torch.from_numpy(val_blocks.reshape(-1).astype(np.int64))

    # 2. Resume, or score the untrained model (the baseline the trained one must beat).
    score_initial = None
    if ray.train.get_checkpoint() is None and rank == 0:
        score_initial = _score(model, family, val_stream, val_blocks, make_inputs, cfg)
    par = wrap(
        model, cfg.strategy, cfg.lr, cfg.weight_decay, cfg.grad_clip, cfg.warmup_steps, cfg.max_steps, device,
        zero_stage=cfg.zero_stage, cpu_offload=cfg.cpu_offload, bf16=bf16, micro_batch=cfg.micro_batch_size, grad_accum=cfg.grad_accum,
    )
    run = Run(cfg, par, rank, "tokens_per_s", cfg.micro_batch_size * cfg.grad_accum * train_blocks.shape[1] * world)
    run.progress["score_initial"] = score_initial
    if run.resume():
        return

    # 3. Train.
    for step in run.steps():
        for micro in range(cfg.grad_accum):
            index = step * cfg.grad_accum + micro
            # A rank's share shorter than the micro-batch gives a short batch (no repeated blocks).
            rows = batch_rows(len(train_blocks), index, cfg.micro_batch_size, rank, world, cfg.seed, wrap=False)
            blocks = torch.from_numpy(train_blocks[rows].astype(np.int64))
            # Masks depend only on (seed, micro-batch, rank): a resumed run draws the same ones.
            generator = torch.Generator().manual_seed(hash((cfg.seed, index, rank)) % 2**63)
            batch = {k: v.to(device) for k, v in make_inputs(blocks, generator).items()}
            with torch.autocast(device.type, torch.bfloat16, enabled=par.autocast):
                loss = par.model(**batch).loss
            par.backward(loss)
            run.add(loss=loss.item() / cfg.grad_accum)
        run.record(par.step())
        if not run.report_due():
            continue

        # 4. Report: loss, learning rate, throughput; validation loss; a checkpoint; at the end the
        #    export and the trained model's score.
        metrics = run.metrics()
        if run.eval_due():
            metrics["val_loss"] = _validation_loss(par.model, val_blocks, make_inputs, cfg.micro_batch_size, rank, world, device)
        export = None
        if run.last:
            final, export = _finish(par, tokenizer, cfg, run.progress, val_stream, val_blocks, rank)
            metrics.update(final)
        run.report(metrics, export)


@torch.no_grad()
def _validation_loss(model, blocks: np.ndarray, make_inputs, size: int, rank: int, world: int, device) -> float:
    """Mean token loss on the validation blocks, split evenly so every worker runs the same passes;
    the same masks at every evaluation (a fixed generator), so the curve compares like with like."""
    per_rank = len(blocks) // world
    mine = blocks[rank * per_rank : (rank + 1) * per_rank]
    total, count = 0.0, 0
    model.eval()
    generator = torch.Generator().manual_seed(rank)
    for start in range(0, per_rank, size):
        blocks = torch.from_numpy(mine[start : start + size].astype(np.int64))
        batch = {k: v.to(device) for k, v in make_inputs(blocks, generator).items()}
        total += model(**batch).loss.item() * len(blocks)
        count += len(blocks)
    model.train()
    return mean_over_workers(total / max(count, 1))


def _finish(par, tokenizer, cfg: PretrainConfig, progress: dict, val_stream: torch.Tensor, val_blocks: np.ndarray,
            rank: int) -> tuple[dict, Path | None]:
    """Gather the whole model (collective), export it on rank 0 in HF format, score it: (final metrics, export)."""
    model = build_model(cfg.model, tokenizer, cfg.seed) if rank == 0 else None
    export = export_model(par, rank, lambda: (model, tokenizer), "pretrain")  # the weights land in `model`
    if rank != 0:
        return {}, None
    family = cfg.model.family
    final = _score(model, family, val_stream, val_blocks, objective(family, tokenizer, sentinel_ids(tokenizer)), cfg)
    initial = progress["score_initial"]
    if family == "causal":
        return {"ppl_initial": initial, "ppl_final": final, "ppl_ratio": final / initial if initial else math.nan}, export
    name = ACCURACY[family]
    return {f"{name}_initial": initial, f"{name}_final": final}, export


# What the untrained and the trained model are scored by: perplexity for a causal LM; for the
# others, how often the argmax recovers the hidden tokens of the validation blocks (fixed masks).
ACCURACY = {"masked": "mlm_accuracy", "seq2seq": "span_accuracy"}


def _score(model, family: str, val_stream: torch.Tensor, val_blocks: np.ndarray, make_inputs, cfg: PretrainConfig) -> float:
    """Perplexity (causal) or hidden-token accuracy in [0, 1] (masked, seq2seq) on up to cfg.eval_tokens tokens."""
    if family == "causal":
        return perplexity(model, val_stream, cfg.model.n_positions, max_tokens=cfg.eval_tokens)
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(cfg.seed)
    n_blocks = max(1, min(len(val_blocks), cfg.eval_tokens // val_blocks.shape[1]))
    correct = scored = 0
    for start in range(0, n_blocks, cfg.micro_batch_size):
        blocks = torch.from_numpy(val_blocks[start : min(start + cfg.micro_batch_size, n_blocks)].astype(np.int64))
        batch = {k: v.to(next(model.parameters()).device) for k, v in make_inputs(blocks, generator).items()}
        c, n = token_accuracy(model, batch)
        correct, scored = correct + c, scored + n
    model.train(was_training)
    return correct / max(scored, 1)
