"""The per-worker fine-tuning loop of an encoder with a task head: what each Ray Train worker runs.

Every worker gets the same encoded examples and reads its own stride of a seeded permutation
(so a batch depends only on the step number, and a resumed run replays nothing). Held-out
scores are computed on every worker over the whole (small) test set: with FSDP the forward
pass is collective, so all ranks must run the same batches.
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
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer

from components.classify.config import ClassifyConfig
from components.core.classification import collate, frame, score
from components.core.distill import classifier_distillation_loss
from components.core.models import load_trained
from components.core.parallel import wrap
from components.core.prune import apply_masks
from components.core.peft_methods import trainable_parameters
from components.finetune.loop import batch_rows, mean_over_workers, save_and_report
from components.storage import localize


def build_classifier(base_dir: str, cfg: ClassifyConfig, labels: list[str], scratch: bool = False):
    """The encoder of `base_dir` under a new task head (its MLM head dropped), with cfg.method
    applied; scratch: the same architecture freshly initialised. Same seed, same head."""
    model_cls = AutoModelForTokenClassification if cfg.task == "ner" else AutoModelForSequenceClassification
    names = dict(num_labels=len(labels), id2label=dict(enumerate(labels)), label2id={n: i for i, n in enumerate(labels)})
    torch.manual_seed(cfg.seed)
    if scratch:
        model = model_cls.from_config(AutoConfig.from_pretrained(base_dir, **names))
    else:
        model = model_cls.from_pretrained(base_dir, **names)
    if cfg.method == "lora":
        import peft

        # The task type makes peft train (modules_to_save) the new classifier; the pooler is new
        # too (an MLM checkpoint has none), so it trains as well instead of staying random.
        config = peft.LoraConfig(
            r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout, target_modules=cfg.lora.target_modules,
            task_type="TOKEN_CLS" if cfg.task == "ner" else "SEQ_CLS", modules_to_save=None if cfg.task == "ner" else ["pooler"],
        )
        model = peft.get_peft_model(model, config)
    return model, frame(AutoTokenizer.from_pretrained(base_dir))  # eos-framed inputs, saved with the model


def train_loop(config: dict) -> None:
    cfg = ClassifyConfig.model_validate(config["cfg"])
    train, test, labels = config["train"], config["test"], config["labels"]
    rank, world = ray.train.get_context().get_world_rank(), ray.train.get_context().get_world_size()
    device = ray.train.torch.get_device()

    # 1. The encoder under its new head (or a fresh encoder, for the scratch baseline).
    base_dir = str(localize(config["base_dir"]))
    model, tokenizer = build_classifier(base_dir, cfg, labels, scratch=config["scratch"])
    trainable, total = trainable_parameters(model)
    # Distillation (components/compress/encoder.py): a frozen teacher classifier's logits are soft targets.
    teacher, distill = None, config.get("distill")
    if distill and distill["alpha"] > 0:
        teacher = load_trained(localize(distill["teacher_dir"])).to(device).requires_grad_(False)
    # Pruning's recovery (components/compress/encoder.py): the zeroed weights' keep-masks, re-applied after every step.
    masks = {k: v.bool() for k, v in load_file(Path(base_dir) / "masks.safetensors").items()} if config.get("masked") else {}
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

    # 3. Train: cross-entropy of the head over labels (sequence) or first sub-tokens (tagging).
    window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()
    for step in range(progress["step"], cfg.max_steps):
        rows = batch_rows(len(train), step, cfg.micro_batch_size, rank, world, cfg.seed)
        batch = {k: v.to(device) for k, v in collate([train[i] for i in rows], tokenizer.pad_token_id).items()}
        out = par.model(**batch)
        loss = out.loss
        if teacher is not None:
            with torch.no_grad():
                soft = teacher(**batch).logits
            loss, _ = classifier_distillation_loss(out.logits, soft, batch["labels"], distill["temperature"], distill["alpha"])
        par.backward(loss)
        grad_norm = par.step()
        if masks:
            apply_masks(model, masks)  # the optimizer (and weight decay) moved pruned weights: put the zeros back
        window_loss += loss.item()
        window_steps += 1
        done = progress["step"] = step + 1
        last = done == cfg.max_steps
        if done % cfg.log_every and done % cfg.eval_every and done % cfg.checkpoint_every and not last:
            continue

        # 4. Report: loss, learning rate; held-out scores; a checkpoint; at the end, the export.
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
            metrics.update({f"heldout_{k}": v for k, v in score(par.model, test, labels, tokenizer.pad_token_id).items()})
        if last:
            progress["final_metrics"] = metrics
            save_and_report(metrics, par, progress, rank, cfg.strategy, export=_export(par, base_dir, cfg, labels, config["scratch"], rank))
        elif done % cfg.checkpoint_every == 0:
            save_and_report(metrics, par, progress, rank, cfg.strategy)
        else:
            ray.train.report(metrics)
        window_loss, window_steps, window_start = 0.0, 0, time.perf_counter()


def _export(par, base_dir: str, cfg: ClassifyConfig, labels: list[str], scratch: bool, rank: int) -> Path | None:
    """Gather the weights (collective); rank 0 writes `model/`: LoRA merged into plain weights, the
    label names in config.id2label / label2id, and the tokenizer."""
    weights = par.full_state_dict()
    if rank != 0:
        return None
    model, tokenizer = build_classifier(base_dir, cfg, labels, scratch)
    model.load_state_dict(weights, strict=False)  # the tied MLM decoder is gone; nothing else may be missing
    if cfg.method == "lora":
        model = model.merge_and_unload()
    export = Path(tempfile.mkdtemp(prefix="classify-export-"))
    model.save_pretrained(export / "model")  # safetensors
    tokenizer.save_pretrained(export / "model")
    return export
