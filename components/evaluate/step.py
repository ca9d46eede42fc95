"""Ray wiring of the evaluate phase: build work items, score them on model replicas (Ray tasks, or Ray Data for
a large set), summarise.

One evaluate step scores one model; several evaluate steps (one per checkpoint) run in parallel
in the DAG, and the workflow's report puts them side by side (components/evaluate/report.py).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

import pandas as pd
import ray
import ray.data
from transformers import AutoConfig, AutoTokenizer

from components import tracking
from components.artifact import Artifact, StepContext
from components.core import metrics as M
from components.core.chat import answer_end_id, render_prompt
from components.core.models import family_of, weights_bytes
from components.core.quantize import RECIPE
from components.data.benchmarks import Item, load_benchmark, perturb
from components.data.corpus import read_jsonl
from components.data.instructions import Example, read_examples_jsonl, spread
from components.data.tokenizer import token_stream
from components.evaluate.config import EvaluateConfig
from components.evaluate.replica import ModelReplica
from components.scoring import AnswerMemo, keep_perplexity, kept_perplexity, reuse_tags
from components.storage import localize


@dataclass(frozen=True)
class Request:
    """What a work item is for, kept on the driver: (section, detail) by request id."""

    section: str  # "ppl", "instructions", "response" (reference answer's likelihood) or "benchmark"
    example: Example | None = None
    item: Item | None = None
    variant: str = ""  # "" (original prompt) or a perturbation kind


def run(cfg: EvaluateConfig, inputs: dict[str, Artifact], ctx: StepContext) -> Artifact:
    """Score the model input; returns an `evaluation` artifact (scores.json, predictions.jsonl)."""
    model_step, model = next((n, a) for n, a in inputs.items() if a.kind == "model")
    if family_of(AutoConfig.from_pretrained(model.path)) == "masked":  # a BERT classifier: scored by its labels
        from components.evaluate import encoder

        return encoder.run(cfg, inputs, ctx)
    instructions = next((a for a in inputs.values() if a.kind == "instructions"), None)
    corpus = next((a for a in inputs.values() if a.kind == "dataset"), None)
    endpoint = _served(next((a for a in inputs.values() if a.kind == "endpoint"), None))
    tokenizer = AutoTokenizer.from_pretrained(model.path)
    # Perplexity, the reference answer's likelihood and the benchmark options score a causal LM's
    # next-token distribution; an encoder-decoder (T5) is scored on its generated answers only.
    generate_only = family_of(AutoConfig.from_pretrained(model.path)) == "seq2seq"

    # 1. Work items: perplexity segments, instruction prompts, benchmark items (and perturbed copies).
    rows, requests = [], []

    def add(request: Request, kind: str, text: str = "", options=(), tokens=()):
        rows.append({"id": len(requests), "kind": kind, "text": text, "options": list(options), "tokens": list(tokens)})
        requests.append(request)

    if corpus is not None and not generate_only:
        for segment in _segments(read_jsonl(corpus.path / "validation.jsonl"), tokenizer, cfg.eval_tokens, cfg.segment_tokens):
            add(Request("ppl"), "nll", tokens=segment)
    kept: dict[int, dict] = {}  # results known before scoring, by request id
    memo = AnswerMemo.of(model.cache_key, ctx.storage_path, ctx.step)
    if instructions is not None:
        end = tokenizer.convert_ids_to_tokens(answer_end_id(tokenizer))  # the token fine-tuning ends an answer with
        examples = spread(read_examples_jsonl(instructions.path / "test.jsonl"), cfg.test_examples)
        # The answers the model already gave in this workflow (its own step scored it on these prompts, greedily).
        answers = memo.known(tokenizer, [e.prompt for e in examples], cfg.max_new_tokens)
        for example in examples:
            if example.prompt in answers:
                kept[len(requests)] = {"answer": answers[example.prompt], "seconds": 0.0, "new_tokens": 0}
                requests.append(Request("instructions", example=example))
            else:
                add(Request("instructions", example=example), "generate", example.prompt)
            if not generate_only:  # the reference answer as fine-tuning showed it: after the rendered prompt, to its end token
                add(Request("response", example=example), "choice", render_prompt(tokenizer, example.prompt), [example.response + end])
    for task in [] if generate_only else cfg.benchmarks:
        for item in load_benchmark(task, cfg.benchmark_paths.get(task), limit=cfg.benchmark_limit):
            add(Request("benchmark", item=item), "choice", item.context, item.options)
            for kind in cfg.perturbations:
                add(Request("benchmark", item=item, variant=kind), "choice", _perturbed(item.context, kind, cfg.seed), item.options)

    # 2. Score them on model replicas, one model copy each (Ray tasks, or a Ray Data actor pool for a large set),
    # and run lm-eval's tasks on one replica's resources beside them (submitted first, so it starts where Ray has room).
    # lifecycle_instructions answers the step's instructions test split, as the step's own scoring does.
    if "lifecycle_instructions" in cfg.lm_eval_tasks and instructions is None:
        raise ValueError("field 'lm_eval_tasks': lifecycle_instructions answers an instructions test split; "
                         "add an instructions step to this step's needs")
    # Against an endpoint, lm-eval is an HTTP client waiting on the endpoint's replicas, which may hold the CPUs it would ask for.
    resources = {"num_cpus": 0} if endpoint else {"num_cpus": ctx.cpus_per_worker, **_replica_resources(ctx)}
    harness_run = (_run_harness.options(**resources)
                   .remote(model.uri, cfg, max(1, int(ctx.cpus_per_worker)), instructions.uri if instructions else None, endpoint)
                   if cfg.lm_eval_tasks else None)
    # The forgetting ratio's denominator: the pretrained origin's perplexity on the same text, kept by the first
    # evaluate step that measured it (eval-pretrain, or another checkpoint's step), else scored beside this model.
    # The engine records the origin on every model artifact (workflows.engine.origin_of).
    origin = {k: str(model.metrics[k]) for k in ("origin_step", "origin_uri", "origin_key") if k in model.metrics}
    data_key = _segments_key(corpus, cfg) if corpus is not None and not generate_only and origin else None
    elsewhere = data_key and origin["origin_key"] != model.cache_key  # not the model's own perplexity
    origin_known = kept_perplexity(ctx.storage_path, origin["origin_key"], data_key) if elsewhere else None
    origin_run = _origin_perplexity(origin["origin_uri"], corpus, cfg, ctx) if elsewhere and not origin_known else None
    try:
        with ctx.timed("scoring"):  # the replicas' start, model loading and work
            scored = _score(rows, model.uri, cfg, ctx) if rows else {}
    except BaseException:
        for pending in (harness_run, origin_run):  # the step fails: free their replicas' resources too
            if pending is not None:
                ray.cancel(pending)
        raise
    results = [kept[i] if i in kept else scored[i] for i in range(len(requests))]
    tracking.set_tags(ctx.tracking_uri, ctx.run_id, reuse_tags(evaluated=memo))

    # 3. Summarise into metrics, write the artifact, log to the step's run.
    scores = summarise(requests, results, cfg)
    if data_key and "perplexity" in scores:
        keep_perplexity(ctx.storage_path, model.cache_key, data_key, scores["perplexity"], ctx.step)
        if not elsewhere:  # the model is its own origin (pretrained here, or loaded by a base step)
            scores["origin_perplexity"], source = scores["perplexity"], "itself"
        elif origin_known:
            scores["origin_perplexity"], source = origin_known["perplexity"], f"kept by {origin_known['step']}"
        else:
            with ctx.timed("origin_perplexity"):  # what the step waited for it after its own scoring
                scores["origin_perplexity"], source = perplexity_of(ray.get(origin_run)), "scored here"
            keep_perplexity(ctx.storage_path, origin["origin_key"], data_key, scores["origin_perplexity"], ctx.step)
        scores["forgetting_ratio"] = scores["perplexity"] / scores["origin_perplexity"]
        tracking.set_tags(ctx.tracking_uri, ctx.run_id, {
            "lifecycle.origin": origin["origin_step"], "lifecycle.origin_perplexity": source})
    scores["model_bytes"] = float(weights_bytes(model.path))
    if harness_run is not None:
        from components.evaluate import harness

        with ctx.timed("lm_eval_wait"):  # what the step waited for lm-eval after its own scoring
            lm_eval, ctx.seconds["lm_eval"] = ray.get(harness_run)
        scores.update(harness.metrics(lm_eval["results"]))
        tracking.set_tags(ctx.tracking_uri, ctx.run_id, {"lifecycle.lm_eval_model": f"endpoint {endpoint['url']}" if endpoint
                                                          else "in-process"})
        (ctx.output_dir / "lm_eval.json").write_text(json.dumps(lm_eval, indent=1, sort_keys=True, default=str))
        tracking.log_dict(ctx.tracking_uri, ctx.run_id, json.loads(json.dumps(lm_eval, default=str)), "lm_eval.json")
    (ctx.output_dir / "scores.json").write_text(json.dumps(scores, indent=1, sort_keys=True))
    with open(ctx.output_dir / "predictions.jsonl", "w") as f:
        for request, result in zip(requests, results):
            if request.section == "instructions":
                f.write(json.dumps({"family": request.example.family, "prompt": request.example.prompt,
                                    "reference": request.example.response, "answer": result["answer"]}) + "\n")
    tracking.set_tags(ctx.tracking_uri, ctx.run_id, {"lifecycle.evaluated": model_step, "lifecycle.evaluated_run": model.run_id})
    tracking.log_metrics(ctx.tracking_uri, ctx.run_id, scores)
    tracking.log_dict(ctx.tracking_uri, ctx.run_id, scores, "scores.json")
    headline = ", ".join(f"{k} {scores[k]:.3g}" for k in ("perplexity", "exact_match", "accuracy") if k in scores)
    info = {"evaluated_step": model_step, "model_uri": model.uri, "model_run_id": model.run_id,
            **{k: model.metrics[k] for k in ("registered_model", "registered_version") if k in model.metrics}}
    return Artifact(str(ctx.output_dir), "evaluation", ctx.run_id, ctx.cache_key, {**scores, **info}, f"{model_step}: {headline}")


def _segments_key(corpus: Artifact, cfg: EvaluateConfig) -> str:
    """Names the perplexity segments: the corpus and how much of it, cut how."""
    return hashlib.sha256(f"{corpus.cache_key}/{cfg.eval_tokens}/{cfg.segment_tokens}".encode()).hexdigest()[:16]


def _origin_perplexity(origin_uri: str, corpus: Artifact, cfg: EvaluateConfig, ctx: StepContext) -> ray.ObjectRef:
    """The origin's nll rows on the validation text (cut with its own tokenizer), on one replica task."""
    tokenizer = AutoTokenizer.from_pretrained(localize(origin_uri))
    segments = _segments(read_jsonl(corpus.path / "validation.jsonl"), tokenizer, cfg.eval_tokens, cfg.segment_tokens)
    rows = [{"id": i, "kind": "nll", "text": "", "options": [], "tokens": list(s)} for i, s in enumerate(segments)]
    return (_score_rows.options(num_cpus=ctx.cpus_per_worker, **_replica_resources(ctx))
            .remote(rows, _replica_args(origin_uri, cfg, ctx), cfg.batch_size))


