"""The gate before deploy: threshold and no-regression rules over an evaluation's metrics.

`decide` is the rule check (plain data in, reasons out); `run` is the step: it compares the
evaluated model with the version currently deployed (the registered model's `production`
alias, whose evaluation run the gate recorded when it let that version through) and either
approves the model or stops the workflow, saying why.
"""

from __future__ import annotations

import json

from components import tracking
from components.artifact import Artifact, StepContext
from components.evaluate.config import GateConfig


class GateBlocked(RuntimeError):
    """The model failed the gate; the message lists every rule it broke."""


def decide(metrics: dict[str, float], cfg: GateConfig, baseline: dict[str, float] | None) -> list[str]:
    """Every broken rule, as a sentence; an empty list means the model passes.

    metrics: the candidate's evaluation. baseline: the deployed version's evaluation, or None
    when nothing is deployed yet (no-regression rules then pass). A metric a rule names but the
    evaluation lacks is a failure: a gate must not pass by omission.
    """
    failures = []
    for name, floor in cfg.min.items():
        if name not in metrics:
            failures.append(f"{name}: not measured (rule min {floor:g})")
        elif metrics[name] < floor:
            failures.append(f"{name} {metrics[name]:.4g} < min {floor:.4g}")
    for name, ceiling in cfg.max.items():
        if name not in metrics:
            failures.append(f"{name}: not measured (rule max {ceiling:g})")
        elif metrics[name] > ceiling:
            failures.append(f"{name} {metrics[name]:.4g} > max {ceiling:.4g}")
    for name, tolerance in cfg.no_regression.items():
        if baseline is None or name not in baseline:
            continue
        if name not in metrics:
            failures.append(f"{name}: not measured (rule no_regression)")
            continue
        # Signed so that a positive drop is always a regression.
        drop = (metrics[name] - baseline[name]) if name in cfg.lower_is_better else (baseline[name] - metrics[name])
        if drop > tolerance:
            failures.append(f"{name} {metrics[name]:.4g} regresses {drop:.4g} from the deployed {baseline[name]:.4g} "
                            f"(allowed {tolerance:.4g})")
    return failures


def run(cfg: GateConfig, inputs: dict[str, Artifact], ctx: StepContext) -> Artifact:
    """Approve the evaluated model for deploy, or raise GateBlocked naming the broken rules."""
    evaluation = next(a for a in inputs.values() if a.kind == "evaluation")
    metrics = {k: float(v) for k, v in evaluation.metrics.items() if isinstance(v, (int, float))}
    name = str(evaluation.metrics.get("registered_model", ""))
    deployed = tracking.model_version_by_alias(ctx.tracking_uri, name, cfg.baseline_alias) if name else None
    baseline = tracking.run_metrics(ctx.tracking_uri, deployed["evaluation_run"]) if deployed and deployed.get("evaluation_run") else None
    failures = decide(metrics, cfg, baseline)

    decision = {
        "passed": not failures, "failures": failures, "model_uri": evaluation.metrics.get("model_uri"),
        "model_run_id": evaluation.metrics.get("model_run_id"), "registered_model": name,
        "registered_version": evaluation.metrics.get("registered_version"), "evaluation_run": evaluation.run_id,
        "baseline": {"version": deployed["version"], "metrics": {k: baseline[k] for k in cfg.no_regression if k in baseline}}
        if deployed and baseline else None,
        "rules": cfg.model_dump(),
    }
    (ctx.output_dir / "decision.json").write_text(json.dumps(decision, indent=1))
    tracking.log_dict(ctx.tracking_uri, ctx.run_id, decision, "decision.json")
    tracking.set_tags(ctx.tracking_uri, ctx.run_id, {"lifecycle.gate": "passed" if not failures else "blocked",
                                                     "lifecycle.gate_reasons": "; ".join(failures)[:4000]})
    if failures and cfg.on_fail == "block":
        raise GateBlocked(f"gate blocked {evaluation.metrics.get('evaluated_step', 'the model')}: " + "; ".join(failures))
    if name and decision["registered_version"]:
        # A later run's no-regression rules compare with this evaluation once the version is deployed.
        tracking.tag_model_version(ctx.tracking_uri, name, str(decision["registered_version"]),
                                   {"lifecycle.evaluation_run": evaluation.run_id, "lifecycle.gate": "passed"})
    headline = "passed" if not failures else f"warned: {'; '.join(failures)}"
    keep = {k: v for k, v in decision.items() if isinstance(v, (str, int, float)) and not isinstance(v, bool)}
    return Artifact(str(ctx.output_dir), "approval", ctx.run_id, ctx.cache_key, {**keep, "passed": float(not failures)}, headline)
