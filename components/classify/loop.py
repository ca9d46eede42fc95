"""The per-worker fine-tuning loop of an encoder with a task head: what each Ray Train worker runs.

Every worker gets the same encoded examples and reads its own stride of a seeded permutation
(so a batch depends only on the step number, and a resumed run replays nothing). Held-out
scores are computed on every worker over the whole (small) test set: with FSDP the forward
pass is collective, so all ranks must run the same batches.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer

from components.classify.config import ClassifyConfig
from components.core.classification import collate, frame, score
from components.core.distill import classifier_distillation_loss
from components.core.models import load_trained
from components.core.parallel import wrap
from components.core.peft_methods import PromptTuningSettings, SelectiveSettings, apply_method, trainable_parameters
from components.core.prune import apply_masks
from components.storage import localize
from components.train_loop import Run, batch_rows, export_model, worker


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
    # The task type makes peft train the new classifier (LoRA); the pooler is new too (an MLM
    # checkpoint has none), so it trains as well instead of staying random.
    model = apply_method(model, cfg.method, cfg.lora, PromptTuningSettings(), SelectiveSettings(),
                         task_type="TOKEN_CLS" if cfg.task == "ner" else "SEQ_CLS",
                         modules_to_save=None if cfg.task == "ner" else ["pooler"])
    return model, frame(AutoTokenizer.from_pretrained(base_dir))  # eos-framed inputs, saved with the model


def train_loop(config: dict) -> None:
    cfg = ClassifyConfig.model_validate(config["cfg"])
    train, test, labels = config["train"], config["test"], config["labels"]
    rank, world, device = worker()

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
    run = Run(cfg, par, rank, "examples_per_s", cfg.micro_batch_size * world)
    if run.resume():
        return

    # 3. Train: cross-entropy of the head over labels (sequence) or first sub-tokens (tagging).
    for step in run.steps():
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
        run.record(grad_norm, loss=loss.item())
        if not run.report_due():
            continue

        # 4. Report: loss, learning rate; held-out scores; a checkpoint; at the end, the export: `model/`
        #    with LoRA merged into plain weights, the label names in config.id2label / label2id.
        metrics = run.metrics(trainable_params=trainable, trainable_share=trainable / total)
        if run.eval_due():
            metrics.update({f"heldout_{k}": v for k, v in score(par.model, test, labels, tokenizer.pad_token_id).items()})
        build = partial(build_classifier, base_dir, cfg, labels, config["scratch"])
        run.report(metrics, export_model(par, rank, build, "classify", adapter=False) if run.last else None)
