"""lm-eval through the real engine: an evaluate step with lm_eval_tasks on a local Ray and a real
MLflow, its numbers in the step's metrics and run, a gate that reads them, and the same tasks
through the endpoint that the gate's deploy step serves (lm-eval's local-completions over HTTP)."""

import json

import yaml

from components import tracking
from tests.conftest import delete_serve_app, smoke_subset
from workflows import engine
from workflows.spec import load_spec

QUICK = ["pretrain.max_steps=40", "pretrain.warmup_steps=4", "pretrain.log_every=10", "pretrain.eval_every=20",
         "pretrain.checkpoint_every=20", "pretrain.eval_tokens=2000"]


def test_an_evaluate_step_runs_lm_eval_a_gate_reads_it_and_the_endpoint_scores_the_same(ray_address, serve_port, tmp_path):
    path = smoke_subset(tmp_path)
    spec = yaml.safe_load(path.read_text())
    spec["steps"]["instructions"] = {"uses": "instructions", "with": {"n_per_family": 20, "families": ["add", "reverse"]}}
    tasks = ["lifecycle_sst2", "lifecycle_mmlu", "lifecycle_instructions"]
    spec["steps"]["evaluate"] = {"uses": "evaluate", "needs": ["pretrain", "instructions"], "with": {
        "benchmarks": ["sst2", "mmlu"], "benchmark_limit": 8, "perturbations": [], "test_examples": 4, "lm_eval_tasks": tasks}}
    spec["steps"]["gate"] = {"uses": "gate", "needs": ["evaluate"], "with": {"min": {"lm_eval_lifecycle_sst2_acc": 0.0}}}
    spec["steps"]["deploy"] = {"uses": "deploy", "needs": ["gate"], "with": {"port": serve_port, "app_name": "lmeval", "wait": False}}
    # The same tasks on the live endpoint: the deployed model's tokenizer from its model step, its scores over HTTP.
    spec["steps"]["evaluate-endpoint"] = {"uses": "evaluate", "needs": ["pretrain", "instructions", "deploy"], "with": {
        "benchmarks": [], "benchmark_limit": 8, "perturbations": [], "test_examples": 1, "lm_eval_tasks": tasks}}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    workdir = tmp_path / "wd"
    try:
        _, outcomes = engine.run(load_spec(path, QUICK), workdir, ray_address)
    finally:
        delete_serve_app("lmeval")
    assert [o.state for o in outcomes] == ["done"] * 8, [o.error for o in outcomes]
    evaluation = next(o.artifact for o in outcomes if o.step == "evaluate")
    metrics = evaluation.metrics
    # The same 8 items per suite, scored by lm-eval and by the step's replicas: the same accuracy.
    for suite in ("sst2", "mmlu"):
        assert metrics[f"lm_eval_lifecycle_{suite}_acc"] == metrics[f"accuracy_{suite}"]
    results = json.loads((evaluation.path / "lm_eval.json").read_text())
    assert results["n-samples"]["lifecycle_sst2"]["effective"] == 8
    # lifecycle_instructions answered the step's instructions test split, every item of it.
    split = next(o.artifact for o in outcomes if o.step == "instructions").path / "test.jsonl"
    assert results["n-samples"]["lifecycle_instructions"]["effective"] == len(split.read_text().splitlines())
    assert 0 <= metrics["lm_eval_lifecycle_instructions_exact_match"] <= 1
    logged = tracking.run_metrics(tracking.tracking_uri_for(workdir), evaluation.run_id)
    assert logged["lm_eval_lifecycle_mmlu_acc"] == metrics["lm_eval_lifecycle_mmlu_acc"] and logged["seconds_lm_eval"] > 0
    assert next(o.artifact for o in outcomes if o.step == "gate").metrics["passed"] == 1.0

    # Through the endpoint: the same items, the same accuracy, the same greedy answers' exact match. One mmlu item is
    # longer than the model's 96-token context: lm-eval truncates it to the served context (no 400), though not
    # to the same window as in-process (docs/architecture.md), so mmlu is compared for its item count only.
    served = next(o.artifact for o in outcomes if o.step == "evaluate-endpoint")
    for metric in ("lm_eval_lifecycle_sst2_acc", "lm_eval_lifecycle_instructions_exact_match"):
        assert served.metrics[metric] == metrics[metric], metric
    assert json.loads((served.path / "lm_eval.json").read_text())["n-samples"]["lifecycle_mmlu"]["effective"] == 8
    print(f"mmlu accuracy in-process {metrics['lm_eval_lifecycle_mmlu_acc']:.3f}, endpoint {served.metrics['lm_eval_lifecycle_mmlu_acc']:.3f}")
    client = tracking.client(tracking.tracking_uri_for(workdir))
    deployed = next(o.artifact for o in outcomes if o.step == "deploy")
    assert client.get_run(served.run_id).data.tags["lifecycle.lm_eval_model"] == f"endpoint {deployed.metrics['url']}"
    assert client.get_run(evaluation.run_id).data.tags["lifecycle.lm_eval_model"] == "in-process"
