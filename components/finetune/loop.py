"""The per-worker fine-tuning loop: what each Ray Train worker runs, top to bottom.

The step hands every worker the same tokenized data (instruction pairs with the prompt
masked out of the labels, or for an encoder-decoder the prompt as encoder input and the
response as labels; plus optional pretraining blocks for replay); each worker reads
its own stride of a seeded permutation, so a batch depends only on the step number and a
resumed run replays nothing.
"""

from __future__ import annotations

import json
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

from components.core.models import auto_class
from components.core.parallel import wrap
from components.core.peft_methods import apply_method, trainable_parameters
from components.core.sft import pad_batch
from components.finetune.config import FinetuneConfig
from components.storage import localize

Pair = tuple[list[int], list[int]]  # (input_ids, labels): -100 on the prompt (causal), or the response alone (seq2seq)


def build_model(base_dir: str, cfg: FinetuneConfig):
    """The base model (causal LM or T5) with `cfg.method` applied (frozen base, trainable adapter); same seed, same adapter."""
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = auto_class(base_dir).from_pretrained(base_dir)
    torch.manual_seed(cfg.seed)
    return apply_method(model, cfg.method, cfg.lora, cfg.prompt_tuning, cfg.selective, tokenizer), tokenizer


def train_loop(config: dict) -> None:
    cfg = FinetuneConfig.model_validate(config["cfg"])
    train: list[Pair] = config["train_pairs"]
    val: list[Pair] = config["val_pairs"]
    replay: np.ndarray = config["replay_blocks"]  # [n, block] int32 pretraining text
    rank, world = ray.train.get_context().get_world_rank(), ray.train.get_context().get_world_size()
    device = ray.train.torch.get_device()

    # 1. Base model plus method: only the method's parameters train.
    base_dir = str(localize(config["base_dir"]))  # a copy on this node when the run's storage is an object store
    model, tokenizer = build_model(base_dir, cfg)
    trainable, total = trainable_parameters(model)
    par = wrap(model, cfg.strategy, cfg.lr, cfg.weight_decay, cfg.grad_clip, cfg.warmup_steps, cfg.max_steps, device,
               zero_stage=cfg.zero_stage, micro_batch=cfg.micro_batch_size)

    # 2. Resume from the last checkpoint, if Ray Train restarted us.
    progress, resumed_from = {"step": 0}, None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            par.load(Path(directory) / "state")
            progress = json.loads((Path(directory) / "progress.json").read_text())
        resumed_from = progress["step"]
        if progress["step"] == cfg.max_steps:  # restarted after the end: say the final numbers again
            ray.train.report(progress["final_metrics"], checkpoint=checkpoint if rank == 0 else None)
            return

    # 3. Train: instruction pairs, plus a share of pretraining text when replay is on.
    n_replay = round(cfg.replay_fraction * cfg.micro_batch_size) if len(replay) else 0
    n_instr = cfg.micro_batch_size - n_replay
    window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
    for step in range(progress["step"], cfg.max_steps):
        pairs = [train[i] for i in batch_rows(len(train), step, n_instr, rank, world, cfg.seed)]
        pairs += [(b.tolist(), b.tolist()) for b in replay[batch_rows(len(replay), step, n_replay, rank, world, cfg.seed)]]
        batch = {k: v.to(device) for k, v in pad_batch(pairs, tokenizer.pad_token_id).items()}
        loss = par.model(**batch).loss  # mean over unmasked (response and replay) tokens
        par.backward(loss)
        grad_norm = par.step()
        window_loss += loss.item()
        window_steps += 1
        done = progress["step"] = step + 1
        last = done == cfg.max_steps
        if done % cfg.log_every and done % cfg.eval_every and done % cfg.checkpoint_every and not last:
            continue

        # 4. Report: loss, learning rate, grad norm; validation loss; a checkpoint; at the end, the export.
        metrics = {
            "step": done,
            "loss": mean_over_workers(window_loss / window_steps),
            "lr": par.lr(),
            "grad_norm": grad_norm,
            "examples_per_s": cfg.micro_batch_size * world * window_steps / (time.perf_counter() - window_start),
            "trainable_params": trainable,
            "trainable_share": trainable / total,
        }
        if resumed_from is not None:
            metrics["resumed_from_step"], resumed_from = resumed_from, None
        if done % cfg.eval_every == 0 or last:
            metrics["val_loss"] = validation_loss(par.model, val, cfg.micro_batch_size, rank, world, device, tokenizer.pad_token_id)
        if last:
            progress["final_metrics"] = metrics
            save_and_report(metrics, par, progress, rank, cfg.strategy, export=_export(par, base_dir, cfg, rank))
        elif done % cfg.checkpoint_every == 0:
            save_and_report(metrics, par, progress, rank, cfg.strategy)
        else:
            ray.train.report(metrics)
        window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()


