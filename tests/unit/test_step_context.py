"""The step contract's context: the seconds a step times itself, which the engine logs per part."""

import time

import pytest

from components.artifact import StepContext


def test_a_step_context_sums_the_seconds_of_each_timed_part(tmp_path):
    ctx = StepContext("s", "finetune", tmp_path, tmp_path / "out", str(tmp_path), "sqlite://", "run", "key")
    for _ in range(2):
        with ctx.timed("score"):
            time.sleep(0.02)
    with pytest.raises(RuntimeError), ctx.timed("train"):
        raise RuntimeError("a failing part is timed too")
    assert 0.04 <= ctx.seconds["score"] < 1 and set(ctx.seconds) == {"score", "train"}
