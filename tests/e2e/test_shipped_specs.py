"""The shipped specs end to end through the `lifecycle` command, as a user runs them."""

import json
from pathlib import Path

import httpx
import mlflow
import openai
import pytest
import yaml

from components import tracking
from components.core.metrics import exact_match
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


def paired_exact_match_gap(workdir, base_step: str, other_step: str) -> tuple[float, float]:
    """(gap, its standard error): exact match of evaluate step `other_step` less `base_step`, paired over
    the prompts both answered (their predictions.jsonl), in fractions of the prompts."""
    uri = tracking.tracking_uri_for(workdir)

    def hits(step):
        path = tracking.step_artifact(uri, step_run(workdir, step).info.run_id).path / "predictions.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        return {r["prompt"]: float(exact_match(r["answer"], r["reference"])) for r in rows}

    base, other = hits(base_step), hits(other_step)
    diffs = [other[p] - base[p] for p in base if p in other]
    mean = sum(diffs) / len(diffs)
    return mean, (sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)) ** 0.5 / len(diffs) ** 0.5


def printed_url(out: str, path: str) -> str:
    """The first URL in the run's output that ends with `path`."""
    return next(word for word in out.split() if word.startswith("http://") and word.endswith(path))


def ask_endpoint(out: str, model: str) -> openai.types.Completion:
    """The endpoint the run printed, asked one greedy completion with the official client."""
    url = printed_url(out, "/v1")
    client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=60)
    assert model in [m.id for m in client.models.list().data]
    return client.completions.create(model=model, prompt="### Instruction:\nCount the words: cat dog sun\n\n### Response:\n",
                                     max_tokens=4, temperature=0)