def batch_rows(n: int, index: int, size: int, rank: int, world: int, seed: int) -> np.ndarray:
    """Row indices of this worker's batch ``index``: a rank stride of a per-epoch seeded permutation."""
    if size == 0 or n == 0:
        return np.zeros(0, dtype=np.int64)
    per_rank = max(1, n // world)
    per_epoch = max(1, per_rank // size)
    epoch, position = divmod(index, per_epoch)
    order = np.random.default_rng(seed + epoch).permutation(n)[rank::world][:per_rank]
    start = (position * size) % len(order)
    return np.resize(np.roll(order, -start), size)  # wraps around when size > per_rank


@torch.no_grad()
def validation_loss(model, pairs: list[Pair], size: int, rank: int, world: int, device, pad_id: int) -> float:
    """Mean response-token loss over this worker's share of the validation pairs, averaged over workers."""
    mine = pairs[rank::world][: len(pairs) // world]
    total, count = 0.0, 0
    model.eval()
    for start in range(0, len(mine), size):
        chunk = mine[start : start + size]
        batch = {k: v.to(device) for k, v in pad_batch(chunk, pad_id).items()}
        total += model(**batch).loss.item() * len(chunk)
        count += len(chunk)
    model.train()
    return mean_over_workers(total / max(count, 1))


def mean_over_workers(value: float) -> float:
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor)
    return float(tensor.item()) / dist.get_world_size()


def _export(par, base_dir: str, cfg: FinetuneConfig, rank: int) -> Path | None:
    """Gather the weights (collective); rank 0 writes `adapter/` (PEFT methods) and `model/` (plain weights).

    The merged model folds LoRA / IA3 into the base weights (`merge_and_unload`); prompt tuning
    cannot be folded, so its `model/` is the unchanged base and the adapter is needed to use it.
    """
    weights = par.full_state_dict()
    if rank != 0:
        return None
    model, tokenizer = build_model(base_dir, cfg)
    model.load_state_dict(weights, strict=False)  # a tied lm_head may be absent; it follows the embedding
    export = Path(tempfile.mkdtemp(prefix="finetune-export-"))
    if cfg.method in ("lora", "ia3", "prompt_tuning"):
        model.save_pretrained(export / "adapter")  # adapter_model.safetensors + adapter_config.json
        model = model.merge_and_unload() if cfg.method != "prompt_tuning" else model.get_base_model()
    model.save_pretrained(export / "model")
    tokenizer.save_pretrained(export / "model")
    return export


def save_and_report(metrics: dict, par, progress: dict, rank: int, strategy: str, export: Path | None = None) -> None:
    """Save the resumable state (every rank for DeepSpeed, rank 0 otherwise) and report it with the checkpoint."""
    directory = export or Path(tempfile.mkdtemp(prefix="finetune-ckpt-"))
    par.save(directory / "state")
    if rank == 0:
        (directory / "progress.json").write_text(json.dumps(progress))
    writes = rank == 0 or strategy == "deepspeed"
    checkpoint = ray.train.Checkpoint.from_directory(str(directory)) if writes else None
    ray.train.report(metrics, checkpoint=checkpoint)
    shutil.rmtree(directory, ignore_errors=True)
