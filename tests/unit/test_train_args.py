"""TrainArgs, the training fields the Ray Train phases share: defaults, bounds and checks of every phase."""

import pytest
from pydantic import BaseModel, Field, ValidationError

from components.classify.config import ClassifyConfig
from components.compress.config import DistillConfig, PruneConfig, StudentTraining
from components.finetune.config import FinetuneConfig
from components.pretrain.config import PretrainConfig
from components.rlhf.config import DPOConfig, PPOConfig, RewardConfig
from components.train_args import DeepSpeedTrainArgs, TrainArgs

REQUIRED = {ClassifyConfig: {"task": "sst2"}}

# Each phase's defaults as they stood before TrainArgs (commit 50a86c1: `Config().model_dump()`, nested blocks
# left out), plus the student's eval_every and max_length (issue 29: None keeps the model's context, as before);
# TrainArgs must not move any of them.
DEFAULTS = {
    PretrainConfig: {
        "activation_checkpointing": "auto", "checkpoint_every": 100, "cpu_offload": False, "eval_every": 100,
        "eval_tokens": 20000, "grad_accum": 1, "grad_clip": 1.0, "log_every": 20, "lr": 0.003, "max_failures": 3,
        "max_steps": 400, "micro_batch_size": 16, "precision": "auto", "seed": 0, "strategy": "fsdp",
        "warmup_steps": 30, "weight_decay": 0.01, "zero_stage": 3,
    },
    FinetuneConfig: {
        "checkpoint_every": 200, "eval_every": 100, "eval_tokens": 20000, "grad_clip": 1.0, "log_every": 20,
        "lr": 0.01, "max_failures": 3, "max_new_tokens": 24, "max_steps": 600, "method": "lora",
        "micro_batch_size": 16, "replay_fraction": 0.0, "seed": 0, "strategy": "fsdp", "sweep": None,
        "test_examples": 400, "warmup_steps": 20, "weight_decay": 0.0, "zero_stage": 2, "max_length": None,
    },
    ClassifyConfig: {
        "baseline": False, "checkpoint_every": 100, "data_seed": 1, "eval_every": 50, "grad_clip": 1.0,
        "log_every": 25, "lr": 0.001, "max_failures": 3, "max_length": 128, "max_steps": 150, "method": "full",
        "micro_batch_size": 16, "seed": 0, "strategy": "ddp", "sweep": None, "task": "sst2", "test_examples": 200,
        "test_path": None, "train_examples": 2000, "train_path": None, "validation_fraction": 0.1,
        "warmup_steps": 15, "weight_decay": 0.01,
    },
    RewardConfig: {
        "checkpoint_every": 100, "eval_every": 100, "grad_clip": 1.0, "log_every": 20, "lr": 0.001,
        "max_failures": 3, "max_steps": 200, "micro_batch_size": 16, "seed": 0, "strategy": "fsdp",
        "test_pairs": 400, "warmup_steps": 10, "weight_decay": 0.0, "zero_stage": 2, "max_length": None,
    },
    DPOConfig: {
        "beta": 0.1, "checkpoint_every": 100, "eval_every": 100, "grad_clip": 1.0, "log_every": 20,
        "loss": "sigmoid", "lr": 0.002, "max_failures": 3, "max_new_tokens": 24, "max_steps": 200, "method": "lora",
        "micro_batch_size": 16, "nll_weight": 0.0, "seed": 0, "strategy": "fsdp", "test_pairs": 400,
        "warmup_steps": 10, "weight_decay": 0.0, "zero_stage": 2, "max_length": None,
    },
    StudentTraining: {
        "alpha": 0.5, "checkpoint_every": 100, "eval_every": 100, "grad_clip": 1.0, "log_every": 20, "lr": 0.003,
        "max_failures": 3, "max_steps": 300, "micro_batch_size": 16, "seed": 0, "strategy": "ddp",
        "temperature": 2.0, "warmup_steps": 10, "weight_decay": 0.0,
    },
}
PHASES = list(DEFAULTS)
DEEPSPEED = {PretrainConfig, FinetuneConfig, RewardConfig, DPOConfig}

# (field, the smallest value allowed, a value just out of bounds) as before TrainArgs.
BOUNDS = [
    ("max_steps", 1, 0), ("micro_batch_size", 1, 0), ("weight_decay", 0.0, -0.01), ("warmup_steps", 0, -1),
    ("log_every", 1, 0), ("eval_every", 1, 0), ("checkpoint_every", 1, 0), ("max_failures", 0, -1),
]


def make(cls, **values):
    return cls(**{**REQUIRED.get(cls, {}), **values})


def error_fields(cls, **values) -> list[tuple]:
    with pytest.raises(ValidationError) as info:
        make(cls, **values)
    return [e["loc"] for e in info.value.errors()]


@pytest.mark.parametrize("cls", PHASES, ids=lambda c: c.__name__)
def test_defaults_of_every_phase_are_unchanged(cls):
    dumped = make(cls).model_dump()
    assert {k: v for k, v in dumped.items() if not isinstance(v, dict)} == DEFAULTS[cls]


def test_nested_student_blocks_keep_their_defaults():
    assert DistillConfig().training.model_dump() == make(StudentTraining).model_dump()
    assert PruneConfig().recovery.model_dump() == {**DEFAULTS[StudentTraining], "max_steps": 100}


