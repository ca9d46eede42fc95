"""A model replica: loads the model once, answers batches of mixed work items (a Ray Data
`map_batches` actor, or called by a Ray task for a small set).

A work item is one row of a pandas DataFrame batch:

    id       int        position in the request list
    kind     str        "nll": score `tokens` with a sliding window; "generate": answer `text`
                        greedily (rendered as in fine-tuning: core/chat.py); "choice": log-likelihood of each of `options` after `text`
    text     str        prompt or context ("" for nll)
    options  list[str]  continuations ([] unless choice)
    tokens   list[int]  token ids ([] unless nll)

and the replica returns the row's id with: `answer` (str), `logprobs` (list[float], nats per
option), `nll` (float, nats summed) and `count` (tokens scored), `seconds` (this batch's wall
time, shared out per kind) and `new_tokens` (tokens generated).
"""

from __future__ import annotations

import time

import pandas as pd
import ray
import torch

from components.core.metrics import option_logprobs
from components.core.models import context_length, load_trained
from components.core.perplexity import token_nll
from components.core.quantize import RECIPE
from components.core.sft import greedy_answers
from components.storage import localize


class ModelReplica:
    """The callable class `map_batches` runs on each actor of its pool."""

    def __init__(self, model_dir: str, max_new_tokens: int, threads: int = 1):
        from transformers import AutoTokenizer

        torch.set_num_threads(threads)  # one CPU per replica: replicas, not threads, give the parallelism
        model_dir = localize(model_dir)  # a copy on this node when the run's storage is an object store
        self.model, self.tokenizer = load_trained(model_dir), AutoTokenizer.from_pretrained(model_dir)
        if ray.get_gpu_ids() and not (model_dir / RECIPE).exists():  # a reserved GPU (int8 kernels are CPU-only)
            self.model.to("cuda")
        self.context = context_length(self.model)
        self.max_new_tokens = max_new_tokens

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        out = pd.DataFrame({"id": batch["id"], "answer": "", "nll": 0.0, "count": 0, "seconds": 0.0, "new_tokens": 0})
        out["logprobs"] = [[] for _ in range(len(batch))]
        for kind in ("nll", "generate", "choice"):
            rows = batch.index[batch["kind"] == kind]
            if len(rows) == 0:
                continue
            start = time.perf_counter()
            if kind == "nll":
                for i in rows:
                    nll, count = token_nll(self.model, torch.tensor(list(batch.at[i, "tokens"])), self.context)
                    out.at[i, "nll"], out.at[i, "count"] = nll, count
            elif kind == "generate":
                answers = greedy_answers(self.model, self.tokenizer, list(batch.loc[rows, "text"]), self.max_new_tokens)
                for i, answer in zip(rows, answers):
                    out.at[i, "answer"] = answer
                    # Re-encoding the decoded answer (+ the eos) counts the tokens generated.
                    generated = len(self.tokenizer(answer, add_special_tokens=False)["input_ids"]) + 1
                    out.at[i, "new_tokens"] = min(generated, self.max_new_tokens)
            else:
                scores = option_logprobs(self.model, self.tokenizer, list(batch.loc[rows, "text"]),
                                         [list(o) for o in batch.loc[rows, "options"]])
                for i, s in zip(rows, scores):
                    out.at[i, "logprobs"] = list(s)
            out.loc[rows, "seconds"] = (time.perf_counter() - start) / len(rows)
        return out
