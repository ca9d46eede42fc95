"""How the finetune, rlhf and compress steps score a generative model on held-out instruction tasks: exact match
per task family, perplexity on pretraining text (forgetting), and for an encoder-decoder BLEU and ROUGE-L of the
same answers. (The evaluate phase has its own benchmarks: components/evaluate/.)"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch

from components import storage
from components.core import metrics
from components.core.perplexity import perplexity
from components.core.sft import greedy_answer_ids
from components.data.instructions import Example
from components.data.tokenizer import token_stream


@dataclass
class AnswerMemo:
    """A model's greedy answers, kept so that each model answers each prompt once in a workflow.

    Keyed by the model's cache key (a model is its config, inputs and code), one folder per model
    under the run's storage; each scoring writes its own file (steps on parallel branches never
    write one file). A stored answer serves any budget up to the one it was generated with, and
    any budget at all when it ended at eos first (greedy decoding is a prefix property).
    `reused` counts the answers served from another step, by that step's name. Rows are keyed by the
    Alpaca prompt; `greedy_answer_ids` renders it (a pretrained model's chat template, core/chat.py),
    and the rendering depends only on the model's tokenizer, which the cache key covers.
    """

    folder: Path | None  # None: nothing kept (storage in an object store)
    step: str = ""
    reused: dict[str, int] = field(default_factory=dict)

    @staticmethod
    def of(model_key: str, storage_path: str, step: str) -> AnswerMemo:
        folder = None if storage.is_remote(storage_path) else storage.local_path(storage_path) / "answers" / model_key
        return AnswerMemo(folder, step)

    def _rows(self, max_new_tokens: int) -> dict[str, dict]:
        """The kept rows that answer within `max_new_tokens`, by prompt."""
        known: dict[str, dict] = {}
        for path in sorted(self.folder.glob("*.jsonl")) if self.folder and self.folder.is_dir() else []:
            for line in path.read_text().splitlines():
                row = json.loads(line)
                if row["budget"] >= max_new_tokens or len(row["ids"]) < row["budget"]:
                    known.setdefault(row["prompt"], row)
        return known

    def known(self, tokenizer, prompts: list[str], max_new_tokens: int) -> dict[str, str]:
        """The kept answers (decoded) among `prompts`, by prompt, generating none: for a step that
        generates the rest elsewhere (the evaluate phase, on its replicas)."""
        rows = self._rows(max_new_tokens)
        found = {p: rows[p] for p in dict.fromkeys(prompts) if p in rows}
        for row in found.values():
            if row["step"] != self.step:
                self.reused[row["step"]] = self.reused.get(row["step"], 0) + 1
        return {p: tokenizer.decode(r["ids"][:max_new_tokens], skip_special_tokens=True) for p, r in found.items()}

    def answers(self, model, tokenizer, prompts: list[str], max_new_tokens: int) -> list[str]:
        """Greedy answers (decoded, cut at eos) to `prompts` within `max_new_tokens`; computes only the missing ones."""
        answers = self.known(tokenizer, prompts, max_new_tokens)
        missing = [p for p in dict.fromkeys(prompts) if p not in answers]
        if missing:
            new = greedy_answer_ids(model, tokenizer, missing, max_new_tokens)
            if self.folder is not None:
                rows = [{"prompt": p, "ids": ids, "budget": max_new_tokens, "step": self.step} for p, ids in zip(missing, new)]
                _write_whole(self.folder / f"{self.step}-{uuid.uuid4().hex[:8]}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
            answers.update((p, tokenizer.decode(ids, skip_special_tokens=True)) for p, ids in zip(missing, new))
        return [answers[p] for p in prompts]


def kept_perplexity(storage_path: str, model_key: str, data_key: str) -> dict | None:
    """A model's perplexity on one set of segments as an evaluate step kept it ({"perplexity", "step"}), or None.
    `data_key` names the segments (corpus, token budget, segment length); storage in an object store keeps none."""
    path = _perplexity_path(storage_path, model_key, data_key)
    return json.loads(path.read_text()) if path is not None and path.is_file() else None


def keep_perplexity(storage_path: str, model_key: str, data_key: str, perplexity: float, step: str) -> None:
    """Keep a model's perplexity for the later evaluate steps that need it (a fine-tuned model's forgetting is
    its perplexity over its pretrained origin's, on the same segments)."""
    path = _perplexity_path(storage_path, model_key, data_key)
    if path is not None:  # evaluate steps on parallel branches may keep the same score; either copy is whole
        _write_whole(path, json.dumps({"perplexity": perplexity, "step": step}))


def _write_whole(path: Path, text: str) -> None:
    """Write `text` to `path` so that a reader never sees half of it (a partial file, then a rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{uuid.uuid4().hex}.partial")
    partial.write_text(text)
    partial.replace(path)


def _perplexity_path(storage_path: str, model_key: str, data_key: str) -> Path | None:
    if storage.is_remote(storage_path):
        return None
    return storage.local_path(storage_path) / "scores" / model_key / f"perplexity-{data_key}.json"


def reuse_tags(**memos: AnswerMemo) -> dict[str, str]:
    """MLflow tags saying where reused answers came from, e.g. {"lifecycle.answers_before": "292 from finetune"}."""
    return {f"lifecycle.answers_{name}": ", ".join(f"{n} from {step}" for step, n in sorted(m.reused.items()))
            for name, m in memos.items() if m.reused}


def greedy(model, tokenizer, prompts: list[str], max_new_tokens: int, memo: AnswerMemo | None = None) -> list[str]:
    """Greedy answers, through `memo` when given."""
    return (memo or AnswerMemo(None)).answers(model, tokenizer, prompts, max_new_tokens)


def exact_match_by_family(model, tokenizer, examples: list[Example], max_new_tokens: int, memo: AnswerMemo | None = None) -> dict[str, float]:
    """Share of exact answers per family, plus "all" over every example (fractions in [0, 1]).
    `memo`: the model's kept answers (each prompt answered once per model in a workflow)."""
    answers = greedy(model, tokenizer, [e.prompt for e in examples], max_new_tokens, memo)
    hits: dict[str, list[bool]] = {}
    for example, answer in zip(examples, answers):
        hits.setdefault(example.family, []).append(metrics.exact_match(answer, example.response))
    scores = {family: sum(h) / len(h) for family, h in sorted(hits.items())}
    scores["all"] = sum(sum(h) for h in hits.values()) / max(len(examples), 1)
    return scores


def text_scores_by_family(model, tokenizer, examples: list[Example], max_new_tokens: int,
                          memo: AnswerMemo | None = None) -> dict[str, dict[str, float]]:
    """{"exact_match" (fraction), "bleu" (corpus BLEU, 0..100), "sentence_bleu" (mean sentence BLEU, 0..100),
    "rougeL" (mean ROUGE-L F1, 0..1)}, each {family: score, ..., "all": score over every example}, from one
    greedy answer per example.

    Corpus BLEU of answers under four words is 0 however right they are (no 4-gram to match: a 2-3 word
    translation); sentence BLEU leaves out the orders longer than each answer, so it scores those too.
    """
    answers = greedy(model, tokenizer, [e.prompt for e in examples], max_new_tokens, memo)
    groups: dict[str, list[tuple[str, str]]] = {}
    for example, answer in zip(examples, answers):
        groups.setdefault(example.family, []).append((answer, example.response))
    groups = {**dict(sorted(groups.items())), "all": list(zip(answers, [e.response for e in examples]))}
    scores: dict[str, dict[str, float]] = {"exact_match": {}, "bleu": {}, "sentence_bleu": {}, "rougeL": {}}
    for family, pairs in groups.items():
        predicted, references = map(list, zip(*pairs))
        scores["exact_match"][family] = metrics.exact_match_rate(predicted, references)
        scores["bleu"][family] = metrics.bleu(predicted, references)
        scores["sentence_bleu"][family] = sum(map(metrics.sentence_bleu, predicted, references)) / len(pairs)
        scores["rougeL"][family] = metrics.rouge(predicted, references)["rougeL_f1"]
    return scores


def corpus_perplexity(model, tokenizer, docs: list[str], context: int, max_tokens: int) -> float:
    """Perplexity of the model on pretraining text (documents joined by eos), sliding window of `context`."""
    return perplexity(model, torch.tensor(token_stream(docs, tokenizer, max_tokens)), context, max_tokens=max_tokens)
