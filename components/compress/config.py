"""Typed config of the compression phases: `uses: quantize`, `uses: distill`, `uses: prune`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from components.core.quantize_methods import METHODS
from components.train_args import TrainArgs


class Measure(BaseModel):
    """How every compression step measures the source model and its compressed copy, side by side."""

    model_config = ConfigDict(extra="forbid")
    speed_prompts: int = Field(8, ge=1, description="Held-out test prompts generated from for latency and throughput.")
    new_tokens: int = Field(32, ge=1, description="Tokens generated per prompt in a timed run (eos ignored).")
    repeats: int = Field(5, ge=1, description="Timed runs after one warm-up; the median is reported.")
    test_examples: int = Field(300, ge=1, description="Held-out test prompts answered greedily for exact match "
                               "(fewer than the split: taken from every family in turn).")
    max_new_tokens: int = Field(24, ge=1, description="Greedy tokens per test prompt for exact match.")


class StudentTraining(TrainArgs):
    """Training a compressed model with Ray Train on the instruction data, its source as the teacher."""

    strategy: Literal["fsdp", "ddp"] = TrainArgs.default(
        "strategy", "ddp", "Data-parallel strategy: DDP or FSDP2 (pruning's masks need ddp: they apply to whole weights)."
    )
    max_steps: int = Field(300, ge=0, le=100_000_000, description="Optimizer steps (0: no training; at most 10^8).")
    lr: float = TrainArgs.default("lr", 3e-3, "Peak learning rate (AdamW, betas 0.9/0.95), all weights trainable.")
    eval_every: int = TrainArgs.default("eval_every", 100, "Validation loss on held-out instructions every N steps (and at the end).")
    temperature: float = Field(2.0, gt=0, description="Softmax temperature T of the teacher's and student's distributions (T > 1 softens).")
    alpha: float = Field(0.5, ge=0, le=1, description="Weight of the soft (teacher) term against the labels' cross-entropy; 0: labels only.")


class ClassifierData(BaseModel):
    """The task data a classifier (a `classify` step's output) is distilled or recovered on, and scored on.
    Ignored for a causal model, which trains on its instructions input."""

    model_config = ConfigDict(extra="forbid")
    train_path: str | None = Field(None, description="Training file (as the classify phase's train_path); None: "
                                   "`train_examples` generated from `data_seed`, as the classify phase does by default.")
    test_path: str | None = Field(None, description="Held-out file (as the classify phase's test_path); None: see test_examples.")
    train_examples: int = Field(2000, ge=10, description="Generated training examples (when train_path is None).")
    test_examples: int | None = Field(
        None, ge=10, description="With test_path None: sst2 / mnli, N items generated from the bundled dev file's stream "
        "(its 40 first, then more; training drops any overlap) instead of that file alone; ner, N generated sentences "
        "(default 200). None: the bundled dev file (sst2, mnli).")
    data_seed: int = Field(1, description="Seed of the generated training data (the classify phase's default: the teacher's data).")
    max_length: int = Field(128, ge=8, description="Longest input in tokens (at most the model's n_positions).")


class QuantizeConfig(BaseModel):
    """Post-training quantization of a (merged) model; no training."""

    model_config = ConfigDict(extra="forbid")
    method: Literal[METHODS] = Field(
        "int8_dynamic",
        description="fp16 | bf16 (cast) | int8_dynamic (int8 weights and activations, CPU) | int8_weight_only | "
        "int4_weight_only (torchao; int4 needs a CUDA GPU).",
    )
    group_size: int = Field(32, ge=16, description="int4_weight_only: weights sharing one scale.")
    measure: Measure = Field(default_factory=Measure, description="Speed and exact-match measurement (a generating model).")
    data: ClassifierData = Field(default_factory=ClassifierData, description="A classifier's held-out data (test_path, "
                                 "test_examples), scored before and after; the training fields are unused here.")


class DistillConfig(BaseModel):
    """Knowledge distillation into a smaller student initialised from the teacher's layers."""

    model_config = ConfigDict(extra="forbid")
    student_layers: list[int] | None = Field(
        None, description="Teacher blocks the student starts from, in order; None: half of them, evenly spaced, first and last included."
    )
    mlp_keep: float = Field(0.5, gt=0, le=1, description="Share of each MLP's hidden channels the student keeps (largest weight norms); a causal model's "
                           "student only (a classifier's keeps its MLPs whole).")
    init: Literal["teacher", "random"] = Field("teacher", description="Student weights: copied from the teacher's kept layers, or fresh.")
    training: StudentTraining = Field(default_factory=StudentTraining, description="Distillation training (alpha, temperature, steps).")
    baseline: bool = Field(
        True, description="Also train the same student on the labels alone (alpha 0) and log its exact match: the teacher's effect, measured."
    )
    measure: Measure = Field(default_factory=Measure, description="Speed and exact-match measurement.")
    data: ClassifierData = Field(default_factory=ClassifierData, description="A classifier's task data (a masked model only).")


class PruneConfig(BaseModel):
    """Magnitude pruning, then an optional short recovery fine-tune with the unpruned model as teacher."""

    model_config = ConfigDict(extra="forbid")
    method: Literal["unstructured", "channels"] = Field(
        "unstructured", description="unstructured: global smallest-|w| block weights zeroed; channels: MLP hidden channels removed."
    )
    sparsity: float = Field(0.5, gt=0, lt=1, description="Share of block weights zeroed (unstructured) or of MLP channels removed (channels).")
    recovery: StudentTraining = Field(
        default_factory=lambda: StudentTraining(max_steps=100), description="Recovery training, pruned weights held at zero; max_steps 0: none."
    )
    measure: Measure = Field(default_factory=Measure, description="Speed and exact-match measurement.")
    data: ClassifierData = Field(default_factory=ClassifierData, description="A classifier's task data (a masked model only).")

    @model_validator(mode="after")
    def _check(self):
        if self.method == "unstructured" and self.recovery.max_steps and self.recovery.strategy != "ddp":
            raise ValueError("recovery.strategy must be ddp for unstructured pruning: the masks apply to whole weights")
        return self
