"""EleutherAI's lm-evaluation-harness in the evaluate phase: its task registry, plus this project's
benchmark suites as offline lm-eval tasks, run in-process on one model.

Task names are lm-eval's own (`hellaswag`, `arc_easy`, `mmlu`, `gsm8k`: their data comes from the
Hugging Face hub, so they need it or its cache) or this project's `lifecycle_<suite>` for each
bundled suite (`lm_eval_tasks/*.yaml`: sst2, mnli, boolq, mmlu; the tag `lifecycle` names all
four), plus `lifecycle_instructions`: greedy generation with exact match over an instructions
split (a JSONL file named by metadata `instructions_path`). A lifecycle task reads its items through `components.data.benchmarks.load_benchmark`,
the evaluate phase's own reader and prompts, from the bundled copy or the step's
`benchmark_paths`, so it needs no network and scores exactly the items the step's own scorer
does: lm-eval's `acc` there equals the step's `accuracy_<suite>`.

Results become flat metrics `lm_eval_<task>_<metric>`, e.g. `lm_eval_lifecycle_sst2_acc` or
`lm_eval_gsm8k_exact_match_strict_match` (lm-eval's filter name is appended unless it is
"none"); a gate reads them like any other metric.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path
from typing import Any

TASKS_DIR = Path(__file__).parent / "lm_eval_tasks"
PREFIX = "lifecycle_"  # this project's tasks; no task of lm-eval's own registry starts with it
TAG = "lifecycle"  # names every lifecycle task at once
SUITES = ("sst2", "mnli", "boolq", "mmlu")  # the bundled suites with a task file lifecycle_<suite>.yaml
INSTRUCTIONS = "lifecycle_instructions"  # generation over an instructions split; needs metadata instructions_path


def suite_docs(suite: str, benchmark_paths: dict[str, str] | None = None, benchmark_limit: int | None = None, **_: Any):
    """The lifecycle tasks' `custom_dataset`: the items of benchmark `suite` as a DatasetDict with one
    split, "test", of rows {context: str, options: list[str], label: int, subject: str}.

    lm-eval calls it with the task's metadata (benchmark_paths, benchmark_limit: the evaluate
    step's fields, passed through TaskManager's metadata) and its dataset_kwargs (suite).
    """
    import datasets  # deferred: only a lifecycle task's load needs it

    from components.data.benchmarks import load_benchmark

    items = load_benchmark(suite, (benchmark_paths or {}).get(suite), limit=benchmark_limit)
    rows = [{"context": i.context, "options": list(i.options), "label": i.label, "subject": i.subject} for i in items]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def instruction_docs(instructions_path: str | None = None, instruction_limit: int | None = None, **_: Any):
    """The `lifecycle_instructions` task's `custom_dataset`: the examples of the JSONL file
    `instructions_path` (an instructions step's split, `read_examples_jsonl`), the first
    `instruction_limit` of them when set, as a DatasetDict with one split, "test", of rows
    {prompt: str (Alpaca prompt ending in "### Response:\n"), response: str, family: str}.
    """
    import datasets

    from components.data.instructions import read_examples_jsonl

    if not instructions_path:
        raise ValueError(f"{INSTRUCTIONS} reads an instructions split: pass its JSONL path as metadata instructions_path")
    examples = read_examples_jsonl(instructions_path)[:instruction_limit]
    rows = [{"prompt": e.prompt, "response": e.response, "family": e.family} for e in examples]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def task_manager(metadata: dict | None = None):
    """lm-eval's TaskManager over this project's task files only, with `metadata` (benchmark_paths,
    benchmark_limit, instructions_path, instruction_limit) for the tasks' readers; for
    `simple_evaluate(task_manager=...)` with any model, e.g. lm-eval's local-completions on the endpoint."""
    return _task_manager(defaults=False, metadata=metadata)


def own_tasks() -> list[str]:
    """The names this project's task files define (tasks and the `lifecycle` tag), sorted."""
    return sorted(_task_manager(defaults=False).all_tasks)


def _task_manager(defaults: bool, metadata: dict | None = None):
    """lm-eval's TaskManager over this project's task files, and over lm-eval's own when `defaults`.

    Indexing lm-eval's ~15,000 task files takes ~8 s on one core, so it is skipped when every
    name asked for is this project's.
    """
    from lm_eval.tasks import TaskManager  # deferred: ~1 s to import, and only steps with lm_eval_tasks need it

    return TaskManager(include_path=str(TASKS_DIR), include_defaults=defaults, metadata=metadata)


def _needs_defaults(tasks: list[str]) -> bool:
    return any(not (t.startswith(PREFIX) or t == TAG) for t in tasks)


def suites_of(tasks: list[str]) -> list[str]:
    """The benchmark suites (SUITES) that the lifecycle tasks among `tasks` read, in SUITES order."""
    return [s for s in SUITES if TAG in tasks or f"{PREFIX}{s}" in tasks]


def unknown_tasks(tasks: list[str]) -> list[str]:
    """One sentence per name in `tasks` that neither lm-eval's registry nor this project's task files
    define, naming up to five close names; [] when every name is known."""
    known = set(_task_manager(defaults=_needs_defaults(tasks)).all_tasks)
    problems = []
    for name in tasks:
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=5, cutoff=0.6)
            problems.append(f"unknown lm-eval task {name!r}" + (f" (close: {', '.join(close)})" if close else
                                                                  f" (this project's: {', '.join(own_tasks())})"))
    return problems


