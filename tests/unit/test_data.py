"""Data layer: corpus, loaders and their errors, hash split, jsonl artifacts, BPE tokenizer, packing."""

import json
import random
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError
from transformers import AutoTokenizer

from components.data.config import DataConfig, TokenizerConfig
from components.data.corpus import (
    DataError,
    documents_digest,
    load_documents,
    python_docs_corpus,
    read_jsonl,
    split_by_hash,
    write_jsonl,
)
from components.data.tokenizer import tokenize_and_pack, train_bpe


@pytest.fixture(scope="module")
def corpus():
    return python_docs_corpus()


@pytest.fixture(scope="module")
def tok(corpus):
    # A subset keeps training well under a second; vocab 512 is still reached on it.
    return train_bpe(corpus[:60], TokenizerConfig(vocab_size=512))


# --- corpus and config ---------------------------------------------------------------


def test_corpus_is_real_english_and_deterministic(corpus):
    assert sum(map(len, corpus)) > 300_000
    assert len(corpus) > 100
    assert all(0 < len(d) <= 2000 for d in corpus)
    words = set(" ".join(corpus).lower().split())
    assert {"the", "statement", "function", "exception", "which"} <= words
    assert python_docs_corpus() == corpus
    assert load_documents(DataConfig()) == corpus


def test_configs_forbid_unknown_keys_and_check_bounds():
    with pytest.raises(ValidationError):
        DataConfig(sources="x")
    with pytest.raises(ValidationError):
        DataConfig(validation_fraction=0.5)
    with pytest.raises(ValidationError):
        TokenizerConfig(vocab_size=100)
    with pytest.raises(ValidationError):
        TokenizerConfig(pad_token="<|endoftext|>")
    for model in (DataConfig, TokenizerConfig):
        assert all(f.description for f in model.model_fields.values())


def test_max_documents_and_min_chars(corpus):
    assert load_documents(DataConfig(max_documents=5)) == corpus[:5]
    kept = load_documents(DataConfig(min_chars=1500))
    assert kept and all(len(d.strip()) >= 1500 for d in kept)


# --- split and digest ----------------------------------------------------------------


def test_split_deterministic_disjoint_covering(corpus):
    train, val = split_by_hash(corpus, 0.2, seed=0)
    assert (train, val) == split_by_hash(corpus, 0.2, seed=0)
    assert len(train) + len(val) == len(corpus)
    assert sorted(train + val) == sorted(corpus)
    assert not set(train) & set(val)
    assert 0.1 < len(val) / len(corpus) < 0.3
    assert split_by_hash(corpus, 0.2, seed=1)[1] != val


def test_split_independent_of_order(corpus):
    shuffled = corpus[:]
    random.Random(0).shuffle(shuffled)
    train, val = split_by_hash(corpus, 0.1, seed=3)
    train2, val2 = split_by_hash(shuffled, 0.1, seed=3)
    assert set(train) == set(train2) and set(val) == set(val2)


def test_split_roughly_matches_fraction_on_many_docs():
    docs = [f"document number {i}" for i in range(20_000)]
    _, val = split_by_hash(docs, 0.1, seed=0)
    assert abs(len(val) / len(docs) - 0.1) < 0.01


@pytest.mark.parametrize("docs", [["a", "b"], ["only one side?", "x", "y"], ["same", "same"]])
def test_split_both_sides_non_empty(docs):
    for frac in (0.01, 0.49):
        for seed in range(5):
            train, val = split_by_hash(docs, frac, seed)
            assert train and val and len(train) + len(val) == len(docs)


def test_digest_tracks_content_and_boundaries():
    assert documents_digest(["ab", "c"]) == documents_digest(["ab", "c"])
    assert documents_digest(["ab", "c"]) != documents_digest(["a", "bc"])
    assert len(documents_digest([])) == 16


def test_jsonl_artifact_round_trip(tmp_path):
    docs = ["plain", "line\nbreaks\r\n and \u2028 separators", 'quotes " and ünïcode 🙂']
    path = tmp_path / "splits" / "train.jsonl"
    write_jsonl(path, docs)
    assert read_jsonl(path) == docs
    assert [p.name for p in path.parent.iterdir()] == ["train.jsonl"]  # no temp file left


# --- loaders and their errors ---------------------------------------------------------


def _jsonl(tmp_path, lines):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_jsonl_loader(tmp_path):
    path = _jsonl(tmp_path, [json.dumps({"body": "first"}), "", json.dumps({"body": "second", "x": 1})])
    assert load_documents(DataConfig(source=str(path), text_field="body")) == ["first", "second"]


@pytest.mark.parametrize(
    "bad, message",
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"other": "x"}', "missing field 'text'"),
        ('{"text": 3}', "must be a string"),
    ],
)
def test_jsonl_errors_name_file_and_line(tmp_path, bad, message):
    ok = json.dumps({"text": "fine"})
    path = _jsonl(tmp_path, [ok] * 6 + [bad, ok])
    with pytest.raises(DataError, match=message) as err:
        load_documents(DataConfig(source=str(path)))
    assert "data.jsonl:7: " in str(err.value)


