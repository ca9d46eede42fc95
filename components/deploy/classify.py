"""Classification for the server: one forward pass per dynamic batch, probabilities per label.

Pure torch + transformers (no Ray). A sequence classifier gives each input (a text or a text
pair) a label; a token classifier gives each word of a text a label, read at the word's first
token (how token classifiers are trained: the label sits on a word's first sub-token).
Words are the tokenizer's own pre-tokenized words ("Paris," is "Paris" and ","), their spaces
trimmed; character offsets index the request's text.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Item = tuple[str, str | None]  # (text, text_pair or None)


@dataclass(frozen=True)
class Word:
    """A labelled word (or entity): text[start:end], its label and that label's probability."""

    word: str
    start: int  # character offsets into the request's text
    end: int
    entity: str
    score: float


def _encode(tokenizer, items: list[Item], **kwargs):
    texts = [t for t, _ in items]
    pairs = [p for _, p in items]
    if all(p is None for p in pairs):
        return tokenizer(texts, padding=True, return_tensors="pt", **kwargs)
    # A batch mixing texts and pairs: each encoded alone (the tokenizer wants pairs for all or none), then padded.
    encoded = [tokenizer(t, p, **kwargs) for t, p in items]
    return tokenizer.pad(encoded, return_tensors="pt")


def input_tokens(tokenizer, item: Item) -> int:
    """Tokens the model reads for `item`, special tokens included."""
    return len(tokenizer(item[0], item[1])["input_ids"])


@torch.no_grad()
def classify(model, tokenizer, items: list[Item], labels: list[str]) -> list[dict[str, float]]:
    """Each item's probability per label ({label: p}, summing to 1), from one padded batch."""
    batch = _encode(tokenizer, items).to(next(model.parameters()).device)
    probs = model(**batch).logits.float().softmax(-1).tolist()  # [B, num_labels]
    return [dict(zip(labels, row)) for row in probs]


def best(scores: dict[str, float]) -> tuple[str, float]:
    """The most probable label and its probability."""
    label = max(scores, key=scores.get)
    return label, scores[label]


@torch.no_grad()
def tag(model, tokenizer, texts: list[str], labels: list[str]) -> list[list[Word]]:
    """Every word of each text with its label (including "O"), from one padded batch."""
    batch = _encode(tokenizer, [(t, None) for t in texts], return_offsets_mapping=True)
    offsets = batch.pop("offset_mapping").tolist()  # [B, T, 2] character spans
    probs = model(**batch.to(next(model.parameters()).device)).logits.float().softmax(-1)  # [B, T, num_labels]
    out = []
    for i, text in enumerate(texts):
        spans = word_spans(text, batch.word_ids(i), offsets[i])
        score, index = probs[i].max(-1)
        out.append([Word(text[s:e], s, e, labels[index[t]], round(float(score[t]), 6)) for s, e, t in spans])
    return out


def word_spans(text: str, word_ids: list[int | None], offsets: list[list[int]]) -> list[tuple[int, int, int]]:
    """(start, end, first token index) of each word: its tokens' span, leading and trailing spaces trimmed.

    word_ids: the word index of each token (None: special or padding token); offsets: each token's
    (start, end) in `text`. A word of spaces only (no visible character) is dropped.
    """
    words: dict[int, list[int]] = {}
    for t, w in enumerate(word_ids):
        if w is None:
            continue
        if w not in words:
            words[w] = [offsets[t][0], offsets[t][1], t]
        else:
            words[w][1] = offsets[t][1]
    spans = []
    for start, end, first in words.values():
        piece = text[start:end]
        start, end = start + len(piece) - len(piece.lstrip()), end - len(piece) + len(piece.rstrip())
        if end > start:
            spans.append((start, end, first))
    return spans


def entities(text: str, words: list[Word], aggregation: str = "word", outside: str = "O") -> list[Word]:
    """The labelled words that are not `outside`, each alone ("word") or merged into entities ("entity").

    "entity" merges consecutive words of one type under the BIO scheme: B-X starts an entity of
    type X, I-X (or a bare X) continues one of type X; the entity's label is X, its score the mean
    of its words' scores, its text the request's text across them.
    """
    kept = [w for w in words if w.entity != outside]
    if aggregation == "word":
        return kept
    groups: list[list[Word]] = []
    previous = None  # the word before, to merge only adjacent words
    for w in words:
        prefix, _, kind = w.entity.partition("-") if w.entity[:2] in ("B-", "I-") else ("", "", w.entity)
        if w.entity == outside:
            previous = None
            continue
        if previous is None or prefix == "B" or kind != _type(groups[-1][-1].entity):
            groups.append([w])
        else:
            groups[-1].append(w)
        previous = w
    return [Word(text[g[0].start:g[-1].end], g[0].start, g[-1].end, _type(g[0].entity),
                 round(sum(w.score for w in g) / len(g), 6)) for g in groups]


def _type(label: str) -> str:
    return label[2:] if label[:2] in ("B-", "I-") else label