def perplexity_of(scored: list[dict]) -> float:
    """exp(total nll / total tokens) over scored nll rows ({"nll": nats, "count": tokens})."""
    return math.exp(sum(r["nll"] for r in scored) / sum(r["count"] for r in scored))


def _replica_args(model_dir: str, cfg: EvaluateConfig, ctx: StepContext) -> dict:
    return {"model_dir": model_dir, "max_new_tokens": cfg.max_new_tokens, "threads": max(1, int(ctx.cpus_per_worker))}


def _score(rows: list[dict], model_dir: str, cfg: EvaluateConfig, ctx: StepContext) -> dict[int, dict]:
    """Each row's outputs by its id, computed by `ModelReplica`s: through Ray Data for a large set,
    else on one Ray task per replica."""
    replicas = min(cfg.replicas or ctx.workers, max(1, math.ceil(len(rows) / cfg.batch_size)))
    resources = _replica_resources(ctx)
    replica_args = _replica_args(model_dir, cfg, ctx)
    results: dict[int, dict] = {}
    if len(rows) < cfg.ray_data_min_items:
        # Every replica gets every replicas-th row, so each sees the same mix of work kinds.
        pending = [_score_rows.options(num_cpus=ctx.cpus_per_worker, **resources).remote(rows[i::replicas], replica_args, cfg.batch_size)
                   for i in range(replicas)]
        while pending:
            (done,), pending = ray.wait(pending)
            results.update((int(row["id"]), row) for row in ray.get(done))
            ctx.progress({"scored": len(results), "items": len(rows)})
        return results

    data_context = ray.data.DataContext.get_current()
    data_context.enable_progress_bars = False  # the workflow's own table shows progress
    scored = ray.data.from_items(rows).map_batches(
        ModelReplica,
        fn_constructor_kwargs=replica_args,
        batch_size=cfg.batch_size,
        batch_format="pandas",
        compute=ray.data.ActorPoolStrategy(min_size=1, max_size=replicas),
        num_cpus=ctx.cpus_per_worker,
        **resources,
    )
    for row in scored.iter_rows():
        results[int(row["id"])] = row
        if len(results) % 100 == 0 or len(results) == len(rows):
            ctx.progress({"scored": len(results), "items": len(rows)})
    return results


