"""Named-entity data: sentences of words with BIO tags, generated from a seed or read from CoNLL-2003 files.

CoNLL-2003 format: one token per line, its columns separated by whitespace, the word first and the
NER tag last (`EU NNP B-NP B-ORG`; a two-column `EU B-ORG` file reads the same); a blank line ends a
sentence; `-DOCSTART-` lines separate documents and are skipped. Malformed input raises DataError
naming `file:line`.

The generated sentences use the CoNLL entity types PER, LOC and ORG, with multi-word names (so I-
tags occur) and words that are a person in one sentence and a place in another ("Jordan", "Paris",
"Florence"): only the context tells them apart.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

from components.data.corpus import DataError, read_utf8

LABELS = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG")  # the generated sentences' tag set
_TAG = re.compile(r"O|[BI]-[A-Za-z]+")


@dataclass(frozen=True)
class Sentence:
    words: tuple[str, ...]
    tags: tuple[str, ...]  # BIO tags, one per word
    where: str = ""  # "file:line" of its first word; "" when generated


# --- generated sentences ------------------------------------------------------------------------

_PEOPLE = ("Ada Lovelace", "Alan Turing", "Grace Hopper", "Marie Curie", "Nora Ortiz", "Omar Haddad", "Mia Rossi",
           "Leo", "Kim Park", "Hana Sato", "Ivan Petrov", "Eve", "Jordan", "Paris Hilton", "Florence Nightingale")
_PLACES = ("Rome", "Oslo", "Lima", "Cairo", "Tokyo", "New York", "Buenos Aires", "Jordan", "Paris", "Florence",
           "South Korea", "Madrid", "Dublin", "Cape Town")
_ORGS = ("Acme Corp", "the United Nations", "Globex", "Initech", "the Red Cross", "Stark Industries", "Umbrella",
         "Oxford University", "the World Bank", "Hooli")
_TEMPLATES = (
    "{PER} lives in {LOC} .", "{PER} works for {ORG} in {LOC} .", "{ORG} opened an office in {LOC} last year .",
    "yesterday {PER} met {PER} at {ORG} .", "{PER} flew from {LOC} to {LOC} on Monday .",
    "the mayor of {LOC} thanked {ORG} .", "{PER} said {ORG} will hire more staff .",
    "after a long trip , {PER} returned to {LOC} .", "{ORG} and {ORG} signed a deal in {LOC} .",
)
_POOLS = {"PER": _PEOPLE, "LOC": _PLACES, "ORG": _ORGS}


def generate(n: int, seed: int) -> list[Sentence]:
    """`n` distinct sentences from `random.Random(f"{seed}:ner")`; the same (n, seed), the same list.
    A lowercase "the" that opens an ORG name stays outside the entity (tagged O), as in CoNLL."""
    rng, seen = random.Random(f"{seed}:ner"), {}
    for _ in range(50 * n):
        words, tags = [], []
        for piece in rng.choice(_TEMPLATES).split():
            kind = piece.strip("{}") if piece.startswith("{") else None
            if kind is None:
                words.append(piece)
                tags.append("O")
                continue
            name = rng.choice(_POOLS[kind]).split()
            if name[0] == "the":
                words.append("the")
                tags.append("O")
                name = name[1:]
            words += name
            tags += [f"B-{kind}"] + [f"I-{kind}"] * (len(name) - 1)
        sentence = Sentence(tuple(words), tuple(tags))
        seen.setdefault(sentence.words, sentence)
        if len(seen) == n:
            return list(seen.values())
    raise ValueError(f"only {len(seen)} distinct NER sentences from seed {seed}, asked {n}")


# --- CoNLL-2003 files -------------------------------------------------------------------------------


def read_conll(path: str | Path) -> list[Sentence]:
    """The sentences of a CoNLL-2003 file (word first, tag last on each line; blank line between sentences)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    sentences, words, tags, first = [], [], [], 0
    for lineno, line in enumerate(read_utf8(path).split("\n"), start=1):
        columns = line.split()
        if not columns or columns[0] == "-DOCSTART-":
            if words:
                sentences.append(Sentence(tuple(words), tuple(tags), f"{path}:{first}"))
                words, tags = [], []
            continue
        first = first if words else lineno
        if len(columns) < 2:
            raise DataError(f"{path}:{lineno}: expected a word and its tag separated by whitespace, got {line.strip()!r}")
        if not _TAG.fullmatch(columns[-1]):
            raise DataError(f"{path}:{lineno}: tag {columns[-1]!r} is not a BIO tag (O, B-TYPE or I-TYPE)")
        words.append(columns[0])
        tags.append(columns[-1])
    if words:
        sentences.append(Sentence(tuple(words), tuple(tags), f"{path}:{first}"))
    if not sentences:
        raise DataError(f"{path}: no sentences")
    return sentences


def label_set(sentences: list[Sentence]) -> tuple[str, ...]:
    """The tags of `sentences`: O first, then B-/I- pairs by entity type (both of a type, even if one is absent)."""
    kinds = sorted({t[2:] for s in sentences for t in s.tags if t != "O"})
    return ("O", *(f"{p}-{k}" for k in kinds for p in "BI"))
