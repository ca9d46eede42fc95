"""Typed config of the evaluate phase (`uses: evaluate`) and of the gate (`uses: gate`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from components.data.benchmarks import bundled_path
from components.data.corpus import DataError

BENCHMARKS = ("sst2", "mnli", "boolq", "mmlu", "rte")  # components.data.benchmarks.FORMATS; rte has no bundled copy
PERTURBATIONS = ("typo", "case", "whitespace")


class EvaluateConfig(BaseModel):
    """Score one model on held-out text, the instruction test split and benchmark suites, on model replicas (Ray tasks or Ray Data)."""

    model_config = ConfigDict(extra="forbid")
    eval_tokens: int = Field(20000, ge=100, description="Validation-corpus tokens scored for perplexity (needs a dataset input).")
    segment_tokens: int = Field(2048, ge=64, description="Tokens per perplexity work item; each is scored with a sliding window.")
    test_examples: int = Field(300, ge=1, description="Instruction test examples answered greedily (needs an instructions input; "
                               "fewer than the split: taken from every family in turn).")
    max_new_tokens: int = Field(16, ge=1, description="Generation budget per instruction answer, in tokens.")
    benchmarks: list[str] = Field(
        default_factory=lambda: ["sst2", "mnli", "boolq", "mmlu"],
        description=f"Suites scored by option log-likelihood: any of {', '.join(BENCHMARKS)} (bundled copies but rte's).",
    )
    benchmark_paths: dict[str, str] = Field(
        default_factory=dict,
        description="Per suite, a local file/directory in its public format or 'hf:<dataset>[/<config>]' instead of the bundled copy.",
    )
    benchmark_limit: int | None = Field(None, ge=1, description="Items per suite at most (None: all).")
    perturbations: list[Literal["typo", "case", "whitespace"]] = Field(
        default_factory=lambda: ["typo"], description="Prompt perturbations for the robustness axis (accuracy on perturbed prompts)."
    )
    lm_eval_tasks: list[str] = Field(
        default_factory=list,
        description="EleutherAI lm-evaluation-harness tasks run in-process on the model (lm-eval's HFLM, on a replica's "
                    "resources), or, when the step also needs a deploy step serving that model, against its live endpoint "
                    "(lm-eval's local-completions client over HTTP): this project's offline lifecycle_sst2, lifecycle_mnli, "
                    "lifecycle_boolq, lifecycle_mmlu (the tag `lifecycle`: all four; the items and prompts of `benchmarks`, "
                    "from benchmark_paths or the bundled copies) or any task of lm-eval's registry (hellaswag, arc_easy, mmlu, gsm8k: their data from the "
                    "Hugging Face hub). Metrics lm_eval_<task>_<metric>, e.g. lm_eval_lifecycle_sst2_acc.",
    )
    lm_eval_limit: int | None = Field(
        None, ge=1, description="Items per lm-eval task at most (lm-eval's `limit`; None: all). The lifecycle tasks "
                                "also stop at benchmark_limit, as the step's own suites do."
    )
    batch_size: int = Field(16, ge=1, description="Work items per batch on a model replica; also lm-eval's batch size.")
    endpoint_concurrency: int = Field(1, ge=1, le=64, description="Requests lm-eval keeps in flight against an endpoint input.")
    endpoint_batch: int = Field(16, ge=1, le=16, description="Prompts per request lm-eval sends to an endpoint input (the "
                                "endpoint takes 16 at most, and counts each against its max_ongoing_requests).")
    replicas: int | None = Field(None, ge=1, description="Model replicas at most; None: the spec's scale.workers.")
    ray_data_min_items: int = Field(
        5000, ge=0,
        description="Stream the work items through a Ray Data actor pool from this many on; fewer are split evenly over "
                    "plain Ray tasks, which skip the pool's start-up (about 6 s of a 29 s step on 2 CPUs).",
    )
    seed: int = Field(0, description="Seed of the prompt perturbations.")

    @field_validator("benchmarks")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        for name in value:
            if name not in BENCHMARKS:
                raise ValueError(f"unknown benchmark {name!r} (known: {', '.join(BENCHMARKS)})")
        return value


class GateConfig(BaseModel):
    """Rules a model's evaluation must pass before it may be deployed."""

    model_config = ConfigDict(extra="forbid")
    min: dict[str, float] = Field(default_factory=dict, description="Metric floors, e.g. {exact_match: 0.6}.")
    max: dict[str, float] = Field(default_factory=dict, description="Metric ceilings, e.g. {perplexity: 200}, or "
                                  "{forgetting_ratio: 2} (pretraining-text perplexity at most twice the pretrained origin's).")
    no_regression: dict[str, float] = Field(
        default_factory=dict,
        description="Per metric, the largest allowed drop below the deployed version (same registered model, "
        "alias `baseline_alias`), in the metric's units; e.g. {exact_match: 0.01} is one point.",
    )
    lower_is_better: list[str] = Field(
        default_factory=lambda: ["perplexity", "forgetting_ratio", "response_nll", "calibration_ece"],
        description="Metrics where a rise (not a drop) is the regression.",
    )
    baseline_alias: str = Field("production", description="MLflow model alias of the deployed version to compare against.")
    on_fail: Literal["block", "warn"] = Field("block", description="block: fail the step and stop the deploy; warn: log and pass.")


def check(cfg: EvaluateConfig, workdir: Path | None = None) -> EvaluateConfig:
    """Before Ray starts: lm_eval_tasks are tasks lm-eval knows (this project's or its registry's),
    and the benchmark files of the suites and lifecycle tasks asked for load."""
    if cfg.lm_eval_tasks:
        from components.evaluate import harness  # deferred: lm_eval's import (~1 s) is for steps that ask for it

        problems = harness.unknown_tasks(cfg.lm_eval_tasks)
        if problems:
            raise ValueError(f"field 'lm_eval_tasks': {'; '.join(problems)}")
        suites = list(dict.fromkeys([*cfg.benchmarks, *harness.suites_of(cfg.lm_eval_tasks)]))
    else:
        suites = list(cfg.benchmarks)
    for task in suites:
        path = cfg.benchmark_paths.get(task)
        if path is None:
            try:
                bundled_path(task)
            except DataError as e:
                raise ValueError(f"field 'benchmark_paths.{task}': {e}") from None
        elif not path.startswith("hf:") and not os.path.exists(path):
            raise ValueError(f"field 'benchmark_paths.{task}': {path} does not exist")
    for task in set(cfg.benchmark_paths) - set(suites):
        raise ValueError(f"field 'benchmark_paths.{task}': {task!r} is not in benchmarks {cfg.benchmarks} "
                         f"nor read by a lifecycle_ task of lm_eval_tasks")
    return cfg