def _served(endpoint: Artifact | None) -> dict | None:
    """The endpoint input's {url, served_model, api_key_file} for lm-eval's tasks, None without one. The spec
    check made sure the step names tasks and that its model is the one served (workflows/spec.py)."""
    if endpoint is None:
        return None
    return {"url": str(endpoint.metrics["url"]), "served_model": str(endpoint.metrics["served_model"]),
            "api_key_file": endpoint.metrics.get("api_key_file")}


def _replica_resources(ctx: StepContext) -> dict:
    return {"num_gpus": ctx.gpus_per_worker} if ctx.gpus_per_worker else {}


@ray.remote
def _run_harness(model_dir: str, cfg: EvaluateConfig, threads: int, instructions_uri: str | None,
                 endpoint: dict | None = None) -> tuple[dict, float]:
    """lm-eval's tasks `cfg.lm_eval_tasks` on the model (a Ray task with a replica's resources), or through
    `endpoint` ({url, served_model, api_key_file}: the live endpoint serving it, scored by lm-eval's
    local-completions client with the model's tokenizer): the JSON-able parts of lm-eval's output
    (results, versions, n-samples, n-shot, higher_is_better) and its wall seconds.
    `instructions_uri`: the instructions artifact whose test split lifecycle_instructions answers (or None)."""
    import time

    import torch

    from components.evaluate import harness

    start = time.perf_counter()
    torch.set_num_threads(threads)  # as a replica: its reserved CPUs, not every core of the node
    model_dir = localize(model_dir)  # a copy on this node when the run's storage is an object store
    data = {"benchmark_paths": cfg.benchmark_paths, "benchmark_limit": cfg.benchmark_limit, "limit": cfg.lm_eval_limit,
            "instructions_path": str(localize(instructions_uri) / "test.jsonl") if instructions_uri else None}
    if endpoint is not None:
        from components.deploy.app import node_api_key  # the key as the endpoint's replicas read it on this node

        out = harness.evaluate_endpoint(endpoint["url"], endpoint["served_model"], model_dir, cfg.lm_eval_tasks,
                                        api_key=node_api_key(endpoint["api_key_file"]), concurrent=cfg.endpoint_concurrency,
                                        per_request=cfg.endpoint_batch,
                                        **data)
    else:
        on_gpu = ray.get_gpu_ids() and not (model_dir / RECIPE).exists()  # as ModelReplica: int8 kernels are CPU-only
        out = harness.evaluate(model_dir, cfg.lm_eval_tasks, batch_size=cfg.batch_size, device="cuda" if on_gpu else None, **data)
    keep = {k: out[k] for k in ("results", "groups", "versions", "n-samples", "n-shot", "higher_is_better") if k in out}
    return keep, time.perf_counter() - start


