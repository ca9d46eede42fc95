"""ReAct: a reasoning-and-acting loop. The model writes a thought and an action, a tool answers with an
observation, and again, until the model writes a final answer or the step limit is reached.

The transcript format (one step; the model writes the Thought/Action lines and stops before
"Observation:", which the loop fills in):

    Question: Add 3 and 4.
    Thought: I should calculate it.
    Action: calculate[3 + 4]
    Observation: 7
    Thought: I know the answer.
    Final Answer: 7

Pure: `generate` (prompt -> completion text) and the tools (input -> observation text) are
plain functions, so the same loop runs against any endpoint.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

HEADER = "Answer the question. Tools: search[query] finds passages, calculate[expression] runs Python arithmetic.\n"
STOP = "\nObservation:"
_ACTION = re.compile(r"^\s*Action:\s*([A-Za-z_][\w-]*)\s*\[(.*)\]\s*$", re.MULTILINE)
_FINAL = re.compile(r"^\s*Final Answer:\s*(.*)$", re.MULTILINE)
_THOUGHT = re.compile(r"^\s*Thought:\s*(.*)$", re.MULTILINE)


class ContextFull(Exception):
    """Raised by `generate` when the transcript no longer fits the model's context: the loop stops there."""


@dataclass
class Step:
    """One turn. action/action_input are empty when the model answered or wrote nothing parsable."""

    thought: str
    action: str = ""
    action_input: str = ""
    observation: str = ""
    final_answer: str | None = None
    raw: str = ""  # the model's text for this turn, as generated


@dataclass
class Transcript:
    question: str
    steps: list[Step] = field(default_factory=list)
    answer: str | None = None  # None when the step limit came first
    stopped: str = ""  # "answer", "step_limit" or "context_full"

    def to_dict(self) -> dict:
        return asdict(self)

    def text(self) -> str:
        """The transcript as the model saw it, plus the last turn."""
        return render(self.question, self.steps, header="")


def parse_step(text: str) -> Step:
    """The thought and either the action (tool[input]) or the final answer in one model turn.

    A final answer wins over an action written after it; text with neither is a step with
    only a thought (the loop tells the model its format was wrong).
    """
    text = text.split(STOP)[0]
    thought = _THOUGHT.search(text)
    final, action = _FINAL.search(text), _ACTION.search(text)
    step = Step(thought=(thought.group(1) if thought else "").strip(), raw=text)
    if final and (not action or final.start() < action.start()):
        step.final_answer = final.group(1).strip()
    elif action:
        step.action, step.action_input = action.group(1), action.group(2).strip()
    return step


def render(question: str, steps: list[Step], header: str = HEADER) -> str:
    """The prompt for the next turn: header, question, and every earlier turn with its observation."""
    lines = [f"{header}Question: {question}"]
    for s in steps:
        lines.append(f"Thought: {s.thought}")
        if s.action:
            lines.append(f"Action: {s.action}[{s.action_input}]")
        lines.append(f"Observation: {s.observation}")
    return "\n".join(lines) + "\n"


def run_react(question: str, generate: Callable[[str], str], tools: dict[str, Callable[[str], str]],
              max_steps: int = 4, header: str = HEADER) -> Transcript:
    """Run the loop for at most `max_steps` model turns; returns the whole transcript.

    A tool that raises, an unknown tool and an unparsable turn all become observations the
    model sees in its next turn, never an exception out of the loop.
    """
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    transcript = Transcript(question)
    for _ in range(max_steps):
        try:
            step = parse_step(generate(render(question, transcript.steps, header)))
        except ContextFull:
            transcript.stopped = "context_full"
            return transcript
        transcript.steps.append(step)
        if step.final_answer is not None:
            transcript.answer, transcript.stopped = step.final_answer, "answer"
            return transcript
        if not step.action:
            step.observation = "Invalid format: write 'Action: tool[input]' or 'Final Answer: ...'."
        elif step.action not in tools:
            step.observation = f"Unknown tool {step.action!r}; tools: {', '.join(sorted(tools))}."
        else:
            try:
                step.observation = str(tools[step.action](step.action_input))
            except Exception as e:  # a tool's failure is information for the model, not the end of the loop
                step.observation = f"Error: {e}"
    transcript.stopped = "step_limit"
    return transcript


def demonstration(question: str, expression: str, answer: str) -> tuple[str, str, str, str]:
    """Two (prompt, completion) turns of a worked calculate example, for teaching a model the format:
    (first prompt, first completion, second prompt, second completion)."""
    first = Step("I should calculate it.", "calculate", expression, observation=answer)
    prompt1 = render(question, [])
    completion1 = f"Thought: {first.thought}\nAction: calculate[{expression}]\n"
    prompt2 = render(question, [first])
    completion2 = f"Thought: I know the answer.\nFinal Answer: {answer}\n"
    return prompt1, completion1, prompt2, completion2
