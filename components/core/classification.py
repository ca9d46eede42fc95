"""Inputs and scores of an encoder's task heads: sequence classification (one label per text or
text pair) and token classification (one BIO tag per word).

The lifecycle's tokenizer is a byte-level BPE without BERT's [CLS]/[SEP] post-processor, so
`frame` gives the classifier's copy one, BERT's layout with the one boundary token pretraining knew:

    [eos] premise [eos] hypothesis [eos]     token_type_ids 0 ... 0 1 ... 1

Pretraining packed documents as "doc [eos] doc [eos] ...", so eos is the token the encoder saw at
every document boundary: as the first token it plays [CLS] (BERT's pooler reads position 0), between
and after the segments it plays [SEP]. token_type_ids mark the second segment as BERT's do (type 1
was never seen in pretraining; its embedding learns in fine-tuning). The framing lives in the saved
tokenizer, so whoever loads the classifier (the server's plain `tokenizer(text, text_pair)`) feeds
it exactly what it was trained on.
"""

from __future__ import annotations

import torch
from tokenizers import processors

from components.core.tagging import IGNORE, align_labels, word_spans

Example = dict[str, list[int]]  # input_ids, token_type_ids, labels (one int, or one per token)


def frame(tokenizer):
    """`tokenizer`, changed in place: eos-framed single texts and pairs, with token_type_ids."""
    eos = tokenizer.eos_token
    tokenizer.backend_tokenizer.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),  # what train_bpe set: offsets keep a word's leading space
        processors.TemplateProcessing(single=f"{eos} $A {eos}", pair=f"{eos} $A {eos} $B:1 {eos}:1",
                                      special_tokens=[(eos, tokenizer.eos_token_id)]),
    ])
    tokenizer.model_input_names = ["input_ids", "token_type_ids", "attention_mask"]
    tokenizer.init_kwargs["model_input_names"] = tokenizer.model_input_names  # saved with it
    return tokenizer


def encode_text(tokenizer, text: str, text_pair: str | None, label: int, max_length: int) -> Example:
    """One sequence-classification example (tokenizer: framed); ValueError when longer than max_length tokens."""
    encoding = tokenizer(text, text_pair, return_token_type_ids=True)
    if len(encoding["input_ids"]) > max_length:
        raise ValueError(f"{len(encoding['input_ids'])} tokens, more than max_length {max_length} (at most the model's n_positions)")
    return {"input_ids": encoding["input_ids"], "token_type_ids": encoding["token_type_ids"], "labels": [label]}


def encode_words(tokenizer, words: list[str], word_labels: list[int], max_length: int) -> Example:
    """One token-classification example (tokenizer: framed; the words joined by spaces): each word's
    label on its first token, -100 on its other tokens and on the framing eos tokens; ValueError when
    longer than max_length tokens."""
    text, spans = word_spans(words)
    encoding = tokenizer(text, return_offsets_mapping=True, return_token_type_ids=True)
    labels = align_labels(encoding["offset_mapping"], spans, word_labels)  # framing tokens: offsets (0, 0)
    if sum(label != IGNORE for label in labels) != len(words):
        raise ValueError(f"{len(words)} words but {sum(label != IGNORE for label in labels)} first tokens")
    if len(labels) > max_length:
        raise ValueError(f"{len(labels)} tokens, more than max_length {max_length} (at most the model's n_positions)")
    return {"input_ids": encoding["input_ids"], "token_type_ids": encoding["token_type_ids"], "labels": labels}


def collate(examples: list[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch: input_ids, token_type_ids, attention_mask [B, T]; labels [B] (sequence
    tasks) or [B, T] padded with -100 (token tasks)."""
    width = max(len(e["input_ids"]) for e in examples)

    def pad(rows, value):
        return torch.tensor([row + [value] * (width - len(row)) for row in rows])

    batch = {
        "input_ids": pad([e["input_ids"] for e in examples], pad_id),
        "token_type_ids": pad([e["token_type_ids"] for e in examples], 0),
        "attention_mask": pad([[1] * len(e["input_ids"]) for e in examples], 0),
    }
    token_level = len(examples[0]["labels"]) == len(examples[0]["input_ids"])
    batch["labels"] = pad([e["labels"] for e in examples], IGNORE) if token_level else torch.tensor([e["labels"][0] for e in examples])
    return batch


@torch.no_grad()
def predict(model, examples: list[Example], pad_id: int, batch_size: int = 32) -> list[list[int]]:
    """Argmax labels: per example, [label] (sequence head) or the labels at its scored positions
    (token head: the positions whose gold label is not -100, in order)."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        batch = collate(chunk, pad_id)
        labels = batch.pop("labels")
        device = next(model.parameters()).device
        guesses = model(**{k: v.to(device) for k, v in batch.items()}).logits.argmax(-1).cpu()
        if labels.dim() == 1:
            out += [[int(g)] for g in guesses]
        else:
            out += [guesses[i][labels[i] != IGNORE].tolist() for i in range(len(chunk))]
    model.train(was_training)
    return out


def gold(examples: list[Example]) -> list[list[int]]:
    """The scored labels of each example, laid out as predict() lays out its guesses."""
    return [[label for label in e["labels"] if label != IGNORE] for e in examples]


def accuracy(predicted: list[list[int]], labels: list[list[int]]) -> float:
    """Share of scored positions (one per example for sequence tasks, one per word for tagging) that match."""
    hits = sum(p == g for ps, gs in zip(predicted, labels) for p, g in zip(ps, gs))
    total = sum(len(gs) for gs in labels)
    return hits / total if total else 0.0


def score(model, examples: list[Example], label_names: list[str], pad_id: int) -> dict[str, float]:
    """Held-out scores: accuracy (per example, or per word for tagging); for BIO tagging also
    entity-level precision, recall and F1 (exact type and span, components/core/tagging.py)."""
    from components.core.tagging import entity_f1

    predicted, labels = predict(model, examples, pad_id), gold(examples)
    scores = {"accuracy": accuracy(predicted, labels)}
    if len(examples[0]["labels"]) > 1:  # token classification
        names = lambda rows: [[label_names[i] for i in row] for row in rows]  # noqa: E731
        scores.update({f"entity_{k}": v for k, v in entity_f1(names(predicted), names(labels)).items()})
    return scores
