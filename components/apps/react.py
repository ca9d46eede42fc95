"""ReAct against the served model: its completions API writes the turns; the tools are the RAG route's
retrieval (`search`) and the sandboxed PAL calculator (`calculate`).

    transcript = run(client, rag_url, ReactConfig(model="tiny"), "Add 3 and 4.", api_key=KEY)
    transcript.answer, transcript.stopped, [s.observation for s in transcript.steps]
"""

from __future__ import annotations

from collections.abc import Callable

import httpx

from components.apps.config import ReactConfig, SandboxLimits
from components.core import react
from components.core.sandbox import run_program


def calculate_tool(limits: SandboxLimits) -> Callable[[str], str]:
    """`calculate[expression]`: the expression (or a short program) run in the sandbox; its result, or why it failed."""

    def calculate(expression: str) -> str:
        source = expression if "answer" in expression or "\n" in expression else f"answer = {expression}"
        result = run_program(source, **limits.model_dump())
        return result.result if result.ok else f"Error: {result.error}"

    return calculate


def search_tool(rag_url: str, k: int, passage_chars: int, api_key: str | None = None) -> Callable[[str], str]:
    """`search[query]`: the top-k passages from the RAG route's `/search`, each as "(source) text"."""

    def search(query: str) -> str:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        r = httpx.post(f"{rag_url}/search", json={"question": query, "k": k}, headers=headers, timeout=60)
        r.raise_for_status()
        return " | ".join(f"({h['source']}) {' '.join(h['text'].split())[:passage_chars]}" for h in r.json()["hits"])

    return search


def run(client, rag_url: str | None, cfg: ReactConfig, question: str, api_key: str | None = None,
        header: str = react.HEADER) -> react.Transcript:
    """The ReAct loop for `question` on the served `cfg.model` (greedy; each turn stops before "Observation:").

    client: an `openai.OpenAI` for the endpoint; rag_url: the RAG route (None: no search tool).
    """

    import openai

    def generate(prompt: str) -> str:
        try:
            out = client.completions.create(model=cfg.model, prompt=prompt, max_tokens=cfg.max_tokens, temperature=0,
                                            stop=[react.STOP])
        except openai.BadRequestError as e:
            if getattr(e, "code", None) == "context_length_exceeded":
                raise react.ContextFull(str(e)) from None
            raise
        return out.choices[0].text

    tools = {"calculate": calculate_tool(cfg.sandbox)}
    if rag_url:
        tools["search"] = search_tool(rag_url, cfg.search_k, cfg.passage_chars, api_key)
    return react.run_react(question, generate, tools, cfg.max_steps, header)
