"""Preference data: {prompt, chosen, rejected} pairs for the reward model, PPO prompts and DPO.

Two public shapes load, decided per line:
- TRL's: {"prompt", "chosen", "rejected"}; each a string, or (conversational) a list of
  {role, content} messages: the prompt's system/user turns, then one assistant turn each.
- Anthropic HH's: {"chosen", "rejected"}, two whole transcripts "\\n\\nHuman: ...\\n\\nAssistant: ..."
  that share everything up to the last "\\n\\nAssistant:"; that shared part is the prompt.

Prompts are rendered with the instruction template of the fine-tuning phase, so the policy
sees the format it was tuned on. The bundled set is derived from the instruction tasks: the
correct answer is preferred over a plausible wrong one (the right answer with one slip, or
another prompt's answer of the same family) or an unhelpful one (an answer to a different kind
of task, or a refusal).
"""

from __future__ import annotations

import os
import random
from dataclasses import asdict, dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from components.data.corpus import DataError, jsonl_records, unit_hash, write_records_jsonl
from components.data.instructions import Example, format_prompt, unformat

UNHELPFUL = ("I don't know.", "I cannot help with that.", "Sorry, I am not sure.", "Please ask something else.")
Kind = Literal["corrupt", "wrong", "off_task", "unhelpful"]


@dataclass(frozen=True)
class PreferencePair:
    prompt: str  # formatted model input, ending with "### Response:\n"
    chosen: str  # preferred response, without eos
    rejected: str  # dispreferred response, without eos
    family: str = "default"  # task family, when known
    kind: str = ""  # how the rejected answer was made (bundled data): corrupt, wrong, off_task, unhelpful


class PreferenceDataConfig(BaseModel):
    """Where preference pairs come from, how bad lines are handled, and how they are split."""

    model_config = ConfigDict(extra="forbid")
    source: str = Field(
        "bundled",
        description='"bundled" (derived from the instructions input: its train split gives train pairs, its test '
        "split test pairs) or a path to a .jsonl file in TRL or Anthropic-HH shape (split by seeded hash).",
    )
    on_bad: Literal["error", "skip"] = Field(
        "error", description="A pair with a missing or empty field, or chosen == rejected: stop with an error "
        "naming file:line, or skip it and count it in the step's metrics."
    )
    test_fraction: float = Field(0.1, gt=0, lt=0.5, description="Share of a file source's prompts held out as test pairs.")
    mix: dict[Kind, float] = Field(
        {"corrupt": 1.0, "off_task": 1.0, "unhelpful": 1.0},
        description="Bundled source: relative weights of the ways a rejected answer is made. corrupt: the right answer "
        "with a number off by 1-3 or words swapped or dropped; wrong: another same-family prompt's answer (telling it "
        "apart needs the task solved, beyond a ~1M-parameter model: off by default); off_task: the answer to a task of "
        "another family; unhelpful: a refusal.",
    )
    seed: int = Field(0, description="Seed of the bundled derivation and of the hash split.")


# --- bundled derivation -----------------------------------------------------------------------


