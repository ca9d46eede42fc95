"""Instruction data: a bundled, seeded task generator, the Alpaca prompt/chat templates, jsonl
loaders for Alpaca and chat formats, a hash split, multi-task mixing and exact-match scoring
(`exact_match` lives in components.core.exact and is re-exported here). The tasks' words are
components/data/vocabulary.py's. Light to import (no torch): the spec validator reads it.

An `Example` holds the full model input (`prompt`, already formatted with `PROMPT_TEMPLATE`) and
the target `response` (no eos; the fine-tuning phase appends it). Malformed files raise
`DataError` naming `file:line`.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator

from components.core.exact import exact_match  # noqa: F401
from components.data.corpus import DataError, jsonl_records, unit_hash, write_records_jsonl
from components.data.vocabulary import ADJECTIVES, DICTIONARY, FIELDS, LANGUAGES, VERBS, WORDS, sentence


@dataclass(frozen=True)
class Example:
    family: str  # task name, e.g. "add"; "default" for loaded data without one
    prompt: str  # formatted model input, ending with "### Response:\n"
    response: str  # target completion, without eos


# --- prompt and chat templates ---------------------------------------------------------

PROMPT_TEMPLATE = "### Instruction:\n{instruction}\n\n### Response:\n"
_INPUT_SECTION = "### Input:\n{input}\n\n"
_HEAD, _TAIL = "### Instruction:\n", "\n\n### Response:\n"

# Renders [system?, user..., assistant?] exactly like format_prompt: system and user contents are
# joined by a blank line into the instruction; a final assistant message is the response + eos.
# The "### Response:\n" header is the generation prompt, as in other HF templates.
CHAT_TEMPLATE = (
    "{%- set ns = namespace(instruction='', response=none) -%}"
    "{%- for m in messages -%}"
    "{%- if m['role'] in ['system', 'user'] -%}"
    "{%- set ns.instruction = ns.instruction + ('\\n\\n' if ns.instruction and m['content'] else '') + m['content'] -%}"
    "{%- elif m['role'] == 'assistant' and loop.last -%}"
    "{%- set ns.response = m['content'] -%}"
    "{%- else -%}"
    "{{ raise_exception('unsupported message: ' + m['role'] + ' (only the last may be assistant)') }}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{{ '### Instruction:\\n' + ns.instruction + '\\n\\n' }}"
    "{%- if ns.response is not none or add_generation_prompt -%}{{ '### Response:\\n' }}{%- endif -%}"
    "{%- if ns.response is not none -%}{{ ns.response + eos_token }}{%- endif -%}"
)


def format_prompt(instruction: str, input: str = "") -> str:
    """The Alpaca-style prompt; the "### Input:" section appears only when `input` is non-empty."""
    text = PROMPT_TEMPLATE.format(instruction=instruction)
    if not input:
        return text
    return text.replace(_TAIL, "\n\n" + _INPUT_SECTION.format(input=input) + "### Response:\n")


def unformat(prompt: str) -> tuple[str, str]:
    """(instruction, input) with format_prompt(instruction, input) == prompt, else ValueError."""
    if prompt.startswith(_HEAD) and prompt.endswith(_TAIL):
        body = prompt[len(_HEAD) : -len(_TAIL)]
        instruction, _, inp = body.partition("\n\n### Input:\n")
        for candidate in ((instruction, inp), (body, "")):
            if format_prompt(*candidate) == prompt:
                return candidate
    raise ValueError(f"prompt does not follow PROMPT_TEMPLATE: {prompt[:60]!r}")


# --- bundled task families --------------------------------------------------------------

# Each generator draws one task: (instruction, input, response).
Task = tuple[str, str, str]


def _add(rng: random.Random) -> Task:
    a, b = rng.randrange(50), rng.randrange(50)
    return f"Add {a} and {b}.", "", str(a + b)


def _reverse(rng: random.Random) -> Task:
    words = rng.sample(WORDS, 3)
    return f"Reverse the words: {' '.join(words)}", "", " ".join(reversed(words))


def _sort(rng: random.Random) -> Task:
    words = rng.sample(WORDS, 3)
    return f"Sort the words: {' '.join(words)}", "", " ".join(sorted(words))


def _count(rng: random.Random) -> Task:
    words = [rng.choice(WORDS) for _ in range(rng.randint(2, 9))]  # a single-digit answer
    return f"Count the words: {' '.join(words)}", "", str(len(words))


def _copy_field(rng: random.Random) -> Task:
    fields = rng.sample(list(FIELDS), rng.randint(2, 3))
    record = {f: rng.choice(FIELDS[f]) for f in fields}
    asked = rng.choice(fields)
    return f"What is the {asked}?", "; ".join(f"{k}: {v}" for k, v in record.items()), record[asked]


def _first_sentence(rng: random.Random) -> Task:
    first, second = sentence(rng), sentence(rng)
    # The reference "summary" is the lead sentence (the lead-1 baseline), so it is exact.
    return "Summarize in one sentence.", f"{first} {second}", first


def _translate(rng: random.Random) -> Task:
    lang = rng.randrange(len(LANGUAGES))
    words = rng.sample(list(DICTIONARY), rng.randint(2, 3))
    answer = " ".join(DICTIONARY[w][lang] for w in words)
    return f"Translate to {LANGUAGES[lang]}: {' '.join(words)}", "", answer


def _summarize(rng: random.Random) -> Task:
    noun, adjective = rng.choice(WORDS), rng.choice(ADJECTIVES)
    verbs = rng.sample(VERBS, 2)
    facts = [f"The {noun} {verb}." for verb in verbs]
    facts.insert(rng.randrange(3), f"The {noun} is {adjective}.")
    # Three facts about one thing fused into one sentence: an abstractive summary with a single right
    # answer that needs every sentence (unlike first_sentence, the lead-1 baseline); verbs in text order.
    return "Summarize the facts in one sentence.", " ".join(facts), f"The {adjective} {noun} {verbs[0]} and {verbs[1]}."


FAMILIES: dict[str, Callable[[random.Random], Task]] = {
    "add": _add, "reverse": _reverse, "sort": _sort, "count": _count,
    "copy_field": _copy_field, "first_sentence": _first_sentence, "translate": _translate,
}
# Families generated only when a spec names them (not part of the default "all of FAMILIES"),
# so adding one leaves every existing workflow's data as it was.
OPT_IN_FAMILIES: dict[str, Callable[[random.Random], Task]] = {"summarize": _summarize}


def _check_families(families: list[str]) -> None:
    for name in families:
        if name not in FAMILIES and name not in OPT_IN_FAMILIES:
            raise ValueError(f"unknown task family {name!r} (known: {sorted(FAMILIES)}, opt-in: {sorted(OPT_IN_FAMILIES)})")


def generate_tasks(n_per_family: int, seed: int, families: list[str] | None = None) -> list[Example]:
    """`n_per_family` examples with distinct prompts for each family (default: all of FAMILIES, in its
    order; OPT_IN_FAMILIES only when named).

    Each family has its own `random.Random(f"{seed}:{family}")`, so a family's examples do not
    depend on which other families are selected. Output is grouped by family.
    """
    if n_per_family < 1:
        raise ValueError(f"n_per_family must be >= 1, got {n_per_family}")
    names = list(dict.fromkeys(FAMILIES if families is None else families))
    _check_families(names)
    examples = []
    for name in names:
        rng, prompts = random.Random(f"{seed}:{name}"), {}
        for _ in range(50 * n_per_family):  # duplicates are re-drawn; bounded for tiny prompt spaces
            instruction, inp, response = {**FAMILIES, **OPT_IN_FAMILIES}[name](rng)
            prompts.setdefault(format_prompt(instruction, inp), response)
            if len(prompts) == n_per_family:
                break
        else:
            raise ValueError(f"family {name!r}: only {len(prompts)} distinct prompts, asked {n_per_family}")
        examples.extend(Example(name, p, r) for p, r in prompts.items())
    return examples


# --- splitting, mixing, scoring ---------------------------------------------------------


def split_examples(
    examples: list[Example], seed: int, validation_fraction: float = 0.1, test_fraction: float = 0.1
) -> dict[str, list[Example]]:
    """{"train", "validation", "test"} by a seeded hash of each prompt (first of identical prompts kept).

    A prompt's split depends only on its text and the seed (hash in [0, test) -> test,
    [test, test + validation) -> validation, else train), so the same prompt can never land in
    two splits. Input order is kept within a split. A split with a positive fraction that came
    out empty gets the example of the largest split (if >= 2) whose hash is nearest to its interval.
    """
    if not (0 < validation_fraction < 1 and 0 <= test_fraction < 1 and validation_fraction + test_fraction < 1):
        raise ValueError(f"need 0 < validation_fraction, 0 <= test_fraction, sum < 1; got "
                         f"{validation_fraction}, {test_fraction}")
    first: dict[str, Example] = {}
    for e in examples:
        first.setdefault(e.prompt, e)
    unique = list(first.values())
    u = [unit_hash(e.prompt, seed) for e in unique]
    edge = test_fraction + validation_fraction
    split = ["test" if x < test_fraction else "validation" if x < edge else "train" for x in u]
    bounds = {"train": (edge, 1.0), "validation": (test_fraction, edge), "test": (0.0, test_fraction)}
    for name, (lo, hi) in bounds.items():
        donor = max(bounds, key=split.count)
        if hi > lo and name not in split and split.count(donor) >= 2:
            members = [i for i, s in enumerate(split) if s == donor]
            split[min(members, key=lambda i: (max(lo - u[i], u[i] - hi), unique[i].prompt))] = name
    return {name: [e for e, s in zip(unique, split) if s == name] for name in ("train", "validation", "test")}


def spread(examples: list[Example], n: int) -> list[Example]:
    """At most `n` examples taken from every family in turn (each family's in its order), so that a
    small test budget scores all families, not the first ones of a split grouped by family.
    With n >= len(examples), all of them, in their order."""
    if n >= len(examples):
        return list(examples)
    queues: dict[str, list[Example]] = {}
    for e in examples:
        queues.setdefault(e.family, []).append(e)
    out, depth = [], 0
    while len(out) < n:
        out += [q[depth] for q in queues.values() if depth < len(q)][: n - len(out)]
        depth += 1
    return out


def mix_by_weights(
    by_family: dict[str, list[Example]], weights: dict[str, float], total: int, seed: int
) -> list[Example]:
    """`total` examples, shuffled, with family counts proportional to `weights` (largest remainder).

    Families absent from `weights` get weight 0. A family asked for more examples than it has is
    repeated in whole shuffled passes before any example is drawn a further time.
    """
    unknown = sorted(set(weights) - set(by_family))
    if unknown:
        raise ValueError(f"weights name unknown family {unknown[0]!r} (families: {sorted(by_family)})")
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"weights must be non-negative with a positive sum, got {weights}")
    names = sorted(n for n, w in weights.items() if w > 0)
    for n in names:
        if not by_family[n]:
            raise ValueError(f"family {n!r} has weight {weights[n]} but no examples")
    exact = {n: total * weights[n] / sum(weights.values()) for n in names}
    counts = {n: int(x) for n, x in exact.items()}
    for n in sorted(names, key=lambda n: counts[n] - exact[n])[: total - sum(counts.values())]:
        counts[n] += 1
    rng, mixed = random.Random(seed), []
    for n in names:
        pool = by_family[n]
        passes, rest = divmod(counts[n], len(pool))
        for _ in range(passes):
            mixed.extend(rng.sample(pool, len(pool)))
        mixed.extend(rng.sample(pool, rest))
    rng.shuffle(mixed)
    return mixed


# --- jsonl files --------------------------------------------------------------------------


def _text(obj: dict, key: str, where: str, required: bool = True, default: str = "") -> str:
    if key not in obj:
        if required:
            raise DataError(f"{where}: missing field {key!r} (fields: {sorted(obj)})")
        return default
    if not isinstance(obj[key], str):
        raise DataError(f"{where}: field {key!r} must be a string, got {type(obj[key]).__name__}")
    if required and not obj[key].strip():
        raise DataError(f"{where}: field {key!r} is empty")
    return obj[key]


def _family(record: dict, where: str) -> str:
    key = "family" if "family" in record else "task"
    return _text(record, key, where, required=key in record, default="default")


def _alpaca(record: dict, where: str) -> Example:
    prompt = format_prompt(_text(record, "instruction", where), _text(record, "input", where, required=False))
    return Example(_family(record, where), prompt, _text(record, "output", where))


def _chat(record: dict, where: str) -> Example:
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: field 'messages' must be a non-empty list")
    for i, m in enumerate(messages):
        at = f"{where}: messages[{i}]"
        if not isinstance(m, dict):
            raise DataError(f"{at}: expected an object with 'role' and 'content'")
        role = _text(m, "role", at)
        if role not in ("system", "user", "assistant"):
            raise DataError(f"{at}: unknown role {role!r} (use system, user, assistant)")
        if "content" not in m:  # a system prompt may be empty, but must be there
            raise DataError(f"{at}: missing field 'content'")
        _text(m, "content", at, required=role != "system")
        if role == "assistant" and i != len(messages) - 1:
            raise DataError(f"{at}: only the last message may be from the assistant (single-turn data)")
    if messages[-1]["role"] != "assistant":
        raise DataError(f"{where}: the last message must be from the assistant")
    if not any(m["role"] == "user" for m in messages):
        raise DataError(f"{where}: no user message")
    instruction = "\n\n".join(m["content"] for m in messages[:-1] if m["content"])
    return Example(_family(record, where), format_prompt(instruction), messages[-1]["content"])


def load_alpaca_jsonl(path: str | os.PathLike) -> list[Example]:
    """Lines {"instruction", "input"?, "output", "family"|"task"?}; instruction and output non-empty."""
    return [_alpaca(r, where) for where, r in jsonl_records(path)]


def load_chat_jsonl(path: str | os.PathLike) -> list[Example]:
    """Lines {"messages": [{role, content}, ...]}: system/user turns, then one final assistant turn."""
    return [_chat(r, where) for where, r in jsonl_records(path)]


def load_instructions(path: str | os.PathLike) -> list[Example]:
    """Either format, decided per line: a line with "messages" is chat, any other is Alpaca."""
    return [(_chat if "messages" in r else _alpaca)(r, where) for where, r in jsonl_records(path)]


def write_examples_jsonl(path: str | os.PathLike, examples: list[Example]) -> None:
    """Alpaca lines plus "family", written atomically."""
    records = []
    for e in examples:
        instruction, inp = unformat(e.prompt)
        records.append({"instruction": instruction, "input": inp, "output": e.response, "family": e.family})
    write_records_jsonl(path, records)


def read_examples_jsonl(path: str | os.PathLike) -> list[Example]:
    """Examples written by `write_examples_jsonl` (equal to the ones written)."""
    return load_alpaca_jsonl(path)


# --- configuration -------------------------------------------------------------------------


class InstructionDataConfig(BaseModel):
    """Where the instruction data comes from, how it is split, and how families are mixed."""

    model_config = ConfigDict(extra="forbid")

    source: str = Field(
        "bundled",
        description='"bundled" (tasks generated from `seed`, offline) or a path to a .jsonl file in '
        "Alpaca or chat format.",
    )
    n_per_family: int = Field(400, ge=1, description="Distinct generated examples per family (bundled source).")
    families: list[str] | None = Field(
        None, min_length=1, description="Bundled families to generate; None means all of FAMILIES."
    )
    validation_fraction: float = Field(
        0.1, gt=0.0, lt=0.5, description="Expected fraction of distinct prompts held out for validation."
    )
    test_fraction: float = Field(
        0.1, ge=0.0, lt=0.5, description="Expected fraction of distinct prompts held out for the final test."
    )
    seed: int = Field(0, description="Seed of generation, split and mixing; same seed, same data.")
    weights: dict[str, Annotated[float, Field(ge=0.0)]] | None = Field(
        None, description="Training mix: family -> non-negative weight (absent = 0); None keeps the natural mix."
    )

    @field_validator("families")
    @classmethod
    def _known_families(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            _check_families(v)
        return v


def load_examples(cfg: InstructionDataConfig) -> list[Example]:
    """All examples of `cfg.source` (generated or loaded), before splitting."""
    if cfg.source == "bundled":
        return generate_tasks(cfg.n_per_family, cfg.seed, cfg.families)
    examples = load_instructions(Path(cfg.source).expanduser())
    if not examples:
        raise DataError(f"{cfg.source}: no examples")
    return examples
