"""Each causal architecture a user may bring goes base -> LoRA fine-tune -> evaluate on the real engine.

One workflow, one branch per architecture (each with a ChatML template), on the session's Ray with one worker per training step so two branches train at once.
Llama goes through the whole main path in tests/e2e/test_base_spec.py.
"""

import json

import mlflow
import pytest
import torch
import yaml
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as LORA_DEFAULTS
from transformers import AutoModelForCausalLM, AutoTokenizer

from components import tracking
from components.core.models import context_length
from components.core.sft import encode_split, pad_batch
from components.data.instructions import read_examples_jsonl
from tests.checkpoints import save_pretrained_checkpoint
from workflows import engine
from workflows.spec import load_spec

ARCHS = ["qwen2", "mistral", "gemma", "gpt_neox", "phi", "gpt2"]


@pytest.fixture(scope="module")
def branches(ray_address, tmp_path_factory):
    root = tmp_path_factory.mktemp("bases")
    steps = {"corpus": {"uses": "data", "with": {"max_documents": 200}},
             "instructions": {"uses": "instructions", "with": {"n_per_family": 30}}}
    for arch in ARCHS:
        # As instruct checkpoints come: a chat template of their own, pretrained on the tasks in another format
        # (the project's), so the tuning has the template to teach. A base without a template keeps the project's
        # format (tests/unit/test_chat_template.py; the tiny run).
        folder = save_pretrained_checkpoint(root / arch, arch, chat=True, steps=150)
        steps[f"base-{arch}"] = {"uses": "base", "with": {"source": str(folder)}}
        steps[f"ft-{arch}"] = {"uses": "finetune", "needs": [f"base-{arch}", "instructions", "corpus"],
                               "with": {"max_steps": 40, "warmup_steps": 4, "log_every": 10, "eval_every": 10,
                                        "checkpoint_every": 40, "test_examples": 14, "eval_tokens": 500}}
        steps[f"ev-{arch}"] = {"uses": "evaluate", "needs": [f"ft-{arch}", "instructions", "corpus"],
                               "with": {"test_examples": 14, "eval_tokens": 500, "benchmarks": ["boolq"], "benchmark_limit": 10}}
    spec = root / "bases.yaml"
    spec.write_text(yaml.safe_dump({"name": "bases", "scale": {"workers": 1, "cpus_per_worker": 0.9}, "steps": steps}))
    workdir = root / "wd"
    _, outcomes = engine.run(load_spec(spec, workdir=workdir), workdir, ray_address)
    assert all(o.state == "done" for o in outcomes), [(o.step, o.error) for o in outcomes if o.state != "done"]
    return workdir


@pytest.mark.parametrize("arch", ARCHS)
def test_a_base_of_each_architecture_is_lora_tuned_and_evaluated(branches, arch):
    uri = tracking.tracking_uri_for(branches)
    client = mlflow.MlflowClient(uri)

    def run(step):
        (found,) = client.search_runs([tracking.experiment_id(uri)], f"tags.`lifecycle.step` = '{step}'")
        return found

    finetune = run(f"ft-{arch}")
    val = [m.value for m in client.get_metric_history(finetune.info.run_id, "val_loss")]
    # The held-out answers' loss falls well below the base model's own, computed here the same way.
    base_dir = tracking.step_artifact(uri, run(f"base-{arch}").info.run_id).path
    before = _answer_loss(base_dir, tracking.step_artifact(uri, run("instructions").info.run_id).path / "validation.jsonl")
    assert val[-1] < 0.9 * before, (before, val)
    # The adapter sits on peft's own targets for the architecture, and the prompts took the model's template if any.
    adapter = json.loads((tracking.step_artifact(uri, finetune.info.run_id).path / "adapter" / "adapter_config.json").read_text())
    assert sorted(adapter["target_modules"]) == sorted(LORA_DEFAULTS[arch])
    assert finetune.data.tags["lifecycle.prompt_format"] == "chat template"
    scores = run(f"ev-{arch}").data.metrics
    assert 0 <= scores["exact_match"] <= 1 and scores["response_nll"] > 0 and scores["perplexity"] > 1
    print(f"{arch}: held-out answer loss {before:.2f} (base) -> {val[-1]:.2f}, exact match {scores['exact_match']:.0%}, "
          f"response NLL {scores['response_nll']:.2f}")


@torch.no_grad()
def _answer_loss(model_dir, split) -> float:
    """Mean loss on the answers of a split's examples, encoded as fine-tuning encodes them (the loop's validation_loss)."""
    model, tokenizer = AutoModelForCausalLM.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir)
    pairs = encode_split(split, read_examples_jsonl(split), tokenizer, context_length(model))
    total = sum(model(**pad_batch(pairs[i : i + 16], tokenizer.pad_token_id)).loss.item() * len(pairs[i : i + 16])
                for i in range(0, len(pairs), 16))
    return total / len(pairs)
