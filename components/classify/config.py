"""Typed config of the classify phase (the `with:` block of a `uses: classify` step)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from components.core.peft_settings import LoraSettings
from components.finetune.config import SweepConfig, check_sweep
from components.train_args import TrainArgs

Task = Literal["sst2", "mnli", "ner"]
LABELS = {"sst2": ("negative", "positive"), "mnli": ("entailment", "neutral", "contradiction")}  # ner: from the data


class ClassifyConfig(TrainArgs):
    """Fine-tune a pretrained encoder with a task head under Ray Train; held-out accuracy before and after."""

    task: Task = Field(..., description="sst2: sentiment (2 labels); mnli: premise/hypothesis entailment (3 labels); "
                       "ner: named entities, one BIO tag per word (token classification).")
    method: Literal["full", "lora"] = Field("full", description="full: every weight trains; lora: LoRA on attention "
                                            "plus the new head (and pooler), merged into the weights before saving.")
    lora: LoraSettings = Field(
        default_factory=lambda: LoraSettings(r=8, alpha=16.0, dropout=0.0, target_modules=["query", "value"]),
        description="LoRA rank, alpha, dropout and target modules (BERT names its projections query, key, value, dense).",
    )
    train_path: str | None = Field(None, description="Training file: GLUE TSV / jsonl (sst2, mnli) or CoNLL-2003 (ner); "
                                   "None: `train_examples` generated from `data_seed`.")
    test_path: str | None = Field(None, description="Held-out file in the same format; None: the bundled GLUE dev file "
                                  "(sst2, mnli) or `test_examples` generated NER sentences disjoint from training.")
    train_examples: int = Field(2000, ge=10, description="Generated training examples (when train_path is None).")
    test_examples: int = Field(200, ge=10, description="Generated held-out NER sentences (ner with test_path None).")
    data_seed: int = Field(1, description="Seed of the generated training data (the bundled dev files came from seed 0).")
    max_length: int = Field(128, ge=8, description="Longest input in tokens; a longer example is an error naming its line "
                            "(at most the model's n_positions).")
    max_steps: int = TrainArgs.default("max_steps", 150)
    lr: float = TrainArgs.default(
        "lr", 1e-3, "Peak learning rate (AdamW, betas 0.9/0.95); a tiny encoder takes a larger one than BERT-base's 2e-5."
    )
    weight_decay: float = TrainArgs.default("weight_decay", 0.01)
    warmup_steps: int = TrainArgs.default("warmup_steps", 15)
    baseline: bool = Field(False, description="Also fine-tune a freshly initialised encoder of the same size the same way "
                           "(accuracy_scratch): what pretraining bought.")
    log_every: int = TrainArgs.default("log_every", 25)
    eval_every: int = TrainArgs.default("eval_every", 50, "Held-out accuracy every N steps (and at the end).")
    sweep: SweepConfig | None = Field(
        None, description="Run a Ray Tune sweep over LoRA rank (method lora) instead of one training run: trials are "
        "ranked by accuracy on `validation_fraction` of the training data, and the best one is scored on the test set.",
    )
    validation_fraction: float = Field(
        0.1, gt=0, lt=0.5, description="With a sweep: share of the training examples held out (seeded) to rank the "
        "trials by, so that the test set never picks the winner.",
    )

    @model_validator(mode="after")
    def _check(self):
        check_sweep(self.sweep, self.method)
        if self.sweep is not None and self.baseline:
            raise ValueError("baseline and sweep: fine-tune from scratch in a step of its own")
        return self
