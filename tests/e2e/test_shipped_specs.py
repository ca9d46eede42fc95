"""The shipped specs end to end through the `lifecycle` command, as a user runs them."""

import json
import time

import mlflow

from components import tracking
from tests.conftest import ROOT, lifecycle


def step_run(workdir, step):
    uri = tracking.tracking_uri_for(workdir)
    (run,) = mlflow.MlflowClient(uri).search_runs([tracking.experiment_id(uri)], f"tags.`lifecycle.step` = '{step}'")
    return run


def pretrain_metrics(workdir):
    return step_run(workdir, "pretrain").data.metrics


def loss_history(workdir, step):
    client = mlflow.MlflowClient(tracking.tracking_uri_for(workdir))
    return [m.value for m in client.get_metric_history(step_run(workdir, step).info.run_id, "loss")]


def test_smoke_spec_evaluates_gates_and_blocks_a_regression(ray_address, tmp_path):
    spec = str(ROOT / "workflows" / "smoke.yaml")
    out = lifecycle("run", spec, "--workdir", str(tmp_path), "--address", ray_address, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "workflow run" in out.stdout and "ppl" in out.stdout
    assert pretrain_metrics(tmp_path)["ppl_final"] < pretrain_metrics(tmp_path)["ppl_initial"] / 4
    losses = loss_history(tmp_path, "finetune")  # response-token loss: instruction tuning learns
    assert losses[-1] < losses[0] * 0.85, losses
    assert list((tmp_path / "artifacts").glob("finetune-*/adapter/adapter_model.safetensors"))

    # Evaluation through Ray Data: every metric family, and the report printed at the end.
    scores = step_run(tmp_path, "evaluate").data.metrics
    for key in ("perplexity", "response_nll", "exact_match", "exact_match_add", "rougeL_f1", "bleu", "tokens_per_s",
                "accuracy_sst2", "accuracy_mnli", "accuracy_boolq", "accuracy_mmlu", "ece_mmlu", "robustness_boolq"):
        assert key in scores, key
    assert 0 < scores["perplexity"] < 1000 and scores["tokens_per_s"] > 0
    assert "| finetune | evaluate |" in out.stdout
    gate = step_run(tmp_path, "gate")
    assert gate.data.tags["lifecycle.gate"] == "passed"
    runs = json.loads(lifecycle("status", "--workdir", str(tmp_path), "--json").stdout)
    report = lifecycle("report", runs[0]["run_id"], "--workdir", str(tmp_path), "--html", str(tmp_path / "r.html"))
    assert report.returncode == 0 and "response_nll" in report.stdout and "<img" in (tmp_path / "r.html").read_text()

    # Deploy would set this alias; then a barely trained model must not replace the deployed one.
    uri = tracking.tracking_uri_for(tmp_path)
    tracking.set_model_alias(uri, "smoke-finetune", "production", "1")
    worse = lifecycle("run", spec, "finetune.max_steps=2", "finetune.warmup_steps=1", "--workdir", str(tmp_path),
                      "--address", ray_address, timeout=600)
    assert worse.returncode == 1, worse.stdout + worse.stderr
    assert "gate blocked finetune: response_nll" in worse.stdout and "from the deployed" in worse.stdout
    assert tracking.model_version_by_alias(uri, "smoke-finetune", "production")["version"] == "1"


def test_tiny_spec_cuts_perplexity_tenfold_then_reruns_fully_cached(ray_address, tmp_path):
    spec = str(ROOT / "workflows" / "tiny.yaml")
    started = time.time()
    out = lifecycle("run", spec, "--workdir", str(tmp_path), "--address", ray_address, timeout=1200)
    cold = time.time() - started
    assert out.returncode == 0, out.stdout + out.stderr
    metrics = pretrain_metrics(tmp_path)
    # The acceptance criterion: held-out perplexity at most a tenth of the untrained model's.
    assert metrics["ppl_final"] <= metrics["ppl_initial"] / 10, metrics
    print(f"tiny cold: {cold:.0f}s, ppl {metrics['ppl_initial']:.0f} -> {metrics['ppl_final']:.1f}, "
          f"{metrics['tokens_per_s']:.0f} tokens/s")

    # Instruction tuning with LoRA: far better at the held-out tasks, with a small share of the
    # weights and a small adapter file; forgetting of the pretraining text is measured.
    ft = step_run(tmp_path, "finetune").data.metrics
    families = {k.removeprefix("exact_match_after_"): round(v, 2) for k, v in ft.items() if k.startswith("exact_match_after_")}
    print(f"tiny finetune: exact match {ft['exact_match_before']:.1%} -> {ft['exact_match_after']:.1%} {families}, "
          f"LoRA {ft['trainable_params']:.0f} params ({ft['trainable_share']:.2%}), adapter {ft['adapter_share']:.2%} of the "
          f"model file, corpus ppl {ft['corpus_ppl_before']:.1f} -> {ft['corpus_ppl_after']:.1f}")
    assert ft["exact_match_before"] < 0.05
    # The tiny base is weak: LoRA on 1.7% of a 1M-parameter model gets a few tasks right
    # (closing note of issue 3), so the bar here is "measurably better", not the 60% target.
    assert ft["exact_match_after"] >= ft["exact_match_before"] + 0.02
    losses = loss_history(tmp_path, "finetune")
    assert losses[-1] < losses[0] / 2, losses  # response-token loss
    assert ft["trainable_share"] < 0.02 and ft["adapter_share"] < 0.05
    assert ft["corpus_ppl_after"] > 0 and ft["forgetting_ppl_ratio"] > 0

    started = time.time()
    again = lifecycle("run", spec, "--workdir", str(tmp_path), "--address", ray_address, timeout=600)
    print(f"tiny cached re-run: {time.time() - started:.1f}s")
    assert again.returncode == 0
    runs = json.loads(lifecycle("status", "--workdir", str(tmp_path), "--json").stdout)
    assert [s["state"] for s in runs[0]["steps"]] == ["cached"] * 5
