"""Instruction data: generated task families, templates, loaders and their errors, split, mixing, scoring."""

import json
import re
from collections import Counter

import pytest
from pydantic import ValidationError

from components.data.config import TokenizerConfig
from components.data.corpus import DataError
from components.data.instructions import (
    CHAT_TEMPLATE,
    FAMILIES,
    Example,
    InstructionDataConfig,
    exact_match,
    format_prompt,
    generate_tasks,
    load_alpaca_jsonl,
    load_chat_jsonl,
    load_examples,
    load_instructions,
    mix_by_weights,
    read_examples_jsonl,
    split_examples,
    write_examples_jsonl,
)
from components.data.tokenizer import train_bpe
from components.data.vocabulary import DICTIONARY


@pytest.fixture(scope="module")
def examples():
    return generate_tasks(60, seed=0)


def _instruction_and_input(prompt):
    m = re.fullmatch(r"### Instruction:\n(.*?)\n\n(?:### Input:\n(.*)\n\n)?### Response:\n", prompt, re.S)
    assert m, prompt
    return m.group(1), m.group(2) or ""


# --- generation ------------------------------------------------------------------------


def test_generation_is_deterministic_and_seeded(examples):
    assert generate_tasks(60, seed=0) == examples
    assert generate_tasks(60, seed=1) != examples
    # A family's data does not depend on which other families are generated.
    only_add = generate_tasks(60, seed=0, families=["add"])
    assert only_add == [e for e in examples if e.family == "add"]
    with pytest.raises(ValueError, match="'nope'"):
        generate_tasks(5, seed=0, families=["add", "nope"])


def test_every_family_present_with_distinct_prompts(examples):
    counts = Counter(e.family for e in examples)
    assert set(counts) == set(FAMILIES) and set(counts.values()) == {60}
    assert len({e.prompt for e in examples}) == len(examples)
    assert all(e.response and e.response == e.response.strip() for e in examples)


def _expected(family, instruction, inp):
    """Recompute the answer from the prompt text alone."""
    if family == "add":
        a, b = map(int, re.fullmatch(r"Add (\d+) and (\d+)\.", instruction).groups())
        assert 0 <= a < 50 and 0 <= b < 50
        return str(a + b)
    words = instruction.split(": ", 1)[-1].split()
    if family == "reverse":
        return " ".join(words[::-1])
    if family == "sort":
        return " ".join(sorted(words))
    if family == "count":
        return str(len(words))
    if family == "copy_field":
        field = re.fullmatch(r"What is the (\w+)\?", instruction).group(1)
        return dict(kv.split(": ") for kv in inp.split("; "))[field]
    if family == "first_sentence":
        return inp.split(". ")[0] + "."
    if family == "translate":
        lang = ("French", "Spanish").index(re.match(r"Translate to (\w+):", instruction).group(1))
        return " ".join(DICTIONARY[w][lang] for w in words)
    raise AssertionError(family)


def test_answers_are_correct(examples):
    for e in examples:
        instruction, inp = _instruction_and_input(e.prompt)
        assert e.response == _expected(e.family, instruction, inp), e


def test_prompts_and_responses_are_short(examples):
    texts = [e.prompt + e.response for e in examples]
    tok = train_bpe(texts, TokenizerConfig(vocab_size=1024))
    lengths = [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]
    assert max(lengths) < 64
    assert max(len(tok(e.response)["input_ids"]) for e in examples) <= 8


# --- split and mixing ------------------------------------------------------------------


def test_split_is_disjoint_covering_and_deterministic(examples):
    dup = examples + [Example("other", examples[0].prompt, "x")]  # identical prompt, other answer
    splits = split_examples(dup, seed=3)
    assert splits == split_examples(dup, seed=3)
    assert splits != split_examples(dup, seed=4)
    prompts = {name: {e.prompt for e in part} for name, part in splits.items()}
    assert sum(map(len, splits.values())) == len(examples)  # duplicate dropped, first kept
    assert set().union(*prompts.values()) == {e.prompt for e in examples}
    assert not (prompts["train"] & prompts["validation"] or prompts["train"] & prompts["test"]
                or prompts["validation"] & prompts["test"])
    assert examples[0] in sum(splits.values(), [])
    for part in splits.values():  # input order kept within each split
        assert sorted(part, key=examples.index) == part
    n = len(examples)
    assert 0.05 * n < len(splits["validation"]) < 0.15 * n and 0.05 * n < len(splits["test"]) < 0.15 * n
    # Membership depends only on the prompt: a subset keeps each example's split.
    sub = split_examples(examples[::3], seed=3)
    for name in sub:
        assert set(sub[name]) <= set(splits[name])


