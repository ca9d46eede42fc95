"""Word-level BIO tags on sub-word tokens, and entity-level scores (seqeval's default, strict-span F1).

A tagged sentence is a list of words and a list of tags ("O", "B-PER", "I-PER", ...). The model
sees sub-word tokens, so each word's tag goes on its FIRST token and the others get -100 (no loss,
not scored), as in the Hugging Face token-classification recipe.
"""

from __future__ import annotations

IGNORE = -100  # label of positions that carry no loss and no score


def word_spans(words: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """The words joined by single spaces, and each word's [start, end) character span in that text."""
    spans, position = [], 0
    for word in words:
        spans.append((position, position + len(word)))
        position += len(word) + 1
    return " ".join(words), spans


def align_labels(offsets: list[tuple[int, int]], spans: list[tuple[int, int]], word_labels: list[int]) -> list[int]:
    """Token labels [n_tokens]: a word's label on the first token that overlaps the word, -100 elsewhere.

    offsets: each token's [start, end) characters (a byte-level "Ġword" token starts at the space
    before the word, so overlap, not the start, decides); (0, 0) marks an added special token.
    """
    labels, word = [], 0
    for start, end in offsets:
        while word < len(spans) and spans[word][1] <= start:
            word += 1  # this token starts after the current word: move on
        first = word < len(spans) and start < spans[word][1] and end > spans[word][0] and end > start
        labels.append(word_labels[word] if first else IGNORE)
        if first:
            word += 1  # the word's later tokens overlap it but are not its first: they stay -100
            while word < len(spans) and spans[word][1] <= end:  # a token covering several words (rare)
                word += 1
    return labels


def bio_spans(tags: list[str]) -> set[tuple[str, int, int]]:
    """Entities of a BIO tag sequence as (type, first word, last word + 1).

    Strict BIO (seqeval's default mode): an entity starts at B-X, or at an I-X that does not
    continue an X (a stray I- opens a new entity, as conlleval does).
    """
    entities, kind, start = set(), None, 0
    for i, tag in enumerate([*tags, "O"]):
        prefix, _, label = tag.partition("-")
        continues = prefix == "I" and label == kind
        if kind is not None and not continues:
            entities.add((kind, start, i))
            kind = None
        if prefix == "B" or (prefix == "I" and not continues):
            kind, start = label, i
    return entities


def entity_f1(predicted: list[list[str]], gold: list[list[str]]) -> dict[str, float]:
    """Micro precision, recall and F1 over entities: one counts only if its type and span match exactly."""
    if len(predicted) != len(gold):
        raise ValueError(f"{len(predicted)} predicted sentences, {len(gold)} gold")
    hits = n_pred = n_gold = 0
    for p, g in zip(predicted, gold):
        if len(p) != len(g):
            raise ValueError(f"a predicted sentence has {len(p)} tags, its gold {len(g)}")
        ps, gs = bio_spans(p), bio_spans(g)
        hits, n_pred, n_gold = hits + len(ps & gs), n_pred + len(ps), n_gold + len(gs)
    precision = hits / n_pred if n_pred else 0.0
    recall = hits / n_gold if n_gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}
