"""NER data: generated sentences, the CoNLL-2003 reader and its errors, BIO spans and entity F1."""

import pytest

from components.core.tagging import align_labels, bio_spans, entity_f1, word_spans
from components.data.corpus import DataError
from components.data.entities import LABELS, generate, label_set, read_conll


def test_generated_sentences_are_seeded_distinct_and_well_tagged():
    sentences = generate(300, seed=1)
    assert sentences == generate(300, seed=1) and sentences != generate(300, seed=2)
    assert len({s.words for s in sentences}) == 300
    for s in sentences:
        assert len(s.words) == len(s.tags) and set(s.tags) <= set(LABELS)
        for previous, tag in zip(("O", *s.tags), s.tags):  # an I- tag only continues its own type
            assert not tag.startswith("I-") or previous[2:] == tag[2:]
    tags = {t for s in sentences for t in s.tags}
    assert tags == set(LABELS)  # multi-word names give I- tags of every type
    # The same word is a person in one sentence and a place in another: context decides.
    jordan = {s.tags[i] for s in sentences for i, w in enumerate(s.words) if w == "Jordan"}
    assert {"B-PER", "B-LOC"} <= jordan


CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O
. . O O

Peter B-PER
Blackburn I-PER
"""


def test_conll_reads_word_first_and_tag_last_skipping_docstart(tmp_path):
    path = tmp_path / "train.txt"
    path.write_text(CONLL)
    sentences = read_conll(path)
    assert [s.words for s in sentences] == [("EU", "rejects", "German", "call", "."), ("Peter", "Blackburn")]
    assert sentences[0].tags == ("B-ORG", "O", "B-MISC", "O", "O") and sentences[1].tags == ("B-PER", "I-PER")
    assert sentences[1].where == f"{path}:9"
    assert label_set(sentences) == ("O", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER")


@pytest.mark.parametrize("text, expected", [
    ("EU B-ORG\nrejects\n", r"train.txt:2: expected a word and its tag"),
    ("EU B-ORG\n\nPeter PERSON\n", r"train.txt:3: tag 'PERSON' is not a BIO tag"),
    ("-DOCSTART- -X- O\n\n", r"train.txt: no sentences"),
])
def test_conll_errors_name_file_and_line(tmp_path, text, expected):
    path = tmp_path / "train.txt"
    path.write_text(text)
    with pytest.raises(DataError, match=expected):
        read_conll(path)


def test_bio_spans_follow_strict_conll_rules():
    assert bio_spans(["B-PER", "I-PER", "O", "B-LOC"]) == {("PER", 0, 2), ("LOC", 3, 4)}
    assert bio_spans(["B-PER", "B-PER"]) == {("PER", 0, 1), ("PER", 1, 2)}  # B- always opens a new entity
    assert bio_spans(["O", "I-ORG", "I-ORG"]) == {("ORG", 1, 3)}  # a stray I- opens one (conlleval)
    assert bio_spans(["B-PER", "I-LOC"]) == {("PER", 0, 1), ("LOC", 1, 2)}  # I- of another type does not continue


def test_entity_f1_counts_only_exact_type_and_span():
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    assert entity_f1(gold, gold) == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    predicted = [["B-PER", "O", "O", "B-LOC"], ["B-LOC", "O"]]  # a truncated span and a wrong type
    scores = entity_f1(predicted, gold)
    assert scores["precision"] == pytest.approx(1 / 3) and scores["recall"] == pytest.approx(1 / 3)
    assert entity_f1([["O", "O", "O", "O"], ["O", "O"]], gold)["f1"] == 0.0
    with pytest.raises(ValueError, match="2 predicted sentences, 1 gold"):
        entity_f1(predicted, gold[:1])


def test_labels_go_on_the_first_token_overlapping_each_word():
    text, spans = word_spans(["New", "York", "."])
    assert text == "New York ." and spans == [(0, 3), (4, 8), (9, 10)]
    # byte-level tokens: "New", "ĠY", "ork", "Ġ", "." (a "Ġword" token starts at the space) and two framing tokens
    offsets = [(0, 0), (0, 3), (3, 5), (5, 8), (8, 9), (9, 10), (0, 0)]
    assert align_labels(offsets, spans, [3, 4, 0]) == [-100, 3, 4, -100, -100, 0, -100]
