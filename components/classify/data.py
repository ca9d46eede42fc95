"""The classify phase's data: a task's training and held-out examples, read or generated, then encoded.

Shared by the classify step and the compression of a classifier (components/compress/encoder.py),
which distils, prunes and scores a classifier on the same task data.
"""

from __future__ import annotations

from components.classify.config import LABELS, ClassifyConfig
from components.core.classification import encode_text, encode_words
from components.data import benchmarks, entities
from components.data.corpus import DataError


def load_examples(cfg: ClassifyConfig, tokenizer, max_length: int,
                  test_records: list[tuple[str, dict]] | None = None) -> tuple[list[dict], list[dict], list[str]]:
    """(train, test, label names) of cfg.task, encoded; a bad example is an error naming its file:line.
    test_records: sst2 / mnli held-out ("where", record) pairs instead of cfg.test_path's file."""
    if cfg.task == "ner":
        if cfg.train_path is None:
            sentences = entities.generate(cfg.train_examples + cfg.test_examples, cfg.data_seed)  # distinct: disjoint splits
            train, test = sentences[: cfg.train_examples], sentences[cfg.train_examples :]
        elif cfg.test_path is None:
            raise ValueError("test_path: a CoNLL train_path needs a held-out CoNLL test_path too")
        else:
            train, test = entities.read_conll(cfg.train_path), entities.read_conll(cfg.test_path)
        labels = list(entities.LABELS if cfg.train_path is None else entities.label_set(train))
        index = {name: i for i, name in enumerate(labels)}

        def encode_sentence(n: int, s: entities.Sentence) -> dict:
            where = s.where or f"generated sentence {n}"
            unknown = [t for t in s.tags if t not in index]
            if unknown:
                raise DataError(f"{where}: tag {unknown[0]!r} does not occur in the training file")
            return _encode(where, lambda: encode_words(tokenizer, list(s.words), [index[t] for t in s.tags], max_length))

        return [encode_sentence(n, s) for n, s in enumerate(train)], [encode_sentence(n, s) for n, s in enumerate(test)], labels

    test = benchmarks.labelled_texts(cfg.task, test_records or benchmarks.file_records(cfg.task, cfg.test_path))
    if cfg.train_path is None:
        held_out = {(text, pair) for _, text, pair, _ in test}
        generated = benchmarks.generated_records(cfg.task, cfg.train_examples, cfg.data_seed)
        train = [t for t in benchmarks.labelled_texts(cfg.task, [(f"generated record {i}", r) for i, r in enumerate(generated)])
                 if (t[1], t[2]) not in held_out]
    else:
        train = benchmarks.labelled_texts(cfg.task, benchmarks.file_records(cfg.task, cfg.train_path))

    def encode(where: str, text: str, pair: str | None, label: int) -> dict:
        return _encode(where, lambda: encode_text(tokenizer, text, pair, label, max_length))

    return [encode(*t) for t in train], [encode(*t) for t in test], list(LABELS[cfg.task])


def _encode(where: str, make):
    try:
        return make()
    except ValueError as e:
        raise DataError(f"{where}: {e}") from e
