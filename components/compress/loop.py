"""The per-worker loop that trains a compressed model against its source, top to bottom.

Distillation trains a smaller student on the teacher's softened distribution plus the labels
(`core/distill.py`); pruning's recovery is the same loop with the pruned weights held at zero.
Every worker gets the same tokenized instruction pairs and reads its own stride of a seeded
permutation (as in fine-tuning), so a resumed run replays nothing.
"""

from __future__ import annotations

from functools import partial

import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from components.compress.config import StudentTraining
from components.core.distill import distillation_loss
from components.core.parallel import wrap
from components.core.prune import apply_masks
from components.core.sft import pad_batch
from components.storage import localize
from components.train_loop import Run, batch_rows, export_model, validation_loss, worker


def student_loop(config: dict) -> None:
    cfg = StudentTraining.model_validate(config["cfg"])
    train, val = config["train_pairs"], config["val_pairs"]
    rank, world, device = worker()

    # 1. The student (every weight trains), the frozen teacher when the soft term is on, the masks when pruned.
    student_dir = localize(config["student_dir"])  # a copy on this node when the run's storage is an object store
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    model = AutoModelForCausalLM.from_pretrained(student_dir)
    teacher = AutoModelForCausalLM.from_pretrained(localize(config["teacher_dir"])).to(device).eval() if cfg.alpha > 0 else None
    masks = {k: v.bool() for k, v in load_file(student_dir / "masks.safetensors").items()} if config["masked"] else {}
    par = wrap(model, cfg.strategy, cfg.lr, cfg.weight_decay, cfg.grad_clip, cfg.warmup_steps, cfg.max_steps, device,
               micro_batch=cfg.micro_batch_size)

    # 2. Resume from the last checkpoint, if Ray Train restarted us.
    run = Run(cfg, par, rank, "examples_per_s", cfg.micro_batch_size * world)
    if run.resume():
        return

    # 3. Train: the student's distribution towards the teacher's (temperature T) and the labels.
    for step in run.steps():
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
        run.record(grad_norm, loss=loss.item(), kl=parts["kl"], ce=parts["ce"])
        if not run.report_due():
            continue

        # 4. Report: loss and its parts; validation loss; a checkpoint; at the end, the export.
        metrics = run.metrics()
        if run.eval_due():
            metrics["val_loss"] = validation_loss(par.model, val, cfg.micro_batch_size, rank, world, device, tokenizer.pad_token_id)
        run.report(metrics, export_model(par, rank, partial(_fresh_student, student_dir), "student") if run.last else None)


def _fresh_student(student_dir):
    """(model, tokenizer) of the untrained student, for the export to load the trained weights into."""
    return AutoModelForCausalLM.from_pretrained(student_dir), AutoTokenizer.from_pretrained(student_dir)
