"""Program-aided answers (PAL): pull a program out of a model's completion, and write one for a known task.

The model writes a short Python program whose variable `answer` (or function `solution()`)
holds the result; `components.core.sandbox.run_program` runs it. The arithmetic is done by
the interpreter, so the model only has to translate the question, not compute.
"""

from __future__ import annotations

import re

_FENCE = re.compile(r"```(?:python|py)?\s*\n?(.*?)(?:```|$)", re.DOTALL)
_ADD = re.compile(r"^Add (-?\d+) and (-?\d+)\.?$")


def extract_program(completion: str) -> str:
    """The program in a completion: the first fenced block if there is one, else the whole text, stripped."""
    fenced = _FENCE.search(completion)
    return (fenced.group(1) if fenced else completion).strip()


def add_program(instruction: str) -> str:
    """The program answering a bundled `add` task ("Add 12 and 30." -> "answer = 12 + 30"); ValueError otherwise.

    Used to derive question -> program demonstrations from the bundled task family, for teaching
    a model the PAL format.
    """
    match = _ADD.match(instruction.strip())
    if not match:
        raise ValueError(f"not an add task: {instruction!r}")
    return f"answer = {match.group(1)} + {match.group(2)}"


def normalize_answer(value: str) -> str:
    """A result as the bundled tasks write answers: "42.0" -> "42", surrounding space removed."""
    value = value.strip()
    try:
        number = float(value)
    except ValueError:
        return value
    return str(int(number)) if number.is_integer() and abs(number) < 1e15 else value
