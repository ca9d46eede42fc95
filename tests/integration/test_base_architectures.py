"""Each architecture a user may bring, through the phases that take it, on the real engine.

Each causal one goes base -> LoRA fine-tune -> evaluate (each with a ChatML template), and the
phases whose model handling depends on the architecture take one of them each: reward and PPO
(qwen2: a scalar head on the body, LoRA on the policy), MLP-channel pruning (gemma's gated MLP),
distillation into a student built from the base's own config (gpt_neox), full fine-tuning under
DeepSpeed (phi) and IA3 (mistral). BERT and RoBERTa bases fine-tune a classifier; T5 (LoRA) and
BART (in full) bases fine-tune as sequence-to-sequence models. One workflow, a branch per
architecture, on the session's Ray with one worker of half a CPU per training step, so four steps
run at once (their start-ups overlap). Budgets are a few steps: the subject is that each phase
takes the architecture and moves the model, not how far. Llama goes through the whole main path
in tests/e2e/test_base_spec.py.
"""

import json

import mlflow
import pytest
import torch
import yaml
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as LORA_DEFAULTS
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from components import tracking
from components.core.models import context_length
from components.core.sft import encode_split, pad_batch
from components.data.instructions import read_examples_jsonl
from tests.checkpoints import save_checkpoint, save_pretrained_checkpoint
from workflows import engine
from workflows.spec import load_spec

pytestmark = pytest.mark.full  # `./scripts/test.sh --full` (CI runs the main path only: scripts/test.sh)

ARCHS = ["qwen2", "mistral", "gemma", "gpt_neox", "phi", "gpt2"]
ENCODERS, SEQ2SEQ = ["bert", "roberta"], ["t5", "bart"]


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
    # The phases whose handling of a model depends on its architecture, one architecture each.
    few = {"warmup_steps": 2, "log_every": 5, "eval_every": 10, "checkpoint_every": 10}
    measure = {"speed_prompts": 2, "repeats": 1, "new_tokens": 4, "test_examples": 14}
    steps["preferences"] = {"uses": "preferences", "needs": ["instructions"]}
    steps["reward-qwen2"] = {"uses": "reward", "needs": ["ft-qwen2", "preferences"],
                             "with": {**few, "max_steps": 20, "lr": 3e-3, "test_pairs": 60}}
    steps["ppo-qwen2"] = {"uses": "ppo", "needs": ["ft-qwen2", "reward-qwen2", "preferences"],
                          "with": {"iterations": 2, "rollout_batch": 8, "minibatch": 4, "max_new_tokens": 8,
                                   "test_prompts": 8, "cpus_per_role": 0.2}}
    steps["prune-gemma"] = {"uses": "prune", "needs": ["ft-gemma", "instructions"],
                            "with": {"method": "channels", "recovery": {"max_steps": 10, "warmup_steps": 2, "eval_every": 10}, "measure": measure}}
    steps["distill-gpt_neox"] = {"uses": "distill", "needs": ["ft-gpt_neox", "instructions"],
                                 "with": {"training": {"max_steps": 10, "warmup_steps": 2, "eval_every": 10}, "baseline": False, "measure": measure}}
    for arch, method, strategy in (("phi", "full", "deepspeed"), ("mistral", "ia3", "fsdp")):
        steps[f"{method}-{arch}"] = {"uses": "finetune", "needs": [f"base-{arch}", "instructions", "corpus"],
                                     "with": {**few, "method": method, "strategy": strategy, "max_steps": 20, "test_examples": 14,
                                              "eval_tokens": 500}}
    for arch in ENCODERS:
        steps[f"base-{arch}"] = {"uses": "base", "with": {"source": str(save_checkpoint(root / arch, arch))}}
        steps[f"cls-{arch}"] = {"uses": "classify", "needs": [f"base-{arch}"],
                                "with": {**few, "task": "sst2", "train_examples": 400, "max_steps": 150, "lr": 3e-3, "eval_every": 50}}
    for arch, method in zip(SEQ2SEQ, ("lora", "full")):  # a random BART learns next to nothing through q/v LoRA alone
        steps[f"base-{arch}"] = {"uses": "base", "with": {"source": str(save_checkpoint(root / arch, arch))}}
        steps[f"ft-{arch}"] = {"uses": "finetune", "needs": [f"base-{arch}", "instructions", "corpus"],
                               "with": {**few, "method": method, "max_steps": 80, "lr": 1e-2, "eval_every": 20, "test_examples": 14}}
    spec = root / "bases.yaml"
    spec.write_text(yaml.safe_dump({"name": "bases", "scale": {"workers": 1, "cpus_per_worker": 0.45}, "steps": steps}))
    workdir = root / "wd"
    _, outcomes = engine.run(load_spec(spec, workdir=workdir), workdir, ray_address)
    assert all(o.state == "done" for o in outcomes), [(o.step, o.error) for o in outcomes if o.state != "done"]
    return workdir


