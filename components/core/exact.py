"""Exact match, the task families' measure of an answer: pure Python, so the spec validator and the
reward verifiers (components/core/verifiers.py) import it without torch; components/core/metrics.py
re-exports it beside the other metrics."""

from __future__ import annotations


def normalise(text: str) -> str:
    """`text` without surrounding whitespace and trailing .,;:!?"""
    return text.strip().rstrip(".,;:!?").rstrip()


def exact_match(prediction: str, reference: str) -> bool:
    """Equality after stripping whitespace and trailing .,;:!? from both.

    Trailing punctuation and surrounding whitespace are formatting a model may add or drop
    ("19." for "19"), but case stays significant: the tasks copy names and words exactly
    ("Rome", "The cat is red."), so a case error is a wrong answer.
    """
    return normalise(prediction) == normalise(reference)