def test_parquet_loader_and_missing_column(tmp_path):
    path = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"content": ["alpha doc", "beta doc"], "n": [1, 2]}), path)
    assert load_documents(DataConfig(source=str(path), text_field="content")) == ["alpha doc", "beta doc"]
    with pytest.raises(DataError, match=r"docs\.parquet.*missing column 'text'"):
        load_documents(DataConfig(source=str(path)))
    with pytest.raises(DataError, match=r"docs\.parquet: row 0: column 'n' must be a string"):
        load_documents(DataConfig(source=str(path), text_field="n"))


def test_txt_file_and_directory(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("first block\nstill first\n\n  \nsecond block\n\n\nx\n", encoding="utf-8")
    assert load_documents(DataConfig(source=str(path))) == ["first block\nstill first", "second block", "x"]
    assert load_documents(DataConfig(source=str(path), min_chars=2)) == ["first block\nstill first", "second block"]
    (tmp_path / "dir" / "sub").mkdir(parents=True)
    (tmp_path / "dir" / "b.txt").write_text("bee\n\nbee two")
    (tmp_path / "dir" / "sub" / "a.txt").write_text("nested")
    (tmp_path / "dir" / "a.txt").write_text("ay")
    (tmp_path / "dir" / "ignored.md").write_text("not text")
    assert load_documents(DataConfig(source=str(tmp_path / "dir"))) == ["ay", "bee\n\nbee two", "nested"]


def test_missing_empty_and_unsupported_sources(tmp_path):
    with pytest.raises(DataError, match="nope.jsonl: no such file"):
        load_documents(DataConfig(source=str(tmp_path / "nope.jsonl")))
    (tmp_path / "empty.txt").write_text("\n\n")
    with pytest.raises(DataError, match="empty.txt: no documents"):
        load_documents(DataConfig(source=str(tmp_path / "empty.txt")))
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported file type"):
        load_documents(DataConfig(source=str(tmp_path / "data.csv")))
    (tmp_path / "bin.txt").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DataError, match="bin.txt: not valid UTF-8"):
        load_documents(DataConfig(source=str(tmp_path / "bin.txt")))


# --- tokenizer and packing ------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "def f(x):\n    return x  # done .",
        "Grüße, naïve café — 日本語テキスト 🙂🚀",
        " \t\n\r  spaces ,  . ",
        "",
    ],
)
def test_tokenizer_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_vocab_size_and_special_tokens(tok):
    assert len(tok) == 512
    assert tok.bos_token == tok.eos_token == "<|endoftext|>"
    assert tok.pad_token == "<|pad|>" and tok.pad_token_id != tok.eos_token_id
    assert tok.unk_token_id is not None
    assert tok.model_max_length == 1024
    assert len(tok.encode("The statement is executed.")) < len("The statement is executed.")


def test_save_and_load_with_auto_tokenizer(tok, tmp_path):
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "Exceptions are raised — ünïcode 🙂"
    assert loaded.encode(text) == tok.encode(text)
    assert loaded.decode(loaded.encode(text)) == text
    assert (loaded.eos_token_id, loaded.pad_token_id, len(loaded)) == (tok.eos_token_id, tok.pad_token_id, 512)


def test_pack_shapes_and_eos_separation(tok):
    docs = ["first document here", "the second one", "third"]
    ids = [tok.encode(d) for d in docs]
    total = sum(len(i) + 1 for i in ids)
    blocks = tokenize_and_pack(docs, tok, block_size=4)
    assert blocks.dtype == np.int32 and blocks.shape == (total // 4, 4)
    full = tokenize_and_pack(docs, tok, block_size=1).ravel().tolist()
    eos = tok.eos_token_id
    assert full == ids[0] + [eos] + ids[1] + [eos] + ids[2] + [eos]
    assert blocks.ravel().tolist() == full[: blocks.size]
    assert tokenize_and_pack(docs, tok, block_size=total + 1).shape == (0, total + 1)


def test_primer_adds_the_task_vocabulary_but_no_instruction_or_skill(corpus):
    from components.data.instructions import PROMPT_TEMPLATE
    from components.data.primer import primer_documents
    from components.data.vocabulary import DICTIONARY

    docs = load_documents(DataConfig(primer_documents=60))
    assert docs[: len(corpus)] == corpus and len(docs) == len(corpus) + 60
    primer = "\n".join(docs[len(corpus):])
    assert primer_documents(60) == docs[len(corpus):] and primer_documents(60, seed=1) != docs[len(corpus):]
    glossary = re.findall(r"In (French|Spanish), (\w+) is (\w+)\.", primer)
    assert len(glossary) > 20 and all(DICTIONARY[en][lang == "Spanish"] == word for lang, en, word in glossary)
    sums = re.findall(r"(\d+) plus (\d+) is (\d+)\.", primer)
    assert sums and all(int(a) + int(b) == int(c) for a, b, c in sums)
    assert sum(w in primer for en, (fr, es) in DICTIONARY.items() for w in (fr, es)) > 40
    # Knowledge, not the tasks: no template, no instruction wording, no reversed or sorted lists.
    assert "###" not in primer and PROMPT_TEMPLATE.split("{")[0] not in primer
    for wording in ("Reverse", "Sort", "Translate", "Count the", "Summarize", "What is the", "alphabetical"):
        assert wording not in primer