@ray.remote
def _score_rows(rows: list[dict], replica_args: dict, batch_size: int) -> list[dict]:
    """`rows` scored by one ModelReplica, batch by batch (a Ray task: the worker process, and its imports, are reused)."""
    replica = ModelReplica(**replica_args)
    out: list[dict] = []
    for start in range(0, len(rows), batch_size):
        out.extend(replica(pd.DataFrame(rows[start : start + batch_size])).to_dict("records"))
    return out


def summarise(requests: list[Request], results: list[dict], cfg: EvaluateConfig) -> dict[str, float]:
    """Metrics from per-item outputs: perplexity, exact match / ROUGE / BLEU / response NLL, and the
    HELM-style benchmark axes.

    Benchmark axes per suite: accuracy on the original prompts; ECE of the softmax over options;
    robustness = the worst accuracy over the perturbed prompts. Averaged over suites into
    `accuracy`, `calibration_ece`, `robustness`. `tokens_per_s`: generated tokens per second of
    replica time.
    """
    scores: dict[str, float] = {}
    ppl = [r for q, r in zip(requests, results) if q.section == "ppl"]
    if ppl:
        scores["perplexity"] = perplexity_of(ppl)

    instr = [(q.example, r) for q, r in zip(requests, results) if q.section == "instructions"]
    if instr:
        answers, references = [r["answer"] for _, r in instr], [e.response for e, _ in instr]
        scores["exact_match"] = M.exact_match_rate(answers, references)
        for family in sorted({e.family for e, _ in instr}):
            pairs = [(r["answer"], e.response) for e, r in instr if e.family == family]
            scores[f"exact_match_{family}"] = M.exact_match_rate(*map(list, zip(*pairs)))
        scores.update(M.rouge(answers, references))
        scores["bleu"] = M.bleu(answers, references)
        # Teacher-forced: how likely the reference answer (and its eos) is, in nats per example.
        responses = [r["logprobs"][0] for q, r in zip(requests, results) if q.section == "response"]
        if responses:  # none for a seq2seq model
            scores["response_nll"] = -sum(responses) / len(responses)
        seconds = sum(r["seconds"] for _, r in instr)
        if seconds:  # none when every answer came from the model's own step (AnswerMemo)
            scores["tokens_per_s"] = sum(r["new_tokens"] for _, r in instr) / seconds

    bench = [(q, r) for q, r in zip(requests, results) if q.section == "benchmark"]
    tasks = sorted({q.item.task for q, _ in bench})
    for task in tasks:
        by_variant: dict[str, list[tuple[Item, list[float]]]] = {}
        for q, r in bench:
            if q.item.task == task:
                by_variant.setdefault(q.variant, []).append((q.item, list(r["logprobs"])))
        original = by_variant.pop("")
        correct = [M.choose(lp) == item.label for item, lp in original]
        confidence = [max(M.option_probabilities(lp)) for _, lp in original]
        scores[f"accuracy_{task}"] = sum(correct) / len(correct)
        scores[f"ece_{task}"] = M.expected_calibration_error(confidence, correct)
        for variant, scored in by_variant.items():
            scores[f"accuracy_{task}_{variant}"] = sum(M.choose(lp) == item.label for item, lp in scored) / len(scored)
        if by_variant:
            scores[f"robustness_{task}"] = min(scores[f"accuracy_{task}_{v}"] for v in by_variant)
    if tasks:
        scores["accuracy"] = sum(scores[f"accuracy_{t}"] for t in tasks) / len(tasks)
        scores["calibration_ece"] = sum(scores[f"ece_{t}"] for t in tasks) / len(tasks)
        if cfg.perturbations:
            scores["robustness"] = sum(scores[f"robustness_{t}"] for t in tasks) / len(tasks)
    return scores


def _perturbed(context: str, kind: str, seed: int) -> str:
    """The context perturbed except its last line, the answer cue the options continue."""
    head, sep, cue = context.rpartition("\n")
    return perturb(head, kind, seed) + sep + cue if sep else perturb(context, kind, seed)


def _segments(docs: list[str], tokenizer, max_tokens: int, segment: int) -> list[list[int]]:
    """The validation text as one token stream (documents joined by eos), cut into work items."""
    ids = token_stream(docs, tokenizer, max_tokens)
    return [ids[i : i + segment] for i in range(0, len(ids), segment) if len(ids[i : i + segment]) > 1]
