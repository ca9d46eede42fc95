"""Alpaca prompts through a model's own chat template, and the token ids a model stops on.

The lifecycle's data are Alpaca prompts (components/data/instructions.py, `format_prompt`). The
project's own tokenizers carry `CHAT_TEMPLATE`, which renders a message exactly like that prompt,
so for them (and for a tokenizer with no template at all) the prompt is used as it is. A pretrained
checkpoint from outside (Qwen2.5-Instruct, Llama-3-Instruct, Gemma-it) was tuned on its own
template and special tokens: there the prompt becomes one user message rendered by that template
with its generation prompt, so training, scoring and serving all show the model what it knows.
"""

from __future__ import annotations

from components.data.instructions import CHAT_TEMPLATE, unformat


def chat_template_of(tokenizer) -> str | None:
    """The tokenizer's default chat template (text), or None when it has none."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates: apply_chat_template uses "default"
        template = template.get("default")
    return template or None


def uses_model_template(tokenizer) -> bool:
    """True when prompts are rendered through the tokenizer's own chat template: it has one, and it is
    not the project's CHAT_TEMPLATE (which renders like the Alpaca prompt already)."""
    template = chat_template_of(tokenizer)
    return template is not None and template != CHAT_TEMPLATE


def prompt_format(tokenizer) -> str:
    """How a causal model's prompts are shown to it: "chat template" (the model's own), "alpaca" (the
    project's CHAT_TEMPLATE, which renders the Alpaca prompt) or "alpaca, no chat template"."""
    if uses_model_template(tokenizer):
        return "chat template"
    return "alpaca" if chat_template_of(tokenizer) else "alpaca, no chat template"


def prompt_messages(prompt: str) -> list[dict[str, str]]:
    """One user message for an Alpaca prompt: the instruction, then a blank line and the input when
    there is one. A prompt not in the Alpaca format is the message as it is."""
    try:
        instruction, inp = unformat(prompt)
    except ValueError:
        return [{"role": "user", "content": prompt}]
    return [{"role": "user", "content": instruction + ("\n\n" + inp if inp else "")}]


def render_prompt(tokenizer, prompt: str) -> str:
    """The text the model reads before its answer: `prompt` itself for the project's tokenizers and
    tokenizers without a template (byte-identical to before), else the prompt's user message rendered
    by the model's template with its generation prompt (e.g. "...<|im_start|>assistant\\n").

    A rendered template may begin with the BOS text ("<|begin_of_text|>", "<bos>"): tokenize the
    result with add_special_tokens=False (as `prompt_ids` does) so that BOS appears exactly once.
    """
    if not uses_model_template(tokenizer):
        return prompt
    return tokenizer.apply_chat_template(prompt_messages(prompt), tokenize=False, add_generation_prompt=True)


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """Token ids of the rendered prompt (`render_prompt`), no special tokens added by the tokenizer."""
    return tokenizer(render_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"]


def answer_end_id(tokenizer) -> int:
    """The token that ends an assistant's answer: the tokenizer's eos, or, under the model's own
    template, the special token the template writes right after an assistant's content when that
    is not the eos (Gemma's <end_of_turn>, Llama-3's <|eot_id|> where eos is <|end_of_text|>):
    fine-tuning then teaches the turn end the model was tuned to, and generation stops on it."""
    if not uses_model_template(tokenizer):
        return tokenizer.eos_token_id
    marker = "\x00answer\x00"  # a text no template adds or changes
    try:
        text = tokenizer.apply_chat_template([*prompt_messages("q"), {"role": "assistant", "content": marker}], tokenize=False)
    except Exception:  # a template that cannot render an assistant turn (generation-only templates)
        return tokenizer.eos_token_id
    after = text.partition(marker)[2]
    ids = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
    special = set(tokenizer.all_special_ids) | set(getattr(tokenizer, "added_tokens_decoder", {}))
    return ids[0] if ids and ids[0] in special else tokenizer.eos_token_id


def stop_token_ids(model, tokenizer) -> list[int]:
    """The ids that end an answer, tokenizer's eos first: {tokenizer.eos_token_id} and the model's
    generation_config.eos_token_id (an int or a list; Llama-3-Instruct stops on <|eot_id|> as well as
    <|end_of_text|>). The project's models give [eos]: their generation config's eos is the tokenizer's."""
    ids = [tokenizer.eos_token_id]
    end = answer_end_id(tokenizer)
    if end not in ids:
        ids.append(end)
    config = getattr(model, "generation_config", None)
    extra = getattr(config, "eos_token_id", None) if config is not None else None
    for i in [extra] if isinstance(extra, int) else list(extra or []):
        if i not in ids:
            ids.append(int(i))
    return [i for i in ids if i is not None]


def cut_at_first(ids: list[int], stops: list[int]) -> tuple[list[int], bool]:
    """(ids before the first stop id, whether one was found)."""
    hits = [k for k, t in enumerate(ids) if t in stops]
    return (ids[: hits[0]], True) if hits else (ids, False)
