"""The fields every Ray Train phase shares: steps, optimizer, schedule, data parallelism, reporting, restarts.

Pretrain, finetune, classify, the reward model, DPO and a compressed student extend `TrainArgs` (or
`DeepSpeedTrainArgs`, which adds DeepSpeed ZeRO) and re-declare a field only for another default:
`lr: float = TrainArgs.default("lr", 3e-3)` keeps the base field's bounds and description.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import annotated_types
from pydantic import BaseModel, ConfigDict, Field, model_validator


class TrainArgs(BaseModel):
    """One Ray Train run: the optimizer (AdamW, linear warmup then cosine decay) and how often it reports."""

    model_config = ConfigDict(extra="forbid")
    strategy: Literal["fsdp", "ddp"] = Field("ddp", description="Data-parallel strategy: DDP or FSDP2 (fully_shard).")
    max_steps: int = Field(200, ge=1, le=100_000_000, description="Optimizer steps (at most 10^8: more is a typo).")
    micro_batch_size: int = Field(16, ge=1, description="Examples per worker per step.")
    lr: float = Field(1e-3, gt=0, description="Peak learning rate (AdamW, betas 0.9/0.95).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay.")
    warmup_steps: int = Field(10, ge=0, description="Linear warmup steps before the cosine decay.")
    grad_clip: float = Field(1.0, gt=0, description="Clip the global gradient L2 norm to this value.")
    log_every: int = Field(20, ge=1, description="Report training loss and learning rate every N steps.")
    eval_every: int = Field(100, ge=1, description="Score the held-out data every N steps (and at the end).")
    checkpoint_every: int = Field(100, ge=1, description="Save a resumable Ray Train checkpoint every N steps.")
    max_failures: int = Field(3, ge=0, description="Worker-group restarts (from the last checkpoint) before the step fails.")
    seed: int = Field(0, description="Seed of the data order and of any freshly initialised weights.")

    @classmethod
    def default(cls, name: str, value: Any, description: str | None = None) -> Any:
        """This class's field `name` again with the default `value` (and, if given, another description),
        its bounds kept: for a subclass body, `lr: float = TrainArgs.default("lr", 3e-3)`.

        Built from `FieldInfo.asdict()`, as pydantic documents for deriving fields, rather than by mutating
        a copy of the FieldInfo: bounds (`ge=1` is `annotated_types.Ge(1)` in its metadata) go back in as
        Field keywords, and any other metadata is refused at import rather than dropped.
        """
        base = cls.model_fields[name].asdict()
        bounds: dict[str, Any] = {}
        for item in base["metadata"]:
            if not isinstance(item, annotated_types.BaseMetadata) or not dataclasses.is_dataclass(item):
                raise TypeError(f"{cls.__name__}.default cannot carry {item!r} of field {name!r}")
            bounds.update(dataclasses.asdict(item))  # Ge(ge=1) -> {"ge": 1}: the Field keyword of that bound
        attributes = {**base["attributes"], "default": value, "default_factory": None}
        if description is not None:
            attributes["description"] = description
        return Field(**attributes, **bounds)

    @model_validator(mode="after")
    def _check_warmup(self):
        # max_steps 0 (no training: a subclass may allow it) has no schedule to check
        if self.max_steps and self.warmup_steps >= self.max_steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be below max_steps ({self.max_steps})")
        return self


class DeepSpeedTrainArgs(TrainArgs):
    """A run that may also use DeepSpeed ZeRO (pretrain, finetune, reward model, DPO)."""

    strategy: Literal["fsdp", "ddp", "deepspeed"] = Field(
        "fsdp", description="Data-parallel strategy: FSDP2 (fully_shard), DDP or DeepSpeed ZeRO."
    )
    zero_stage: int = Field(2, ge=1, le=3, description="DeepSpeed ZeRO stage (1: optimizer states, 2: +gradients, 3: +weights sharded).")
