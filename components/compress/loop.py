"""The per-worker loop that trains a compressed model against its source, top to bottom.

Distillation trains a smaller student on the teacher's softened distribution plus the labels
(`core/distill.py`); pruning's recovery is the same loop with the pruned weights held at zero.
Every worker gets the same tokenized instruction pairs and reads its own stride of a seeded
permutation (as in fine-tuning), so a resumed run replays nothing.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import ray.train
import ray.train.torch
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from components.compress.config import StudentTraining
from components.core.distill import distillation_loss
from components.core.parallel import wrap
from components.core.prune import apply_masks
from components.core.sft import pad_batch
from components.finetune.loop import batch_rows, mean_over_workers, save_and_report, validation_loss
from components.storage import localize


def student_loop(config: dict) -> None:
    cfg = StudentTraining.model_validate(config["cfg"])
    train, val = config["train_pairs"], config["val_pairs"]
    rank, world = ray.train.get_context().get_world_rank(), ray.train.get_context().get_world_size()
    device = ray.train.torch.get_device()

    # 1. The student (every weight trains), the frozen teacher when the soft term is on, the masks when pruned.
    student_dir = localize(config["student_dir"])  # a copy on this node when the run's storage is an object store
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    model = AutoModelForCausalLM.from_pretrained(student_dir)
    teacher = AutoModelForCausalLM.from_pretrained(localize(config["teacher_dir"])).to(device).eval() if cfg.alpha > 0 else None
    masks = {k: v.bool() for k, v in load_file(student_dir / "masks.safetensors").items()} if config["masked"] else {}
    par = wrap(model, cfg.strategy, cfg.lr, cfg.weight_decay, cfg.grad_clip, cfg.warmup_steps, cfg.max_steps, device,
               micro_batch=cfg.micro_batch_size)

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

    # 3. Train: the student's distribution towards the teacher's (temperature T) and the labels.
    window = {"loss": 0.0, "kl": 0.0, "ce": 0.0, "steps": 0}
    window_start = time.perf_counter()
    for step in range(progress["step"], cfg.max_steps):
        pairs = [train[i] for i in batch_rows(len(train), step, cfg.micro_batch_size, rank, world, cfg.seed)]
        batch = {k: v.to(device) for k, v in pad_batch(pairs, tokenizer.pad_token_id).items()}
        if teacher is None:
            loss = par.model(**batch).loss
            parts = {"kl": 0.0, "ce": loss.item()}
        else:
            student_logits = par.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            with torch.no_grad():
                teacher_logits = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            loss, parts = distillation_loss(student_logits, teacher_logits, batch["labels"], batch["attention_mask"],
                                            cfg.temperature, cfg.alpha)
        par.backward(loss)
        grad_norm = par.step()
        if masks:
            apply_masks(model, masks)  # the optimizer moved pruned weights: put the zeros back
        window["loss"] += loss.item()
        window["kl"] += parts["kl"]
        window["ce"] += parts["ce"]
        window["steps"] += 1
        done = progress["step"] = step + 1
        last = done == cfg.max_steps
        if done % cfg.log_every and done % cfg.checkpoint_every and not last:
            continue

        # 4. Report: loss and its parts; a checkpoint; at the end, validation loss and the export.
        metrics = {
            "step": done,
            **{k: mean_over_workers(window[k] / window["steps"]) for k in ("loss", "kl", "ce")},
            "lr": par.lr(),
            "grad_norm": grad_norm,
            "examples_per_s": cfg.micro_batch_size * world * window["steps"] / (time.perf_counter() - window_start),
        }
        if resumed_from is not None:
            metrics["resumed_from_step"], resumed_from = resumed_from, None
        if last:
            metrics["val_loss"] = validation_loss(par.model, val, cfg.micro_batch_size, rank, world, device, tokenizer.pad_token_id)
            progress["final_metrics"] = metrics
            save_and_report(metrics, par, progress, rank, cfg.strategy, export=_export(par, student_dir, rank))
        elif done % cfg.checkpoint_every == 0:
            save_and_report(metrics, par, progress, rank, cfg.strategy)
        else:
            ray.train.report(metrics)
        window = {"loss": 0.0, "kl": 0.0, "ce": 0.0, "steps": 0}
        window_start = time.perf_counter()


def _export(par, student_dir: str, rank: int) -> Path | None:
    """Gather the weights (collective); rank 0 writes them as a Hugging Face model in `model/`."""
    weights = par.full_state_dict()
    if rank != 0:
        return None
    model = AutoModelForCausalLM.from_pretrained(student_dir)
    model.load_state_dict(weights, strict=False)  # a tied lm_head may be absent; it follows the embedding
    export = Path(tempfile.mkdtemp(prefix="student-export-"))
    model.save_pretrained(export / "model")
    AutoTokenizer.from_pretrained(student_dir).save_pretrained(export / "model")
    return export
