"""The shipped specs end to end through the `lifecycle` command, as a user runs them."""

import json
import time

import mlflow
import openai

from components import tracking
from tests.conftest import ROOT, delete_serve_app, lifecycle


def step_run(workdir, step):
    uri = tracking.tracking_uri_for(workdir)
    (run,) = mlflow.MlflowClient(uri).search_runs([tracking.experiment_id(uri)], f"tags.`lifecycle.step` = '{step}'")
    return run


def pretrain_metrics(workdir):
    return step_run(workdir, "pretrain").data.metrics


def loss_history(workdir, step):
    client = mlflow.MlflowClient(tracking.tracking_uri_for(workdir))
    return [m.value for m in client.get_metric_history(step_run(workdir, step).info.run_id, "loss")]


def ask_endpoint(out: str, model: str) -> openai.types.Completion:
    """The endpoint the run printed, asked one greedy completion with the official client."""
    url = next(word for word in out.split() if word.startswith("http://") and word.endswith("/v1"))
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)
    assert model in [m.id for m in client.models.list().data]
    return client.completions.create(model=model, prompt="### Instruction:\nCount the words: cat dog sun\n\n### Response:\n",
                                     max_tokens=4, temperature=0)


def test_smoke_spec_evaluates_gates_deploys_and_blocks_a_regression(ray_address, serve_port, tmp_path):
    spec = str(ROOT / "workflows" / "smoke.yaml")
    out = lifecycle("run", spec, f"deploy.port={serve_port}", "--no-wait", "--workdir", str(tmp_path), "--address", ray_address,
                    timeout=600)
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

    # The approved model is live (the app outlives the driver on a cluster) and holds the alias.
    answer = ask_endpoint(out.stdout, "smoke-finetune")
    assert answer.usage.completion_tokens >= 1
    uri = tracking.tracking_uri_for(tmp_path)
    assert tracking.model_version_by_alias(uri, "smoke-finetune", "production")["version"] == "1"
    delete_serve_app("lifecycle")  # its replica's CPU is needed for training again

    # A barely trained model must not replace the deployed one.
    worse = lifecycle("run", spec, "finetune.max_steps=2", "finetune.warmup_steps=1", f"deploy.port={serve_port}", "--no-wait",
                      "--workdir", str(tmp_path), "--address", ray_address, timeout=600)
    assert worse.returncode == 1, worse.stdout + worse.stderr
    assert "gate blocked finetune: response_nll" in worse.stdout and "from the deployed" in worse.stdout
    assert tracking.model_version_by_alias(uri, "smoke-finetune", "production")["version"] == "1"


def test_tiny_spec_cuts_perplexity_tenfold_serves_then_reruns_cached(ray_address, serve_port, tmp_path):
    spec = str(ROOT / "workflows" / "tiny.yaml")
    started = time.time()
    serving = (f"deploy.port={serve_port}", "--no-wait", "--workdir", str(tmp_path), "--address", ray_address)
    out = lifecycle("run", spec, *serving, timeout=1200)
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

    # Both checkpoints evaluated on the same data; the report compares them; the gate let it through.
    base, tuned = (step_run(tmp_path, s).data.metrics for s in ("eval-pretrain", "eval-finetune"))
    print(f"tiny evaluation: exact match {base['exact_match']:.1%} -> {tuned['exact_match']:.1%}, response nll "
          f"{base['response_nll']:.2f} -> {tuned['response_nll']:.2f}, rougeL {base['rougeL_f1']:.3f} -> {tuned['rougeL_f1']:.3f}, "
          f"benchmark accuracy {base['accuracy']:.3f} -> {tuned['accuracy']:.3f}")
    assert tuned["exact_match"] > base["exact_match"] and tuned["response_nll"] < base["response_nll"] / 2
    assert tuned["rougeL_f1"] > base["rougeL_f1"]
    assert "| pretrain | eval-pretrain |" in out.stdout and "| finetune | eval-finetune |" in out.stdout
    assert step_run(tmp_path, "gate").data.tags["lifecycle.gate"] == "passed"
    assert ask_endpoint(out.stdout, "tiny-finetune-adapter").choices[0].text is not None  # LoRA over the base, multiplexed

    started = time.time()
    again = lifecycle("run", spec, *serving, timeout=600)
    print(f"tiny cached re-run: {time.time() - started:.1f}s")
    assert again.returncode == 0, again.stdout + again.stderr
    runs = json.loads(lifecycle("status", "--workdir", str(tmp_path), "--json").stdout)
    assert [s["state"] for s in runs[0]["steps"]] == ["cached"] * 8 + ["done"]  # an endpoint is never a cache hit
    assert ask_endpoint(again.stdout, "tiny-finetune").usage.completion_tokens >= 1
    delete_serve_app("lifecycle")
