"""The evaluate phase on an encoder: a fine-tuned sequence classifier (the classify phase's output)
scored on the benchmark suites whose labels it predicts.

A classifier says which suites it was trained for through its label names (config.id2label):
negative/positive is sst2, entailment/neutral/contradiction is mnli. Each such suite of
cfg.benchmarks is read from cfg.benchmark_paths or the bundled copy, inputs framed by the
classifier's own saved tokenizer (components/core/classification.py), and scored by accuracy,
with the same metric names the causal path uses (accuracy_<task>, accuracy), so a gate reads
both alike. The set is small (the bundled dev files hold 40 items), so it is scored in the
step's task, with no replicas.
"""

from __future__ import annotations

import json

import torch
from transformers import AutoConfig, AutoTokenizer

from components import tracking
from components.artifact import Artifact, StepContext
from components.classify.config import LABELS
from components.core.classification import encode_text, score
from components.core.models import load_trained
from components.data import benchmarks
from components.evaluate.config import EvaluateConfig


def run(cfg: EvaluateConfig, inputs: dict[str, Artifact], ctx: StepContext) -> Artifact:
    """Accuracy of the classifier input on each suite of cfg.benchmarks it has the labels of."""
    model_step, model = next((n, a) for n, a in inputs.items() if a.kind == "model")
    config = AutoConfig.from_pretrained(model.path)
    names = [config.id2label[i] for i in range(config.num_labels)] if config.architectures else []
    if not config.architectures or not config.architectures[0].endswith("ForSequenceClassification"):
        raise ValueError(f"{model.uri}: evaluate scores an encoder only as a sequence classifier (the classify phase's "
                         f"sst2 or mnli output); this is a {(config.architectures or ['bare encoder'])[0]}")
    tasks = [t for t in cfg.benchmarks if list(LABELS.get(t, ())) == names]
    if not tasks:
        raise ValueError(f"{model.uri}: its labels {names} are none of the suites {cfg.benchmarks} "
                         f"(sst2: {list(LABELS['sst2'])}, mnli: {list(LABELS['mnli'])})")
    tokenizer = AutoTokenizer.from_pretrained(model.path)
    classifier = load_trained(model.path)  # a quantized classifier too, rebuilt from its integer weights
    torch.set_num_threads(max(1, int(ctx.cpus_per_worker)))

    scores = {}
    for task in tasks:
        records = benchmarks.file_records(task, cfg.benchmark_paths.get(task))
        items = benchmarks.labelled_texts(task, records)[: cfg.benchmark_limit]
        examples = [encode_text(tokenizer, text, pair, label, config.max_position_embeddings) for _, text, pair, label in items]
        scores[f"accuracy_{task}"] = score(classifier, examples, names, tokenizer.pad_token_id)["accuracy"]
        scores[f"items_{task}"] = float(len(examples))
    scores["accuracy"] = sum(scores[f"accuracy_{t}"] for t in tasks) / len(tasks)
    (ctx.output_dir / "scores.json").write_text(json.dumps(scores, indent=1, sort_keys=True))
    tracking.set_tags(ctx.tracking_uri, ctx.run_id, {"lifecycle.evaluated": model_step, "lifecycle.evaluated_run": model.run_id})
    tracking.log_metrics(ctx.tracking_uri, ctx.run_id, scores)
    tracking.log_dict(ctx.tracking_uri, ctx.run_id, scores, "scores.json")
    info = {"evaluated_step": model_step, "model_uri": model.uri, "model_run_id": model.run_id,
            **{k: model.metrics[k] for k in ("registered_model", "registered_version") if k in model.metrics}}
    headline = f"{model_step}: " + ", ".join(f"accuracy {t} {scores[f'accuracy_{t}']:.1%}" for t in tasks)
    return Artifact(str(ctx.output_dir), "evaluation", ctx.run_id, ctx.cache_key, {**scores, **info}, headline)
