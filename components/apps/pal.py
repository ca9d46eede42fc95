"""Program-aided answers on the served model, measured against direct answers.

    direct: "### Instruction:\nAdd 12 and 30.\n\n### Response:\n"                        -> "42"
    PAL:    "### Instruction:\nWrite a Python program that sets answer: Add 12 and 30.\n\n### Response:\n"
                                                                                        -> "answer = 12 + 30" -> sandbox -> "42"

Both prompts use the bundled instruction format (`format_prompt`) that the workflow's tuned
models know. `teaching_pairs` derives (prompt, completion) demonstrations of the direct, PAL
and ReAct formats from the bundled `add` family, for a fine-tuning run (or a `.jsonl` for the
finetune phase) that gives a model the formats.
"""

from __future__ import annotations

from dataclasses import dataclass

from components.apps.config import SandboxLimits
from components.core import react
from components.core.metrics import exact_match, exact_match_rate
from components.core.pal import add_program, extract_program, normalize_answer
from components.core.sandbox import RunResult, run_program
from components.data.instructions import Example, format_prompt, unformat

PAL_INSTRUCTION = "Write a Python program that sets answer: {question}"


def instruction_of(example: Example) -> str:
    """The bare question of a bundled example ("Add 12 and 30.")."""
    instruction, inp = unformat(example.prompt)
    if inp:
        raise ValueError(f"not a plain instruction prompt (it has an input section): {example.prompt[:60]!r}")
    return instruction


def pal_prompt(question: str) -> str:
    return format_prompt(PAL_INSTRUCTION.format(question=question))


def run_pal(completion: str, limits: SandboxLimits | None = None) -> RunResult:
    """Run the program in a PAL completion in the sandbox."""
    limits = limits or SandboxLimits()
    return run_program(extract_program(completion), **limits.model_dump())


def teaching_pairs(examples: list[Example]) -> list[tuple[str, str]]:
    """(prompt, completion) demonstrations for `add` examples: direct, PAL, and both ReAct turns of each."""
    pairs = []
    for e in examples:
        question = instruction_of(e)
        program = add_program(question)
        expression = program.removeprefix("answer = ")
        p1, c1, p2, c2 = react.demonstration(question, expression, e.response)
        pairs += [(e.prompt, e.response), (pal_prompt(question), program), (p1, c1), (p2, c2)]
    return pairs


@dataclass(frozen=True)
class PalScore:
    """Exact match of direct and program-aided answers on the same questions (0..1), and why programs failed."""

    n: int
    direct_exact_match: float
    pal_exact_match: float
    programs_refused: int  # rejected by the sandbox's checks before running
    programs_failed: int  # ran and raised, or hit a limit


def measure_pal_vs_direct(client, model: str, examples: list[Example], max_tokens: int = 24,
                          limits: SandboxLimits | None = None) -> PalScore:
    """Ask the served `model` (through an `openai.OpenAI` client) each question both ways, greedily.

    One batched completions request per way (the endpoint takes up to 16 prompts a request).
    """
    questions = [instruction_of(e) for e in examples]

    def complete(prompts: list[str]) -> list[str]:
        texts = []
        for i in range(0, len(prompts), 16):
            out = client.completions.create(model=model, prompt=prompts[i:i + 16], max_tokens=max_tokens, temperature=0)
            texts += [c.text for c in sorted(out.choices, key=lambda c: c.index)]
        return texts

    direct = complete([e.prompt for e in examples])
    runs = [run_pal(text, limits) for text in complete([pal_prompt(q) for q in questions])]
    references = [e.response for e in examples]
    return PalScore(
        n=len(examples),
        direct_exact_match=exact_match_rate(direct, references),
        pal_exact_match=sum(run.ok and exact_match(normalize_answer(run.result), r) for run, r in zip(runs, references)) / len(examples),
        programs_refused=sum(run.refused for run in runs),
        programs_failed=sum(not run.ok and not run.refused for run in runs),
    )