def _corrupt(answer: str, rng: random.Random) -> str:
    """The answer with one change a careless model would make: a number off by a little, a word swapped or dropped."""
    if answer.isdigit():
        return str(max(0, int(answer) + rng.choice((-3, -2, -1, 1, 2, 3))) if answer != "0" else rng.randint(1, 3))
    words = answer.split()
    if len(words) >= 2 and rng.random() < 0.5:
        i = rng.randrange(len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
        if words != answer.split():
            return " ".join(words)
    if len(words) >= 2:
        del words[rng.randrange(len(words))]
        return " ".join(words)
    return answer + " " + answer


def derive_pairs(examples: list[Example], seed: int, mix: dict[str, float]) -> list[PreferencePair]:
    """One pair per example: its correct response against a rejected one made as `mix` weights say.

    Deterministic in (examples, seed, mix). "wrong" takes the response of another example of the
    same family, "off_task" one of another family; both differ from the correct one (falling back
    to "corrupt" when none does).
    """
    kinds = [k for k, w in mix.items() if w > 0]
    if not kinds:
        raise ValueError(f"mix needs a positive weight, got {mix}")
    by_family: dict[str, list[str]] = {}
    for e in examples:
        by_family.setdefault(e.family, []).append(e.response)
    families = sorted(by_family)
    pairs = []
    for e in examples:
        rng = random.Random(f"{seed}:{e.prompt}")
        kind = rng.choices(kinds, weights=[mix[k] for k in kinds])[0]
        rejected = ""
        if kind in ("wrong", "off_task"):
            pool = [e.family] if kind == "wrong" else [f for f in families if f != e.family]
            # Off task, a number for a number could still be right (a count answering an addition): not off task.
            others = [r for f in pool for r in by_family[f]
                      if r != e.response and (kind == "wrong" or not (r.isdigit() and e.response.isdigit()))]
            rejected = rng.choice(others) if others else ""
            kind = kind if rejected else "corrupt"
        if kind == "corrupt":
            rejected = _corrupt(e.response, rng)
        if kind == "unhelpful" or rejected == e.response:
            kind, rejected = "unhelpful", rng.choice(UNHELPFUL)
        pairs.append(PreferencePair(e.prompt, e.response, rejected, e.family, kind))
    return pairs


# --- loading and validation -------------------------------------------------------------------

_HUMAN, _ASSISTANT = "\n\nHuman:", "\n\nAssistant:"


def _field(record: dict, key: str, where: str):
    if key not in record:
        raise DataError(f"{where}: missing field {key!r} (fields: {sorted(record)})")
    return record[key]


def _text(value, where: str, key: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{where}: field {key!r} must be a string or a list of messages, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{where}: field {key!r} is empty")
    return value


def _messages_prompt(messages, where: str) -> str:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: field 'prompt' must be a string or a non-empty list of messages")
    parts = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("system", "user") or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: prompt[{i}] must be a system or user message with string content")
        if m["content"]:
            parts.append(m["content"])
    if not parts:
        raise DataError(f"{where}: field 'prompt' is empty")
    return format_prompt("\n\n".join(parts))


def _response(value, where: str, key: str) -> str:
    if isinstance(value, list):  # conversational: one assistant message
        if len(value) != 1 or not isinstance(value[0], dict) or value[0].get("role") != "assistant":
            raise DataError(f"{where}: field {key!r} must be one assistant message")
        value = value[0].get("content")
    return _text(value, where, key)


def _prompt(value, where: str) -> str:
    if isinstance(value, list):
        return _messages_prompt(value, where)
    text = _text(value, where, "prompt")
    try:
        unformat(text)  # already in the instruction template
        return text
    except ValueError:
        return format_prompt(text.strip())


def _hh(record: dict, where: str) -> PreferencePair:
    chosen, rejected = (_text(_field(record, k, where), where, k) for k in ("chosen", "rejected"))
    cut = chosen.rfind(_ASSISTANT)
    if cut < 0:
        raise DataError(f"{where}: field 'chosen' has no '\\n\\nAssistant:' turn (Anthropic HH shape)")
    prefix = chosen[: cut + len(_ASSISTANT)]
    if not rejected.startswith(prefix):
        raise DataError(f"{where}: 'chosen' and 'rejected' differ before their last Assistant turn")
    dialogue = chosen[:cut]
    single_turn = dialogue.count(_HUMAN) == 1 and _ASSISTANT not in dialogue and dialogue.startswith(_HUMAN)
    instruction = dialogue[len(_HUMAN):].strip() if single_turn else dialogue.strip()
    if not instruction:
        raise DataError(f"{where}: the prompt (before the last Assistant turn) is empty")
    chosen_text, rejected_text = chosen[len(prefix):].strip(), rejected[len(prefix):].strip()
    for key, text in (("chosen", chosen_text), ("rejected", rejected_text)):
        if not text:
            raise DataError(f"{where}: field {key!r} has an empty last Assistant turn")
    return PreferencePair(format_prompt(instruction), chosen_text, rejected_text)


def _trl(record: dict, where: str) -> PreferencePair:
    prompt = _prompt(_field(record, "prompt", where), where)
    chosen = _response(_field(record, "chosen", where), where, "chosen").strip()
    rejected = _response(_field(record, "rejected", where), where, "rejected").strip()
    family = record.get("family", "default")
    return PreferencePair(prompt, chosen, rejected, family if isinstance(family, str) else "default", str(record.get("kind", "")))


def load_preferences(path: str | os.PathLike, on_bad: str = "error") -> tuple[list[PreferencePair], dict[str, int]]:
    """(pairs, skipped counts by reason) from a JSONL file in TRL or HH shape.

    on_bad="error" raises DataError naming `file:line`; "skip" drops the line and counts it
    under "missing_or_empty" or "identical" (chosen == rejected after stripping).
    """
    pairs, skipped = [], {"missing_or_empty": 0, "identical": 0}
    for where, record in jsonl_records(path):
        try:
            if not isinstance(record, dict):
                raise DataError(f"{where}: expected a JSON object")
            pair = _trl(record, where) if "prompt" in record else _hh(record, where)
        except DataError:
            if on_bad == "error":
                raise
            skipped["missing_or_empty"] += 1
            continue
        if pair.chosen == pair.rejected:
            if on_bad == "error":
                raise DataError(f"{where}: 'chosen' and 'rejected' are identical; a pair must prefer one answer")
            skipped["identical"] += 1
            continue
        pairs.append(pair)
    if not pairs:
        raise DataError(f"{path}: no usable preference pairs")
    return pairs, skipped


def split_pairs(pairs: list[PreferencePair], test_fraction: float, seed: int) -> dict[str, list[PreferencePair]]:
    """{"train", "test"} by a seeded hash of each prompt: one prompt never lands in both."""
    test = [p for p in pairs if unit_hash(p.prompt, seed) < test_fraction]
    train = [p for p in pairs if unit_hash(p.prompt, seed) >= test_fraction]
    if not test or not train:
        raise DataError(f"{len(pairs)} pairs split into {len(train)} train / {len(test)} test; give more pairs")
    return {"train": train, "test": test}


def write_pairs_jsonl(path: str | os.PathLike, pairs: list[PreferencePair]) -> None:
    """TRL-shaped lines plus "family" and "kind", written atomically."""
    write_records_jsonl(path, [asdict(p) for p in pairs])


def read_pairs_jsonl(path: str | os.PathLike) -> list[PreferencePair]:
    """Pairs written by `write_pairs_jsonl` (equal to the ones written)."""
    return load_preferences(path)[0]
