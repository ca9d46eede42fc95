"""lm-evaluation-harness in the evaluate phase, without Ray: the lifecycle tasks score the bundled
suites exactly as the phase's own scorer does, and the config check refuses unknown task names."""

import pytest
from transformers import AutoTokenizer

from components.core.metrics import choose, option_logprobs
from components.core.models import load_trained
from components.data.benchmarks import load_benchmark
from components.evaluate import harness
from components.evaluate.config import EvaluateConfig, GateConfig, check
from components.evaluate.gate import decide
from tests.checkpoints import save_checkpoint


def test_lifecycle_tasks_choose_as_the_evaluate_phase_does_item_by_item(tmp_path):
    model_dir = save_checkpoint(tmp_path / "gpt2", "gpt2")  # untrained: near-even options, a strict test of agreement
    out = harness.evaluate(model_dir, [harness.TAG], batch_size=16, log_samples=True)
    found = harness.metrics(out["results"])
    model, tokenizer = load_trained(model_dir), AutoTokenizer.from_pretrained(model_dir)
    for suite in harness.SUITES:
        items = load_benchmark(suite)
        ours = option_logprobs(model, tokenizer, [i.context for i in items], [list(i.options) for i in items])
        samples = sorted(out["samples"][f"lifecycle_{suite}"], key=lambda s: s["doc_id"])
        assert [(s["doc"]["context"], tuple(s["doc"]["options"]), s["target"]) for s in samples] == \
               [(i.context, i.options, i.label) for i in items]
        theirs = [[loglikelihood for loglikelihood, _ in s["filtered_resps"]] for s in samples]
        assert [choose(lp) for lp in theirs] == [choose(lp) for lp in ours], suite
        assert max(abs(a - b) for x, y in zip(theirs, ours) for a, b in zip(x, y)) < 1e-4, suite
        # lm-eval's acc is the step's accuracy_<suite>: argmax of the summed log-likelihoods.
        assert found[f"lm_eval_lifecycle_{suite}_acc"] == pytest.approx(sum(choose(lp) == i.label for lp, i in zip(ours, items)) / len(items))


def test_the_config_check_refuses_unknown_task_names_and_names_close_ones():
    with pytest.raises(ValueError, match=r"field 'lm_eval_tasks': unknown lm-eval task 'lifecycle_sst' \(close: lifecycle_sst2"):
        check(EvaluateConfig(lm_eval_tasks=["lifecycle_sst"]))
    # lm-eval's own registry too (its index, ~8 s): hellaswag and the lifecycle tag are known, a typo is not.
    with pytest.raises(ValueError, match=r"^field 'lm_eval_tasks': unknown lm-eval task 'hellaswg' \(close: [^)]*\bhellaswag\b[^;]*$"):
        check(EvaluateConfig(lm_eval_tasks=["hellaswag", "lifecycle", "hellaswg"]))
    # A lifecycle task reads its suite where benchmark_paths says, whether or not `benchmarks` scores it too.
    with pytest.raises(ValueError, match=r"field 'benchmark_paths.mnli': /nowhere/mnli.jsonl does not exist"):
        check(EvaluateConfig(benchmarks=[], lm_eval_tasks=["lifecycle_mnli"], benchmark_paths={"mnli": "/nowhere/mnli.jsonl"}))
    assert check(EvaluateConfig(benchmarks=[], lm_eval_tasks=["lifecycle_sst2", "lifecycle_mmlu"])).lm_eval_tasks


def test_task_files_metric_names_and_a_gate_on_them():
    assert harness.own_tasks() == sorted([harness.TAG, harness.INSTRUCTIONS, *(f"lifecycle_{s}" for s in harness.SUITES)])
    assert harness.suites_of(["lifecycle_mmlu", "gsm8k", "lifecycle_sst2"]) == ["sst2", "mmlu"]
    results = {"lifecycle_sst2": {"alias": "lifecycle_sst2", "acc,none": 0.75, "acc_stderr,none": 0.07, "acc_norm,none": 0.5},
               "gsm8k": {"exact_match,strict-match": 0.25, "exact_match_stderr,strict-match": "N/A"}}
    flat = harness.metrics(results)
    assert flat == {"lm_eval_lifecycle_sst2_acc": 0.75, "lm_eval_lifecycle_sst2_acc_norm": 0.5, "lm_eval_gsm8k_exact_match_strict_match": 0.25}
    assert decide(flat, GateConfig(min={"lm_eval_lifecycle_sst2_acc": 0.6}), None) == []
    assert decide(flat, GateConfig(min={"lm_eval_lifecycle_sst2_acc": 0.8}), None) == ["lm_eval_lifecycle_sst2_acc 0.75 < min 0.8"]