def test_split_keeps_small_splits_non_empty():
    splits = split_examples(generate_tasks(3, seed=0, families=["add"]), seed=0)
    assert [len(splits[k]) for k in ("train", "validation", "test")] == [1, 1, 1]
    with pytest.raises(ValueError):
        split_examples([], seed=0, validation_fraction=0.6, test_fraction=0.5)


def test_mixing_follows_weights(examples):
    by_family = {}
    for e in examples:
        by_family.setdefault(e.family, []).append(e)
    mixed = mix_by_weights(by_family, {"add": 3, "sort": 1, "count": 0}, total=400, seed=0)
    assert mixed == mix_by_weights(by_family, {"add": 3, "sort": 1, "count": 0}, total=400, seed=0)
    assert Counter(e.family for e in mixed) == {"add": 300, "sort": 100}
    # Upsampled: every add example appears 5 times before any a 6th time.
    assert set(Counter(e for e in mixed if e.family == "add").values()) == {5}
    assert len(mix_by_weights(by_family, {"add": 1, "sort": 1, "reverse": 1}, total=10, seed=0)) == 10
    with pytest.raises(ValueError, match="'nope'"):
        mix_by_weights(by_family, {"add": 1, "nope": 1}, total=10, seed=0)
    with pytest.raises(ValueError):
        mix_by_weights(by_family, {"add": -1}, total=10, seed=0)


def test_exact_match():
    assert exact_match(" 19\n", "19")
    assert exact_match("19.", "19")
    assert exact_match("The cat is red", "The cat is red.")
    assert not exact_match("rome", "Rome")  # case is part of copied answers
    assert not exact_match("190", "19")
    assert not exact_match("frog boat", "frog boat hat")


# --- templates -------------------------------------------------------------------------


def test_format_prompt():
    assert format_prompt("Add 1 and 2.") == "### Instruction:\nAdd 1 and 2.\n\n### Response:\n"
    assert format_prompt("Copy.", "a b") == "### Instruction:\nCopy.\n\n### Input:\na b\n\n### Response:\n"


def test_chat_template_matches_format_prompt():
    tok = train_bpe(["### Instruction: add some words", "Response text here."], TokenizerConfig(vocab_size=300))
    tok.chat_template = CHAT_TEMPLATE

    def render(messages, gen):
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)

    user = [{"role": "user", "content": "Add 12 and 7."}]
    assert render(user, True) == format_prompt("Add 12 and 7.")
    assert render(user, False) == "### Instruction:\nAdd 12 and 7.\n\n"
    full = user + [{"role": "assistant", "content": "19"}]
    for gen in (True, False):
        assert render(full, gen) == format_prompt("Add 12 and 7.") + "19" + tok.eos_token
    system = [{"role": "system", "content": "Be brief."}] + full
    assert render(system, False) == format_prompt("Be brief.\n\nAdd 12 and 7.") + "19" + tok.eos_token
    empty_system = [{"role": "system", "content": ""}] + full
    assert render(empty_system, False) == format_prompt("Add 12 and 7.") + "19" + tok.eos_token


# --- loaders ---------------------------------------------------------------------------


def _write(path, lines):
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines), encoding="utf-8")
    return path