@pytest.mark.parametrize("cls", PHASES, ids=lambda c: c.__name__)
def test_every_phase_has_the_training_fields_with_descriptions(cls):
    assert issubclass(cls, TrainArgs)
    assert set(TrainArgs.model_fields) <= set(cls.model_fields)
    assert all(f.description for f in cls.model_fields.values())
    assert ("zero_stage" in cls.model_fields) == (cls in DEEPSPEED)
    base = DeepSpeedTrainArgs if cls in DEEPSPEED else TrainArgs
    for name, field in base.model_fields.items():  # a re-declared field keeps its type and bounds
        if not (cls is StudentTraining and name == "max_steps"):
            assert (cls.model_fields[name].annotation, cls.model_fields[name].metadata) == (field.annotation, field.metadata), name


@pytest.mark.parametrize("cls", PHASES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("name, low, bad", BOUNDS, ids=[b[0] for b in BOUNDS])
def test_bounds_are_kept_and_an_error_names_its_field(cls, name, low, bad):
    if cls is StudentTraining and name == "max_steps":
        low, bad = 0, -1  # 0: no training
    make(cls, **{name: low, "warmup_steps": 0})
    assert error_fields(cls, **{name: bad}) == [(name,)]


@pytest.mark.parametrize("cls", PHASES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("name", ["lr", "grad_clip"])
def test_positive_fields(cls, name):
    make(cls, **{name: 1e-9})
    assert error_fields(cls, **{name: 0}) == [(name,)]


@pytest.mark.parametrize("cls", PHASES, ids=lambda c: c.__name__)
def test_strategies_and_zero_stage(cls):
    for strategy in ("fsdp", "ddp"):
        assert make(cls, strategy=strategy).strategy == strategy
    assert error_fields(cls, strategy="tp") == [("strategy",)]
    if cls in DEEPSPEED:
        assert make(cls, strategy="deepspeed", zero_stage=1).zero_stage == 1
        assert error_fields(cls, zero_stage=0) == [("zero_stage",)]
        assert error_fields(cls, zero_stage=4) == [("zero_stage",)]
    else:  # classify and the student run DDP or FSDP only
        assert error_fields(cls, strategy="deepspeed") == [("strategy",)]
        assert error_fields(cls, zero_stage=2) == [("zero_stage",)]


@pytest.mark.parametrize("cls", PHASES, ids=lambda c: c.__name__)
def test_warmup_must_be_below_max_steps(cls):
    with pytest.raises(ValidationError, match=r"warmup_steps \(50\) must be below max_steps \(50\)"):
        make(cls, max_steps=50, warmup_steps=50)
    assert make(cls, max_steps=50, warmup_steps=49).warmup_steps == 49


def test_a_student_may_skip_training():
    assert StudentTraining(max_steps=0).max_steps == 0  # warmup_steps 10 is not checked against no steps
    assert PruneConfig(recovery={"max_steps": 0, "strategy": "fsdp"}).recovery.max_steps == 0
    assert error_fields(PretrainConfig, max_steps=0) == [("max_steps",)]


def test_student_eval_every():
    field = StudentTraining.model_fields["eval_every"]
    assert field.default == 100
    assert field.description == "Validation loss on held-out instructions every N steps (and at the end)."
    assert error_fields(StudentTraining, eval_every=0) == [("eval_every",)]


def test_unknown_fields_are_named():
    assert error_fields(FinetuneConfig, max_stpes=5) == [("max_stpes",)]
    assert error_fields(TrainArgs, foo=1) == [("foo",)]


def test_ppo_stays_apart():
    assert not issubclass(PPOConfig, TrainArgs)  # iterations of rollouts, not a Ray Train run


# TrainArgs.default: another default, the same field otherwise.

def test_default_keeps_bounds_and_description():
    base = TrainArgs.model_fields["max_steps"]
    field = TrainArgs.default("max_steps", 70)
    assert field.default == 70 and field.description == base.description

    class Phase(TrainArgs):
        max_steps: int = TrainArgs.default("max_steps", 70)
        lr: float = TrainArgs.default("lr", 0.5, "Another meaning.")

    assert Phase().max_steps == 70 and Phase().lr == 0.5
    assert Phase.model_fields["max_steps"].metadata == base.metadata
    assert Phase.model_fields["max_steps"].description == base.description
    assert Phase.model_fields["lr"].description == "Another meaning."
    assert Phase.model_fields["lr"].metadata == TrainArgs.model_fields["lr"].metadata
    with pytest.raises(ValidationError, match="max_steps"):
        Phase(max_steps=0)
    # the base class is untouched
    assert TrainArgs.model_fields["max_steps"].default == 200 and TrainArgs().lr == 1e-3
    assert TrainArgs.model_fields["lr"].description == "Peak learning rate (AdamW, betas 0.9/0.95)."


def test_default_of_a_subclass_field_and_two_bounds():
    class Phase(DeepSpeedTrainArgs):
        zero_stage: int = DeepSpeedTrainArgs.default("zero_stage", 3)

    assert Phase().zero_stage == 3
    assert Phase.model_fields["zero_stage"].metadata == DeepSpeedTrainArgs.model_fields["zero_stage"].metadata
    with pytest.raises(ValidationError):
        Phase(zero_stage=4)


def test_default_refuses_metadata_it_cannot_carry():
    class Named(BaseModel):
        name: str = Field("a", pattern="^[a-z]+$", description="A name.")
        default = classmethod(TrainArgs.default.__func__)

    with pytest.raises(TypeError, match="cannot carry"):
        Named.default("name", "b")
