"""The per-worker pretraining loop: what each Ray Train worker runs, top to bottom.

Data arrives in the config as token blocks ([n_blocks, block_size] int32, from the
step); every worker reads its own stride of a seeded permutation, so a batch depends
only on the step number and resuming from a checkpoint replays nothing.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from transformers import AutoTokenizer

from components.core.models import build_model, sentinel_ids
from components.core.objectives import objective, token_accuracy
from components.core.parallel import wrap
from components.core.perplexity import perplexity
from components.pretrain.config import PretrainConfig
from components.storage import localize


def train_loop(config: dict) -> None:
    cfg = PretrainConfig.model_validate(config["cfg"])
    train_blocks: np.ndarray = config["train_blocks"]
    val_blocks: np.ndarray = config["val_blocks"]
    rank, world = ray.train.get_context().get_world_rank(), ray.train.get_context().get_world_size()
    device = ray.train.torch.get_device()
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
    progress = {"step": 0, "score_initial": None}

    # 2. Resume, or score the untrained model (the baseline the trained one must beat).
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None and rank == 0:
        progress["score_initial"] = _score(model, family, val_stream, val_blocks, make_inputs, cfg)
    par = wrap(
        model, cfg.strategy, cfg.lr, cfg.weight_decay, cfg.grad_clip, cfg.warmup_steps, cfg.max_steps, device,
        zero_stage=cfg.zero_stage, cpu_offload=cfg.cpu_offload, bf16=bf16, micro_batch=cfg.micro_batch_size, grad_accum=cfg.grad_accum,
    )
    resumed_from = None
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            par.load(Path(directory) / "state")
            progress = json.loads((Path(directory) / "progress.json").read_text())
        resumed_from = progress["step"]

    # 3. Train.
    tokens_per_step = cfg.micro_batch_size * cfg.grad_accum * train_blocks.shape[1] * world
    window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
    for step in range(progress["step"], cfg.max_steps):
        for micro in range(cfg.grad_accum):
            index = step * cfg.grad_accum + micro
            blocks = _batch(train_blocks, index, cfg.micro_batch_size, rank, world, cfg.seed)
            # Masks depend only on (seed, micro-batch, rank): a resumed run draws the same ones.
            generator = torch.Generator().manual_seed(hash((cfg.seed, index, rank)) % 2**63)
            batch = {k: v.to(device) for k, v in make_inputs(blocks, generator).items()}
            with torch.autocast(device.type, torch.bfloat16, enabled=par.autocast):
                loss = par.model(**batch).loss
            par.backward(loss)
            window_loss += loss.item() / cfg.grad_accum
        grad_norm = par.step()
        window_steps += 1
        done = step + 1
        progress["step"] = done
        last = done == cfg.max_steps
        if done % cfg.log_every and done % cfg.eval_every and done % cfg.checkpoint_every and not last:
            continue

        # 4. Report: loss, learning rate, throughput; validation loss; a checkpoint.
        elapsed = time.perf_counter() - window_start
        metrics = {
            "step": done,
            "loss": _mean_over_workers(window_loss / window_steps),
            "lr": par.lr(),
            "grad_norm": grad_norm,
            "tokens_per_s": tokens_per_step * window_steps / elapsed,
        }
        if resumed_from is not None:  # first report after a restart says where it resumed
            metrics["resumed_from_step"], resumed_from = resumed_from, None
        if done % cfg.eval_every == 0 or last:
            metrics["val_loss"] = _validation_loss(par.model, val_blocks, make_inputs, cfg.micro_batch_size, rank, world, device)
        if last:
            metrics.update(_finish(par, tokenizer, cfg, progress, val_stream, val_blocks, rank))
            _report(metrics, par, progress, rank, cfg.strategy, export=metrics.pop("_export"))
        elif done % cfg.checkpoint_every == 0:
            _report(metrics, par, progress, rank, cfg.strategy)
        else:
            ray.train.report(metrics)
        window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()


def _batch(blocks: np.ndarray, index: int, size: int, rank: int, world: int, seed: int) -> torch.Tensor:
    """Micro-batch ``index`` of this worker: [size, block] int64. Epochs reshuffle by seed."""
    per_rank = len(blocks) // world
    per_epoch = max(1, per_rank // size)
    epoch, position = divmod(index, per_epoch)
    order = np.random.default_rng(seed + epoch).permutation(len(blocks))[rank::world][:per_rank]
    rows = order[(position * size) % per_rank : (position * size) % per_rank + size]
    return torch.from_numpy(blocks[rows].astype(np.int64))


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
    return _mean_over_workers(total / max(count, 1))


def _mean_over_workers(value: float) -> float:
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor)  # gloo reduces CPU tensors on every backend Ray Train sets up here
    return float(tensor.item()) / dist.get_world_size()


def _finish(par, tokenizer, cfg: PretrainConfig, progress: dict, val_stream: torch.Tensor, val_blocks: np.ndarray, rank: int) -> dict:
    """Gather the whole model (collective), export it on rank 0 in HF format, score it."""
    weights = par.full_state_dict()
    if rank != 0:
        return {"_export": None}
    model = build_model(cfg.model, tokenizer, cfg.seed)
    model.load_state_dict(weights, strict=False)  # tied lm_head may be absent; it follows wte
    model.tie_weights()
    export = Path(tempfile.mkdtemp(prefix="pretrain-export-"))
    model.save_pretrained(export / "model")  # safetensors
    tokenizer.save_pretrained(export / "model")
    family = cfg.model.family
    final = _score(model, family, val_stream, val_blocks, objective(family, tokenizer, sentinel_ids(tokenizer)), cfg)
    initial = progress["score_initial"]
    if family == "causal":
        return {"_export": export, "ppl_initial": initial, "ppl_final": final, "ppl_ratio": final / initial if initial else math.nan}
    name = ACCURACY[family]
    return {"_export": export, f"{name}_initial": initial, f"{name}_final": final}


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


def _report(metrics: dict, par, progress: dict, rank: int, strategy: str, export: Path | None = None) -> None:
    """Save the resumable state (every rank for DeepSpeed, rank 0 otherwise) and report it."""
    directory = export or Path(tempfile.mkdtemp(prefix="pretrain-ckpt-"))
    par.save(directory / "state")
    writes = rank == 0 or strategy == "deepspeed"
    if rank == 0:
        (directory / "progress.json").write_text(json.dumps(progress))
    checkpoint = ray.train.Checkpoint.from_directory(str(directory)) if writes else None
    ray.train.report(metrics, checkpoint=checkpoint)  # returns once the files are in storage
    shutil.rmtree(directory, ignore_errors=True)