def test_loaders_accept_good_files(tmp_path):
    alpaca = _write(tmp_path / "a.jsonl", [
        {"instruction": "Add 1 and 2.", "output": "3"},
        "",
        {"instruction": "Copy.", "input": "x y", "output": "x y", "task": "copy", "extra": 1},
    ])
    assert load_alpaca_jsonl(alpaca) == [
        Example("default", format_prompt("Add 1 and 2."), "3"),
        Example("copy", format_prompt("Copy.", "x y"), "x y"),
    ]
    chat = _write(tmp_path / "c.jsonl", [
        {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello"}]},
        {"family": "f", "messages": [{"role": "system", "content": "Be brief."},
                                     {"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Yo"}]},
        {"messages": [{"role": "system", "content": ""}, USER, ASSISTANT]},
    ])
    assert load_chat_jsonl(chat) == [
        Example("default", format_prompt("Hi?"), "Hello"),
        Example("f", format_prompt("Be brief.\n\nHi?"), "Yo"),
        Example("default", format_prompt("Hi"), "Yo"),
    ]
    mixed = _write(tmp_path / "m.jsonl", alpaca.read_text().splitlines() + chat.read_text().splitlines())
    assert load_instructions(mixed) == load_alpaca_jsonl(alpaca) + load_chat_jsonl(chat)
    assert load_examples(InstructionDataConfig(source=str(mixed))) == load_instructions(mixed)


def test_write_read_round_trip(tmp_path, examples):
    path = tmp_path / "out" / "train.jsonl"
    odd = [  # a line separator inside JSON, an input that looks like a template section
        Example("f", format_prompt("Say \u2028 é", "x\n\n### Input:\ny"), "ok"),
        Example("g", format_prompt("A\n\nB"), "z"),
    ]
    write_examples_jsonl(path, examples + odd)
    assert read_examples_jsonl(path) == examples + odd
    assert json.loads(path.read_text().splitlines()[0]).keys() == {"instruction", "input", "output", "family"}
    assert [p.name for p in path.parent.iterdir()] == ["train.jsonl"]  # no temp file left behind
    with pytest.raises(ValueError):
        write_examples_jsonl(tmp_path / "bad.jsonl", [Example("f", "not a template prompt", "x")])
    with pytest.raises(DataError, match="no such file"):
        read_examples_jsonl(tmp_path / "missing.jsonl")
    (tmp_path / "latin1.jsonl").write_bytes(b'{"instruction": "caf\xe9", "output": "x"}\n')
    with pytest.raises(DataError, match="UTF-8"):
        read_examples_jsonl(tmp_path / "latin1.jsonl")


GOOD_ALPACA = {"instruction": "Add 1 and 2.", "output": "3"}
USER, ASSISTANT = {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}


@pytest.mark.parametrize("bad, message", [
    ("{not json", "invalid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ({"output": "3"}, "missing field 'instruction'"),
    ({"instruction": "Add.", "output": ""}, "'output' is empty"),
    ({"instruction": "  ", "output": "3"}, "'instruction' is empty"),
    ({"instruction": "Add.", "output": 3}, "'output' must be a string"),
    ({"instruction": "Add.", "input": None, "output": "3"}, "'input' must be a string"),
    ({"instruction": "Add.", "output": "3", "family": 1}, "'family' must be a string"),
    ({"messages": []}, "non-empty list"),
    ({"messages": "hi"}, "non-empty list"),
    ({"messages": [USER, "x"]}, r"messages\[1\]"),
    ({"messages": [{"role": "bot", "content": "x"}, ASSISTANT]}, "unknown role 'bot'"),
    ({"messages": [{"content": "x"}, ASSISTANT]}, "missing field 'role'"),
    ({"messages": [{"role": "user", "content": 5}, ASSISTANT]}, "'content' must be a string"),
    ({"messages": [USER, {"role": "assistant", "content": ""}]}, "'content' is empty"),
    ({"messages": [USER]}, "last message must be from the assistant"),
    ({"messages": [USER, ASSISTANT, USER, ASSISTANT]}, "only the last message"),
    ({"messages": [{"role": "system", "content": "s"}, ASSISTANT]}, "no user message"),
    ({"messages": [{"role": "system"}, USER, ASSISTANT]}, "missing field 'content'"),
])
def test_load_instructions_rejects_bad_lines_naming_file_and_line(tmp_path, bad, message):
    path = _write(tmp_path / "bad.jsonl", [GOOD_ALPACA, "", bad])
    with pytest.raises(DataError, match=message) as info:
        load_instructions(path)
    assert str(info.value).startswith(f"{path}:3")


def test_format_specific_loaders_reject_the_other_format(tmp_path):
    path = _write(tmp_path / "x.jsonl", [GOOD_ALPACA])
    with pytest.raises(DataError, match=f"{re.escape(str(path))}:1: field 'messages'"):
        load_chat_jsonl(path)
    path = _write(tmp_path / "y.jsonl", [{"messages": [USER, ASSISTANT]}])
    with pytest.raises(DataError, match=f"{re.escape(str(path))}:1: missing field 'instruction'"):
        load_alpaca_jsonl(path)


# --- config ----------------------------------------------------------------------------


def test_config_validates_families_and_weights():
    cfg = InstructionDataConfig(families=["add", "sort"], n_per_family=5)
    assert {e.family for e in load_examples(cfg)} == {"add", "sort"}
    with pytest.raises(ValidationError, match="'nope'"):
        InstructionDataConfig(families=["add", "nope"])
    with pytest.raises(ValidationError):
        InstructionDataConfig(weights={"add": -1.0})
    with pytest.raises(ValidationError):
        InstructionDataConfig(n_per_familly=5)
    assert all(f.description for f in InstructionDataConfig.model_fields.values())


def test_a_small_test_budget_scores_every_family_not_the_first_ones():
    from components.data.instructions import generate_tasks, spread

    grouped = generate_tasks(5, seed=0)  # grouped by family, as a split is
    families = list(dict.fromkeys(e.family for e in grouped))
    few = spread(grouped, len(families) + 2)
    assert [e.family for e in few[: len(families)]] == families and len(few) == len(families) + 2
    assert few[len(families)] == [e for e in grouped if e.family == families[0]][1]  # then each family's second
    assert spread(grouped, 1000) == grouped and spread(grouped, len(grouped)) == grouped
    assert len(set(map(id, spread(grouped, 17)))) == 17
