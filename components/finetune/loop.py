"""The per-worker fine-tuning loop: what each Ray Train worker runs, top to bottom.

The step hands every worker the same tokenized data (instruction pairs with the prompt
masked out of the labels, or for an encoder-decoder the prompt as encoder input and the
response as labels; plus optional pretraining blocks for replay); each worker reads
its own stride of a seeded permutation, so a batch depends only on the step number and a
resumed run replays nothing.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
from transformers import AutoTokenizer

from components.core.models import auto_class
from components.core.parallel import wrap
from components.core.peft_methods import apply_method, trainable_parameters
from components.core.sft import pad_batch
from components.finetune.config import FinetuneConfig
from components.storage import localize
from components.train_loop import Pair, Run, batch_rows, export_model, validation_loss, worker


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
    rank, world, device = worker()

    # 1. Base model plus method: only the method's parameters train.
    base_dir = str(localize(config["base_dir"]))  # a copy on this node when the run's storage is an object store
    model, tokenizer = build_model(base_dir, cfg)
    trainable, total = trainable_parameters(model)
    par = wrap(model, cfg.strategy, cfg.lr, cfg.weight_decay, cfg.grad_clip, cfg.warmup_steps, cfg.max_steps, device,
               zero_stage=cfg.zero_stage, micro_batch=cfg.micro_batch_size)

    # 2. Resume from the last checkpoint, if Ray Train restarted us.
    run = Run(cfg, par, rank, "examples_per_s", cfg.micro_batch_size * world)
    if run.resume():
        return

    # 3. Train: instruction pairs, plus a share of pretraining text when replay is on.
    n_replay = round(cfg.replay_fraction * cfg.micro_batch_size) if len(replay) else 0
    n_instr = cfg.micro_batch_size - n_replay
    for step in run.steps():
        pairs = [train[i] for i in batch_rows(len(train), step, n_instr, rank, world, cfg.seed)]
        pairs += [(b.tolist(), b.tolist()) for b in replay[batch_rows(len(replay), step, n_replay, rank, world, cfg.seed)]]
        batch = {k: v.to(device) for k, v in pad_batch(pairs, tokenizer.pad_token_id).items()}
        loss = par.model(**batch).loss  # mean over unmasked (response and replay) tokens
        par.backward(loss)
        run.record(par.step(), loss=loss.item())
        if not run.report_due():
            continue

        # 4. Report: loss, learning rate, grad norm; validation loss; a checkpoint; at the end, the export.
        metrics = run.metrics(trainable_params=trainable, trainable_share=trainable / total)
        if run.eval_due():
            metrics["val_loss"] = validation_loss(par.model, val, cfg.micro_batch_size, rank, world, device, tokenizer.pad_token_id)
        run.report(metrics, export_model(par, rank, partial(build_model, base_dir, cfg), "finetune") if run.last else None)