@pytest.mark.parametrize("arch", ARCHS)
def test_a_base_of_each_architecture_is_lora_tuned_and_evaluated(branches, arch):
    uri, client, run = _client(branches)
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


def _client(workdir):
    uri = tracking.tracking_uri_for(workdir)
    client = mlflow.MlflowClient(uri)

    def run(step):
        (found,) = client.search_runs([tracking.experiment_id(uri)], f"tags.`lifecycle.step` = '{step}'")
        return found

    return uri, client, run


def test_reward_and_ppo_take_a_qwen2_base(branches):
    uri, client, run = _client(branches)
    reward = run("reward-qwen2")
    m = reward.data.metrics
    print(f"qwen2 reward: held-out pair accuracy {m['test_accuracy_before']:.0%} -> {m['test_accuracy']:.0%}")
    assert m["test_accuracy"] >= m["test_accuracy_before"] + 0.2  # 60 pairs; a broken head or pad handling stays at chance
    ppo = run("ppo-qwen2")
    m, iterations = ppo.data.metrics, client.get_metric_history(ppo.info.run_id, "reward")
    print(f"qwen2 ppo: reward {[i.value for i in iterations]}, KL to the reference {m['kl_to_reference']:.4f} nats")
    assert len(iterations) == 2 and m["reference_unchanged"] == 1 and m["kl_to_reference"] != 0
    loaded = AutoModelForCausalLM.from_pretrained(tracking.step_artifact(uri, run("ppo-qwen2").info.run_id).path)
    assert type(loaded).__name__ == "Qwen2ForCausalLM"


def test_pruning_and_distillation_keep_their_architecture_and_shrink_it(branches):
    uri, client, run = _client(branches)
    for step, arch in (("prune-gemma", "GemmaForCausalLM"), ("distill-gpt_neox", "GPTNeoXForCausalLM")):
        m = run(step).data.metrics
        print(f"{step}: weights x{m['params_ratio']:.2f}, exact match {m['exact_match']:.0%}")
        assert m["params_ratio"] < 0.9 and 0 <= m["exact_match"] <= 1
        loaded = AutoModelForCausalLM.from_pretrained(tracking.step_artifact(uri, run(step).info.run_id).path)
        assert type(loaded).__name__ == arch
    # Half of gemma's gated MLP channels are gone (the MLP is 71% of its block weights), and its config says so;
    # the student keeps one of the teacher's two blocks.
    assert 0.3 < run("prune-gemma").data.metrics["sparsity"] < 0.4
    assert AutoConfig.from_pretrained(tracking.step_artifact(uri, run("prune-gemma").info.run_id).path).intermediate_size == 48
    assert run("distill-gpt_neox").data.metrics["student_layers"] == 1
    assert AutoConfig.from_pretrained(tracking.step_artifact(uri, run("distill-gpt_neox").info.run_id).path).num_hidden_layers == 1


@pytest.mark.parametrize("step", ["full-phi", "ia3-mistral"])
def test_full_fine_tuning_and_ia3_take_a_base(branches, step):
    _, client, run = _client(branches)
    val = [m.value for m in client.get_metric_history(run(step).info.run_id, "val_loss")]
    print(f"{step}: validation loss {val}")
    assert val[-1] < val[0]


@pytest.mark.parametrize("arch", ENCODERS)
def test_an_encoder_base_fine_tunes_a_classifier(branches, arch):
    _, _, run = _client(branches)
    m = run(f"cls-{arch}").data.metrics
    print(f"{arch} sst2: accuracy {m['accuracy_before']:.1%} -> {m['accuracy_after']:.1%}")
    assert m["accuracy_after"] > m["accuracy_before"] + 0.05


@pytest.mark.parametrize("arch", SEQ2SEQ)
def test_a_seq2seq_base_fine_tunes_on_instructions(branches, arch):
    _, client, run = _client(branches)
    val = [m.value for m in client.get_metric_history(run(f"ft-{arch}").info.run_id, "val_loss")]
    print(f"{arch}: validation loss {val}")
    assert val[-1] < val[0] - 0.1


@torch.no_grad()
def _answer_loss(model_dir, split) -> float:
    """Mean loss on the answers of a split's examples, encoded as fine-tuning encodes them (the loop's validation_loss)."""
    model, tokenizer = AutoModelForCausalLM.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir)
    pairs = encode_split(split, read_examples_jsonl(split), tokenizer, context_length(model))
    total = sum(model(**pad_batch(pairs[i : i + 16], tokenizer.pad_token_id)).loss.item() * len(pairs[i : i + 16])
                for i in range(0, len(pairs), 16))
    return total / len(pairs)