def evaluate(model_dir: str | Path, tasks: list[str], batch_size: int = 16, limit: int | None = None,
             benchmark_paths: dict[str, str] | None = None, benchmark_limit: int | None = None,
             log_samples: bool = False, device: str | None = None, instructions_path: str | None = None) -> dict:
    """lm-eval's `simple_evaluate` of the model saved in `model_dir` on `tasks`, in this process.

    The model is loaded as the evaluate phase's replicas load it (`load_trained`: a quantized or
    prompt-tuned model too) and handed to lm-eval's HFLM with its tokenizer; `device` None keeps
    it on the CPU. batch_size: requests per forward pass. limit: items per task at most
    (lm-eval's `limit`). benchmark_paths / benchmark_limit: what the lifecycle tasks read (the
    evaluate step's fields). instructions_path: the JSONL split `lifecycle_instructions` reads.
    Returns simple_evaluate's dict: "results" (task -> "metric,filter" -> value), "configs",
    "versions", "n-samples", and "samples" (task -> per-item records with "doc", "filtered_resps":
    [(log-likelihood in nats, is_greedy)] per option, or [generated text]) when log_samples.
    """
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoTokenizer

    from components.core.models import load_trained

    model = load_trained(model_dir)
    if device is not None:
        model.to(device)
    lm = HFLM(pretrained=model, tokenizer=AutoTokenizer.from_pretrained(model_dir), batch_size=batch_size)
    return _simple_evaluate(lm, {}, tasks, limit, benchmark_paths, benchmark_limit, instructions_path, log_samples)


def evaluate_endpoint(base_url: str, served_model: str, model_dir: str | Path, tasks: list[str], api_key: str | None = None,
                      concurrent: int = 1, per_request: int = 16, limit: int | None = None, benchmark_paths: dict[str, str] | None = None,
                      benchmark_limit: int | None = None, log_samples: bool = False,
                      instructions_path: str | None = None) -> dict:
    """lm-eval's `simple_evaluate` of `tasks` against a live OpenAI-compatible endpoint (this project's, or any
    that answers `/completions` with `echo` and `logprobs`), through lm-eval's own `local-completions` client.

    base_url: the API's base, e.g. "http://127.0.0.1:8000/v1". served_model: the model id the
    endpoint serves. model_dir: the served model's folder, for its tokenizer (lm-eval sends token-id
    prompts for log-likelihoods) and its context length (lm-eval truncates prompts to it). api_key: sent as "Authorization: Bearer <key>" (None: no header).
    concurrent: requests in flight at once. per_request: prompts (options, or generations) per request;
    this project's endpoint takes up to 16 (api.MAX_PROMPTS), and counts each against its
    max_ongoing_requests, so concurrent x per_request should stay within that (16 by default) or the
    endpoint answers 429 and lm-eval waits and retries. The other arguments and the return value are `evaluate`'s.
    """
    from transformers import AutoConfig

    from components.core.models import context_length

    model_args = {"base_url": f"{base_url.rstrip('/')}/completions", "model": served_model, "tokenizer": str(model_dir),
                  "tokenizer_backend": "huggingface", "num_concurrent": concurrent, "batch_size": per_request, "max_retries": 3,
                  # lm-eval's client assumes 2048 tokens unless told: it must truncate to the served model's context,
                  # or the endpoint refuses a longer prompt (400) where HFLM in-process would have truncated it.
                  "max_length": context_length(AutoConfig.from_pretrained(model_dir))}
    # local-completions sends $OPENAI_API_KEY as the bearer token. Set for this call only, and not as a model
    # argument (a `header` there): lm-eval logs its model arguments.
    saved = os.environ.get("OPENAI_API_KEY")
    os.environ["OPENAI_API_KEY"] = api_key or ""
    try:
        return _simple_evaluate("local-completions", model_args, tasks, limit, benchmark_paths, benchmark_limit,
                                instructions_path, log_samples)
    finally:
        if saved is None:
            os.environ.pop("OPENAI_API_KEY", None)
        else:
            os.environ["OPENAI_API_KEY"] = saved


def _simple_evaluate(model, model_args: dict, tasks: list[str], limit: int | None, benchmark_paths: dict[str, str] | None,
                     benchmark_limit: int | None, instructions_path: str | None, log_samples: bool) -> dict:
    from lm_eval import simple_evaluate  # deferred: ~1 s to import

    tasks = list(tasks)
    metadata = {"benchmark_paths": dict(benchmark_paths or {}), "benchmark_limit": benchmark_limit,
                "instructions_path": instructions_path}
    out = simple_evaluate(model=model, model_args=model_args or None, tasks=tasks,
                          task_manager=_task_manager(_needs_defaults(tasks), metadata), limit=limit, log_samples=log_samples)
    if out is None:  # only on a non-zero rank of a distributed run, which this single process is not
        raise RuntimeError("lm-eval returned no results")
    return out


def metrics(results: dict[str, dict]) -> dict[str, float]:
    """Flat metrics of lm-eval's `results` (task -> {"metric,filter": value}): `lm_eval_<task>_<metric>`,
    with `_<filter>` appended unless the filter is "none", any character outside [A-Za-z0-9_] as "_".

    Standard errors (`*_stderr`) and non-numbers ("alias", "N/A") are left out: they stay in the
    step's lm_eval.json.
    """
    out = {}
    for task, values in results.items():
        for key, value in values.items():
            if "," not in key or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            metric, _, filter_name = key.partition(",")
            if metric.endswith("_stderr"):
                continue
            name = f"lm_eval_{task}_{metric}" + ("" if filter_name == "none" else f"_{filter_name}")
            out[re.sub(r"\W", "_", name, flags=re.ASCII)] = float(value)
    return out
