"""Verifiable rewards: a checker per bundled instruction family, and user reward functions.

Reward terms are composed by weight (`combine`); a term gives one float per completion:

- ``correct``: 1.0 when the completion is the right answer for its family, else 0.0: exact
  (after the same whitespace and trailing-punctuation normalisation as exact match) for the
  word families; for the numeric families (add, count) a bare number within `tolerance` of
  the answer.
- ``format``: 1.0 when the completion has the answer's shape for its family (a bare integer,
  as many words as the answer, one sentence, one line), right or wrong.
- a user's own function, named ``module:function`` in the spec, called as
  ``fn(prompts=[...], completions=[...], references=[...], families=[...]) -> list[float]``
  (TRL's reward-function convention, plus the reference answer and the family).

Pure Python (no torch, ray or mlflow): the phase's driver calls these on decoded text.
"""

from __future__ import annotations

import importlib
import inspect
import math
import re
from collections.abc import Callable, Sequence

from components.core.exact import exact_match
from components.core.exact import normalise as _norm

NUMERIC_FAMILIES = ("add", "count")
BUILTIN_TERMS = ("correct", "format")
REWARD_ARGUMENTS = ("prompts", "completions", "references", "families")
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


def parse_number(text: str) -> float | None:
    """The number a completion is, when it is a bare number ("19", "19.", " -3.5 "), else None."""
    text = _norm(text)
    return float(text) if _NUMBER.fullmatch(text) else None


def numeric_answer(completion: str, reference: str, tolerance: float = 0.0) -> bool:
    """A bare number within `tolerance` (absolute) of the reference number."""
    got, want = parse_number(completion), parse_number(reference)
    return got is not None and want is not None and abs(got - want) <= tolerance


def exact_answer(completion: str, reference: str, tolerance: float = 0.0) -> bool:
    """Exact match after normalisation (tolerance unused: the word families have one right answer)."""
    return exact_match(completion, reference)


def _same_word_count(completion: str, reference: str) -> bool:
    return len(_norm(completion).split()) == len(_norm(reference).split()) and "\n" not in completion.strip()


def _bare_number(completion: str, reference: str) -> bool:
    return parse_number(completion) is not None


def _one_line(completion: str, reference: str) -> bool:
    return bool(completion.strip()) and "\n" not in completion.strip()


def _one_sentence(completion: str, reference: str) -> bool:
    text = completion.strip()
    return _one_line(text, reference) and text.endswith(".") and text.count(".") == 1 and text[:1].isupper()


# family -> (is it the right answer, has it the answer's shape); "default" covers loaded data without a family.
VERIFIERS: dict[str, tuple[Callable[[str, str, float], bool], Callable[[str, str], bool]]] = {
    "add": (numeric_answer, _bare_number),
    "count": (numeric_answer, _bare_number),
    "reverse": (exact_answer, _same_word_count),
    "sort": (exact_answer, _same_word_count),
    "translate": (exact_answer, _same_word_count),
    "copy_field": (exact_answer, _one_line),
    "first_sentence": (exact_answer, _one_sentence),
    "summarize": (exact_answer, _one_sentence),
    "default": (exact_answer, _one_line),
}


def verify(term: str, family: str, completion: str, reference: str, tolerance: float = 0.0) -> float:
    """One built-in term ("correct" or "format") for one completion: 1.0 or 0.0."""
    right, shape = VERIFIERS.get(family, VERIFIERS["default"])
    if term == "correct":
        return float(right(completion, reference, tolerance))
    if term == "format":
        return float(shape(completion, reference))
    raise ValueError(f"unknown verifier term {term!r} (known: {BUILTIN_TERMS})")


def verifier_rewards(term: str, families: Sequence[str], completions: Sequence[str], references: Sequence[str],
                     tolerance: float = 0.0) -> list[float]:
    """`verify` over a batch: one reward per completion."""
    return [verify(term, f, c, r, tolerance) for f, c, r in zip(families, completions, references, strict=True)]


# --- user reward functions ---------------------------------------------------------------


def load_reward_function(ref: str) -> Callable[..., Sequence[float]]:
    """Import `module:function` and check it can be called with the reward arguments by keyword.

    Raises ValueError saying what is wrong (no colon, module not importable, no such attribute,
    not callable, a signature that cannot take prompts, completions, references, families).
    """
    module, sep, name = ref.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"reward function {ref!r}: expected 'module:function'")
    try:
        fn = getattr(importlib.import_module(module), name)
    except ImportError as e:
        raise ValueError(f"reward function {ref!r}: cannot import module {module!r} ({e})") from e
    except AttributeError as e:
        raise ValueError(f"reward function {ref!r}: module {module!r} has no attribute {name!r}") from e
    if not callable(fn):
        raise ValueError(f"reward function {ref!r}: {type(fn).__name__} is not callable")
    try:
        inspect.signature(fn).bind(**{a: [] for a in REWARD_ARGUMENTS})
    except TypeError as e:
        raise ValueError(f"reward function {ref!r}: must accept keyword arguments {', '.join(REWARD_ARGUMENTS)} "
                         f"(or **kwargs); its signature is {inspect.signature(fn)}: {e}") from e
    except ValueError:  # a builtin without a signature: left to the call
        pass
    return fn


def call_reward_function(fn: Callable[..., Sequence[float]], prompts: Sequence[str], completions: Sequence[str],
                         references: Sequence[str], families: Sequence[str]) -> tuple[list[float], list[tuple[int, str]]]:
    """(rewards, problems): one float per completion (NaN where it failed) and (index, reason) per failure.

    A call that raises or returns the wrong number of values is retried one completion at a
    time, so each failure is pinned to the prompt that caused it; NaN or infinite values and
    ones that are not numbers are failures of their own index.
    """
    n = len(completions)

    def one_call(rows: list[int]):
        values = fn(prompts=[prompts[i] for i in rows], completions=[completions[i] for i in rows],
                    references=[references[i] for i in rows], families=[families[i] for i in rows])
        values = list(values)
        if len(values) != len(rows):
            raise ValueError(f"returned {len(values)} values for {len(rows)} completions")
        return values

    try:
        values = one_call(list(range(n)))
    except Exception:  # noqa: BLE001 -- any error of user code is pinned to a prompt below
        values = []
        for i in range(n):
            try:
                values.append(one_call([i])[0])
            except Exception as e:  # noqa: BLE001
                values.append(e)
    rewards, problems = [], []
    for i, v in enumerate(values):
        if isinstance(v, Exception):
            problems.append((i, f"{type(v).__name__}: {v}"))
            rewards.append(math.nan)
            continue
        try:
            x = float(v)
        except (TypeError, ValueError):
            problems.append((i, f"returned {v!r}, not a number"))
            rewards.append(math.nan)
            continue
        if not math.isfinite(x):
            problems.append((i, f"returned {x}"))
        rewards.append(x)
    return rewards, problems


def combine(terms: dict[str, Sequence[float]], weights: dict[str, float]) -> list[float]:
    """Sum over terms of weight x value, per completion (NaN in any term stays NaN)."""
    names = list(weights)
    if not names:
        raise ValueError("no reward terms")
    n = len(terms[names[0]])
    return [sum(weights[name] * float(terms[name][i]) for name in names) for i in range(n)]