def test_tiny_spec_end_to_end_serves_and_gates_a_regression(tiny_run):
    # The fully cached re-run is checked by the notebooks' test: the quickstart notebook re-runs this spec.
    spec, out, serving, tmp_path = str(ROOT / "workflows" / "tiny.yaml"), tiny_run, tiny_run.serving, tiny_run.workdir
    metrics = pretrain_metrics(tmp_path)
    # The acceptance criterion: held-out perplexity at most a tenth of the untrained model's.
    assert metrics["ppl_final"] <= metrics["ppl_initial"] / 10, metrics
    print(f"tiny cold: {tiny_run.seconds:.0f}s, ppl {metrics['ppl_initial']:.0f} -> {metrics['ppl_final']:.1f}, "
          f"{metrics['tokens_per_s']:.0f} tokens/s")

    # Instruction tuning (full fine-tuning of the tiny model with a little pretraining text replayed; tiny.yaml says
    # why): far better at the held-out tasks, issue 3's target being at least 60% against under 5%, while keeping its
    # language, issue 31's target being the pretraining text's perplexity at most twice the pretrained model's.
    ft = step_run(tmp_path, "finetune").data.metrics
    families = {k.removeprefix("exact_match_after_"): round(v, 2) for k, v in ft.items() if k.startswith("exact_match_after_")}
    print(f"tiny finetune: exact match {ft['exact_match_before']:.1%} -> {ft['exact_match_after']:.1%} {families}, "
          f"corpus ppl {ft['corpus_ppl_before']:.1f} -> {ft['corpus_ppl_after']:.1f}")
    assert ft["exact_match_before"] < 0.05 and ft["exact_match_after"] >= 0.6
    losses = loss_history(tmp_path, "finetune")
    assert losses[-1] < losses[0] / 2, losses  # response-token loss
    # Forgetting is measured on the text the model was pretrained on: before = the pretrained model's perplexity there.
    assert ft["corpus_ppl_before"] == pytest.approx(metrics["ppl_final"], rel=0.05), (ft["corpus_ppl_before"], metrics)
    assert ft["forgetting_ppl_ratio"] == pytest.approx(ft["corpus_ppl_after"] / ft["corpus_ppl_before"], rel=1e-3)
    assert ft["forgetting_ppl_ratio"] <= 2.0, ft["forgetting_ppl_ratio"]  # full fine-tuning alone: x3,892
    # Where the step's time went (benchmarks/step_profile.py reads these): its parts lie within the whole.
    parts = {k: v for k, v in ft.items() if k.startswith("seconds_") and k != "seconds_step"}
    assert {"seconds_score_before", "seconds_ray_train", "seconds_export", "seconds_score_after"} <= set(parts), parts
    assert all(parts[f"seconds_{k}"] > 0 for k in ("score_before", "ray_train", "score_after")), parts
    assert sum(parts.values()) < ft["seconds_step"], (parts, ft["seconds_step"])  # a copy of a 4 MB export can take 0.01 s

    # RLHF: the reward model separates held-out pairs; PPO raises its score for a measured KL without
    # losing exact match (only a little: the reward model ranks the sums and translations this model
    # gets wrong at chance, issue 4's note); DPO's log-ratio prefers the chosen answers without losing exact match.
    rm, ppo, dpo = (step_run(tmp_path, s).data.metrics for s in ("reward", "ppo", "dpo"))
    print(f"tiny reward model: held-out pair accuracy {rm['test_accuracy_before']:.1%} -> {rm['test_accuracy']:.1%} "
          f"(corrupt {rm['test_accuracy_corrupt']:.1%}, off task {rm['test_accuracy_off_task']:.1%}, "
          f"unhelpful {rm['test_accuracy_unhelpful']:.1%})")
    print(f"tiny ppo: reward {ppo['reward_before']:.2f} -> {ppo['reward_after']:.2f} (gain's standard error "
          f"{ppo['reward_gain_se']:.2f}, higher on {ppo['reward_win_rate']:.0%} of prompts), KL {ppo['kl_to_reference']:.2f} nats, "
          f"exact match {ppo['exact_match_before']:.1%} -> {ppo['exact_match_after']:.1%}, iteration: generation "
          f"{ppo['iteration_generation_s']:.2f}s, scoring {ppo['iteration_scoring_s']:.2f}s, training {ppo['iteration_training_s']:.2f}s")
    print(f"tiny dpo: log-ratio accuracy {dpo['reward_accuracy_after']:.1%} (± {dpo['reward_accuracy_after_se']:.1%}), "
          f"log-prob preference accuracy {dpo['preference_accuracy_before']:.1%} -> {dpo['preference_accuracy_after']:.1%}, "
          f"exact match {dpo['exact_match_before']:.1%} -> {dpo['exact_match_after']:.1%}")
    # GRPO on checkable answers: the sampled reward rises, held-out exact match does not fall by more than two paired SEs.
    grpo = step_run(tmp_path, "grpo").data.metrics
    print(f"tiny grpo: exact match {grpo['exact_match_before']:.1%} -> {grpo['exact_match_after']:.1%} "
          f"({grpo['exact_match_gain']:+.1%} ± {grpo['exact_match_gain_se']:.1%} paired SE), KL {grpo['kl_to_reference']:.2f} nats, "
          f"reward {grpo['reward_first']:.2f} -> {grpo['reward_last']:.2f}, iteration: generation {grpo['iteration_generation_s']:.2f}s, "
          f"reference {grpo['iteration_reference_s']:.2f}s, training {grpo['iteration_training_s']:.2f}s")
    assert grpo["exact_match_gain"] >= -2 * grpo["exact_match_gain_se"] - 1e-9 and grpo["kl_to_reference"] < 1.0
    assert rm["test_accuracy"] >= 0.8 and rm["test_accuracy_unhelpful"] > 0.95  # issue 4's target is 0.9: see its note
    assert ppo["reward_after"] > ppo["reward_before"] and ppo["kl_to_reference"] > 0
    assert ppo["reference_unchanged"] == 1.0
    # An untrained policy's log-ratio is 0 on every pair (accuracy 0.5): the trained one's must clear that by 3 standard errors.
    assert dpo["reward_accuracy_after"] > 0.5 + 3 * dpo["reward_accuracy_after_se"] and dpo["reward_accuracy_after"] > 0.6
    # Neither loses held-out exact match by more than two paired standard errors (eval-finetune's answers against
    # eval-ppo's and eval-dpo's on the same prompts; a fixed 2-point bound is 1.6 to 2 standard errors here).
    for model in ("ppo", "dpo"):
        gap, gap_se = paired_exact_match_gap(tmp_path, "eval-finetune", f"eval-{model}")
        print(f"tiny {model}: exact match gap {gap:+.1%} ± {gap_se:.1%} (paired SE)")
        assert gap >= -2 * gap_se - 1e-9, (model, gap, gap_se)
    client = mlflow.MlflowClient(tracking.tracking_uri_for(tmp_path))
    assert "reward_kl.png" in [a.path for a in client.list_artifacts(step_run(tmp_path, "ppo").info.run_id)]

    # Compression, each method measured next to the fine-tuned model in the same process (size, speed) and by
    # the evaluate phase (quality): int8 quarters the linear weights within a point of exact match; the
    # distilled student has under half the weights and keeps the exact match; 50% pruning with recovery
    # keeps it too, and recovery helps. Each compressed model is registered with its source in its lineage.
    q, d, p = (step_run(tmp_path, s).data.metrics for s in ("quantize", "distill", "prune"))
    em = {s: step_run(tmp_path, f"eval-{s}").data.metrics["exact_match"] for s in ("finetune", "quantize", "distill", "prune")}
    for name, m in (("quantize", q), ("distill", d), ("prune", p)):
        print(f"tiny {name}: weights x{m['params_ratio']:.2f}, on disk x{m['model_bytes_ratio']:.2f}, linear weights "
              f"x{m['linear_weight_bytes_ratio']:.2f}, latency {m['source_latency_ms']:.0f} -> {m['latency_ms']:.0f} ms, batched "
              f"{m['source_tokens_per_s']:.0f} -> {m['tokens_per_s']:.0f} tokens/s, exact match {em['finetune']:.1%} -> {em[name]:.1%}")
    print(f"tiny distill: exact match {d['exact_match']:.1%}; prune: "
          f"{p['exact_match_before_recovery']:.1%} before recovery, {p['exact_match']:.1%} after; int8 top-1 agreement "
          f"{q['top1_agreement']:.1%}")
    # int8 answers as the fine-tuned model does, within noise: the paired gap over the same prompts within two
    # standard errors (a point of exact match is 3 of 300 prompts; a fixed 1-point bound failed on float rounding).
    gap, gap_se = paired_exact_match_gap(tmp_path, "eval-finetune", "eval-quantize")
    print(f"tiny int8: exact match gap {gap:+.1%} ± {gap_se:.1%} (paired SE)")
    assert q["linear_weight_bytes_ratio"] <= 0.5 and q["top1_agreement"] > 0.9 and abs(gap) <= max(2 * gap_se, 0.01) + 1e-9
    assert d["params_ratio"] <= 0.5 and em["distill"] >= 0.9 * em["finetune"]
    assert p["sparsity"] == pytest.approx(0.5, abs=0.01) and em["prune"] >= 0.9 * em["finetune"]
    assert p["exact_match"] > p["exact_match_before_recovery"]
    for name in ("quantize", "distill", "prune"):
        run = step_run(tmp_path, name)
        assert run.data.tags["lifecycle.compressed_from"] == "finetune"
        assert tracking.resolve_model(tracking.tracking_uri_for(tmp_path), f"tiny-{name}")["run_id"] == run.info.run_id

    # Lineage in MLflow, from a compressed model back to the data: nested runs with tags, the datasets
    # with their digests, every model registered from its own run and directory.
    chain = tracking.lineage(tracking.tracking_uri_for(tmp_path), "models:/tiny-quantize/1")  # what `lifecycle lineage` prints
    assert [n["step"] for n in chain[:2]] == ["quantize", "finetune"]
    assert {n["step"] for n in chain} == {"quantize", "finetune", "instructions", "pretrain", "corpus", "tokenizer"}
    assert next(n for n in chain if n["step"] == "corpus")["datasets"][0]["source"] == "python-docs"
    pre, corpus, tok = (step_run(tmp_path, s) for s in ("pretrain", "corpus", "tokenizer"))
    assert pre.data.tags["mlflow.parentRunId"] == corpus.data.tags["mlflow.parentRunId"] != ""
    assert pre.data.tags["lifecycle.phase"] == "pretrain" and pre.data.tags["lifecycle.cache_key"]
    assert set(pre.data.tags["lifecycle.inputs"].split(",")) == {corpus.info.run_id, tok.info.run_id}
    digests = {d.dataset.name: d.dataset.digest for d in pre.inputs.dataset_inputs}
    assert set(digests) == {"corpus/train", "corpus/validation"} and all(digests.values())
    ft_digests = {d.dataset.name: d.dataset.digest for d in step_run(tmp_path, "finetune").inputs.dataset_inputs}
    assert ft_digests["corpus/validation"] == digests["corpus/validation"]  # the same dataset, named alike in every step
    assert [m.step for m in client.get_metric_history(pre.info.run_id, "loss")] == list(range(20, 401, 20))
    assert "loss_curve.png" in [f.path for f in client.list_artifacts(pre.info.run_id)]
    version = client.get_model_version("tiny-pretrain", "1")
    assert version.run_id == pre.info.run_id and (Path(version.source.removeprefix("file://")) / "model.safetensors").exists()

    # Both checkpoints evaluated on the same data; the report compares them; the gate let it through.
    base, tuned = (step_run(tmp_path, s).data.metrics for s in ("eval-pretrain", "eval-finetune"))
    for key in ("perplexity", "response_nll", "exact_match", "exact_match_add", "rougeL_f1", "bleu",
                "accuracy_sst2", "accuracy_mnli", "accuracy_boolq", "accuracy_mmlu", "ece_mmlu", "robustness_boolq"):
        assert key in tuned, key
    # The fine-tuned model answered these prompts once, in its own step; evaluation reuses its answers.
    assert step_run(tmp_path, "eval-finetune").data.tags["lifecycle.answers_evaluated"].endswith(" from finetune")
    print(f"tiny evaluation: exact match {base['exact_match']:.1%} -> {tuned['exact_match']:.1%}, response nll "
          f"{base['response_nll']:.2f} -> {tuned['response_nll']:.2f}, rougeL {base['rougeL_f1']:.3f} -> {tuned['rougeL_f1']:.3f}, "
          f"benchmark accuracy {base['accuracy']:.3f} -> {tuned['accuracy']:.3f}")
    assert tuned["exact_match"] > base["exact_match"] and tuned["response_nll"] < base["response_nll"] / 2
    assert tuned["rougeL_f1"] > base["rougeL_f1"]
    # Every checkpoint's forgetting: its perplexity over the pretrained model's on the same segments (kept by
    # eval-pretrain or scored beside it); the gate bounds the fine-tuned model's (tiny.yaml: max 2).
    assert base["forgetting_ratio"] == 1.0
    for model in ("finetune", "ppo", "dpo", "grpo", "quantize", "distill", "prune"):
        m = step_run(tmp_path, f"eval-{model}").data
        assert m.tags["lifecycle.origin"] == "pretrain", (model, m.tags)
        assert m.metrics["origin_perplexity"] == pytest.approx(base["perplexity"], rel=1e-3), (model, m.metrics)
        assert m.metrics["forgetting_ratio"] == pytest.approx(m.metrics["perplexity"] / base["perplexity"], rel=1e-3)
    print("tiny forgetting ratios: " + ", ".join(
        f"{s} x{step_run(tmp_path, f'eval-{s}').data.metrics['forgetting_ratio']:.2f}" for s in ("finetune", "grpo", "distill", "prune")))
    assert tuned["forgetting_ratio"] <= 2.0 and tuned["exact_match"] >= 0.6, tuned
    # Every checkpoint the workflow makes is evaluated and in the report, each scored by the answers its step gave.
    for model in ("pretrain", "finetune", "ppo", "dpo", "grpo", "quantize", "distill", "prune"):
        assert f"| {model} | eval-{model} |" in out.stdout, model
    for model in ("dpo", "grpo"):  # PPO's held-out answers come from its policy actor, not kept
        assert step_run(tmp_path, f"eval-{model}").data.tags["lifecycle.answers_evaluated"].endswith(f" from {model}")
    assert step_run(tmp_path, "gate").data.tags["lifecycle.gate"] == "passed"
    assert ask_endpoint(out.stdout, "tiny-finetune").usage.completion_tokens >= 1
    # The deploy step's RAG route answers from the same model and cites the bundled docs.
    rag_url = printed_url(out.stdout, "/v1/rag")
    rag = httpx.post(rag_url, json={"question": "What does the pass statement do?", "k": 2, "max_tokens": 4}, timeout=60)
    assert rag.status_code == 200 and rag.json()["citations"][0]["source"] == "pass.txt", rag.text
    runs = json.loads(lifecycle("status", "--workdir", str(tmp_path), "--json").stdout)
    uri = tracking.tracking_uri_for(tmp_path)
    assert tracking.model_version_by_alias(uri, "tiny-finetune", "production")["version"] == "1"
    report = lifecycle("report", runs[0]["run_id"], "--workdir", str(tmp_path), "--html", str(tmp_path / "r.html"))
    assert report.returncode == 0 and "response_nll" in report.stdout and "<img" in (tmp_path / "r.html").read_text()
    assert "size_quality.png" in [a.path for a in client.list_artifacts(runs[0]["run_id"])]
    delete_serve_app("lifecycle-rag")
    delete_serve_app("lifecycle")  # its replica's CPU is needed for training again

    # A barely trained model must not replace the deployed one (the same spec without the steps
    # that do not lead to the gate; its other steps are cache hits).
    doc = yaml.safe_load(open(spec))
    gated = ("corpus", "tokenizer", "pretrain", "instructions", "finetune", "eval-finetune", "gate", "deploy")
    doc["steps"] = {k: v for k, v in doc["steps"].items() if k in gated}
    (tmp_path / "gate-only.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    quick = ("finetune.test_examples=60", "finetune.eval_tokens=2000", "eval-finetune.test_examples=60",
             "eval-finetune.eval_tokens=2000", "eval-finetune.benchmark_limit=12")  # a 2-step model fails on any sample
    worse = lifecycle("run", str(tmp_path / "gate-only.yaml"), "finetune.max_steps=2", "finetune.warmup_steps=1", *quick,
                      *serving, timeout=900)
    assert worse.returncode == 1, worse.stdout + worse.stderr
    assert "gate blocked finetune" in worse.stdout and "from the deployed" in worse.stdout, worse.stdout
    assert tracking.model_version_by_alias(uri, "tiny-finetune", "production")["version"] == "1"
    # A changed config re-ran only what depends on it.
    states = {r["step"]: r["state"] for r in tracking.recent_workflows(uri, limit=1)[0]["steps"]}  # what `lifecycle status` prints
    assert [states[s] for s in ("corpus", "tokenizer", "pretrain", "instructions", "finetune")] == ["cached"] * 4 + ["done"], states
