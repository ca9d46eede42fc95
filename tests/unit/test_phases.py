"""The phase table's facts: what trains weights, what runs under Ray Train, and where `lifecycle plan`
reads a step's training setup; each is checked against the configs it names. No Ray."""

import argparse
import json
import typing
from dataclasses import fields

import pytest
from pydantic import BaseModel

from tests.conftest import ROOT
from workflows.phases import PHASES, Sizing, load
from workflows.plan import add_plan_parser, run_plan
from workflows.plan_spec import training_setup
from workflows.spec import SpecError, load_spec

RAY_TRAIN = sorted(n for n, p in PHASES.items() if p.runner == "ray_train")
SIZING_FIELDS = [f.name for f in fields(Sizing) if f.type in ("str | None", "str") and f.name != "block"]


def _block(phase: str) -> type[BaseModel]:
    """The pydantic class of the phase's training block (the config, or the sub-config it names)."""
    config = load(PHASES[phase].config)
    sizing = PHASES[phase].sizing
    return config.model_fields[sizing.block].annotation if sizing.block else config


def _choices(model: type[BaseModel], name: str) -> tuple:
    return typing.get_args(model.model_fields[name].annotation)


def test_the_ray_train_phases_include_classify():
    assert RAY_TRAIN == ["classify", "distill", "dpo", "finetune", "pretrain", "prune", "reward"]
    assert [n for n, p in PHASES.items() if p.runner == "actors"] == ["ppo", "grpo"]


def test_runner_and_sizing_go_together():
    for name, phase in PHASES.items():
        assert (phase.sizing is not None) == (phase.runner == "ray_train"), name
        assert (phase.placement is not None) == (phase.runner == "actors"), name


def test_weight_trainers_consume_a_model():
    for name, phase in PHASES.items():
        if phase.trains_weights:
            assert "model" in phase.needs, name
    assert not PHASES["pretrain"].trains_weights  # it builds its model; there is no input to have quantized


@pytest.mark.parametrize("phase", RAY_TRAIN)
def test_every_field_the_planner_reads_is_on_the_config(phase):
    sizing = PHASES[phase].sizing
    block = _block(phase)
    assert issubclass(block, BaseModel)
    for name in ("strategy", "max_steps", "micro_batch_size"):
        assert name in block.model_fields, f"{phase}: {name}"
    for attr in SIZING_FIELDS:
        name = getattr(sizing, attr)
        assert name is None or name in block.model_fields, f"{phase}: Sizing.{attr} = {name!r}"
    # The ZeRO stage is read under deepspeed: a phase that may use it names its stage field.
    assert ("deepspeed" in _choices(block, "strategy")) == (sizing.stage is not None), phase
    if sizing.reference:
        assert sizing.method is not None and "full" in _choices(block, sizing.method), phase
    if sizing.sweep:
        sweep = next(t for t in _choices(block, sizing.sweep) if t is not type(None))
        assert "max_concurrent_trials" in sweep.model_fields, phase


@pytest.mark.parametrize("phase", RAY_TRAIN)
def test_training_setup_reads_each_default_config(phase):
    config = load(PHASES[phase].config)
    cfg = config(task="sst2") if phase == "classify" else config()
    for on_gpu in (False, True):
        setup = training_setup(phase, cfg, on_gpu)
        if setup is None:  # a block with max_steps 0 trains nothing
            continue
        assert setup["strategy"] in ("ddp", "fsdp", "deepspeed") and setup["batch"] >= 1, phase
        assert setup["trials"] >= 1 and setup["frozen_copies"] in (0, 1), phase


def test_training_setup_follows_the_sizing_facts():
    from components.classify.config import ClassifyConfig
    from components.compress.config import DistillConfig, PruneConfig
    from components.rlhf.config import DPOConfig

    assert training_setup("dpo", DPOConfig(method="full"), False)["frozen_copies"] == 1
    assert training_setup("dpo", DPOConfig(method="lora"), False)["frozen_copies"] == 0  # the reference: adapter off
    assert training_setup("dpo", DPOConfig(micro_batch_size=3), False)["batch"] == 6  # chosen + rejected
    assert training_setup("distill", DistillConfig(training={"alpha": 0.0}), False)["frozen_copies"] == 0
    assert training_setup("prune", PruneConfig(recovery={"max_steps": 0}), False) is None
    classify = training_setup("classify", ClassifyConfig(task="mnli", max_length=64, method="lora"), True)
    assert classify["seq"] == 64 and classify["stage"] is None and classify["precision"] == "fp32"
    assert not classify["vocab_logits"] and classify["notes"][0] == "lora counted as training every weight (upper bound)"
    with pytest.raises(ValueError, match="not a Ray Train phase"):
        training_setup("ppo", None, False)


def test_plan_spec_plans_the_classify_steps(capsys):
    parser = argparse.ArgumentParser(prog="lifecycle")
    add_plan_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["plan", "--spec", str(ROOT / "workflows" / "encoder-tiny.yaml"), "--json"])
    assert run_plan(args) == 0
    plan = json.loads(capsys.readouterr().out)
    steps = {s["step"]: s for s in plan["steps"]}
    assert list(steps) == ["pretrain", "sst2", "mnli", "ner", "distill-mnli", "prune-mnli"]
    for name in ("sst2", "mnli", "ner"):
        step = steps[name]
        assert step["phase"] == "classify" and step["planned"] and step["model_from"] == "pretrain"
        assert step["seq"] == 128 and step["micro_batch"] == 16 and step["strategy"] == "ddp"
        assert not any("logits" in note for note in step["notes"])  # a task head, not a vocabulary


def test_no_training_step_after_a_quantize_step(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("""\
name: t
steps:
  corpus: {uses: data}
  tok: {uses: tokenizer, needs: [corpus]}
  pre: {uses: pretrain, needs: [corpus, tok]}
  instructions: {uses: instructions}
  q: {uses: quantize, needs: [pre]}
  tune: {uses: finetune, needs: [q, instructions, corpus]}
""")
    with pytest.raises(SpecError, match=r"step 'tune' \(finetune\) would train on and merge into 'q'"):
        load_spec(path)
