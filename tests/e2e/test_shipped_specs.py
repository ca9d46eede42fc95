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


def test_smoke_spec(ray_address, tmp_path):
    out = lifecycle("run", str(ROOT / "workflows" / "smoke.yaml"), "--workdir", str(tmp_path), "--address", ray_address, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "workflow run" in out.stdout and "ppl" in out.stdout
    assert pretrain_metrics(tmp_path)["ppl_final"] < pretrain_metrics(tmp_path)["ppl_initial"] / 4
    losses = loss_history(tmp_path, "finetune")  # response-token loss: instruction tuning learns
    assert losses[-1] < losses[0] * 0.85, losses
    assert list((tmp_path / "artifacts").glob("finetune-*/adapter/adapter_model.safetensors"))


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
