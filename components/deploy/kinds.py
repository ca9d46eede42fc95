"""What a saved model serves, read from its config.json: the kind decides the loader and the routes.

    causal                   AutoModelForCausalLM           /v1/completions, /v1/chat/completions
    seq2seq                  AutoModelForSeq2SeqLM          the same two routes (text in, text out)
    sequence-classification  AutoModelForSequenceClassification  /v1/classify: a label per input
    token-classification     AutoModelForTokenClassification     /v1/classify: a label per word

A masked LM without a task head (a pretrained BERT) has no route: it is fine-tuned into a
classifier first. No Ray here: the server, the deploy step and the tests share these.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

Kind = Literal["causal", "seq2seq", "sequence-classification", "token-classification"]

GENERATE = ("/v1/completions", "/v1/chat/completions")
ROUTES: dict[str, tuple[str, ...]] = {
    "causal": GENERATE, "seq2seq": GENERATE,
    "sequence-classification": ("/v1/classify",), "token-classification": ("/v1/classify",),
}
CLASSIFIERS = ("sequence-classification", "token-classification")


def kind_of(config) -> Kind:
    """The kind of a transformers config (or a model): from its `architectures` and `is_encoder_decoder`.

    Raises ValueError for a model no route serves (a bare masked LM, an encoder without a head).
    """
    from components.core.models import family_of

    config = getattr(config, "config", config)
    architecture = (getattr(config, "architectures", None) or [""])[0]
    if architecture.endswith("ForSequenceClassification"):
        return "sequence-classification"
    if architecture.endswith("ForTokenClassification"):
        return "token-classification"
    family = family_of(config)
    if family == "masked":
        raise ValueError(f"a masked model ({architecture or config.model_type}) has no serving route: fine-tune it into a "
                         "sequence or token classifier first (the classify phase), then deploy that")
    return family  # "causal" or "seq2seq"


def kind_at(path: str | Path) -> Kind:
    """The kind of the saved model in folder `path` (its config.json; no weights are read)."""
    from transformers import AutoConfig

    return kind_of(AutoConfig.from_pretrained(path))


def auto_class(kind: Kind):
    """The transformers Auto class that loads a model of `kind` (safetensors, with its head)."""
    import transformers

    return getattr(transformers, {
        "causal": "AutoModelForCausalLM", "seq2seq": "AutoModelForSeq2SeqLM",
        "sequence-classification": "AutoModelForSequenceClassification",
        "token-classification": "AutoModelForTokenClassification",
    }[kind])


def labels(model) -> list[str]:
    """A classifier's label names in id order (config.id2label; LABEL_i when it names none)."""
    id2label = {int(k): v for k, v in (model.config.id2label or {}).items()}
    return [id2label.get(i, f"LABEL_{i}") for i in range(model.config.num_labels)]
