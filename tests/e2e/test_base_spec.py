"""workflows/finetune-base.yaml end to end, as a user runs it on a checkpoint of their own.

The checkpoint is a tiny Llama with a ChatML template (eos <|im_end|>), written by `save_pretrained`
and trained for a few seconds on task text in the project's own prompt format (tests/checkpoints.py),
so it starts from something, as a real pretrained model does, but not from the template it is tuned on.
"""

import json
import re

import openai
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from components import tracking
from components.core.chat import prompt_messages
from tests.checkpoints import save_pretrained_checkpoint
from tests.conftest import ROOT, delete_serve_app, lifecycle
from tests.e2e.test_shipped_specs import printed_url, step_run

# The tiny model takes the tiny models' learning rates (the spec's are for a real checkpoint).
QUICK = ("instructions.n_per_family=150", "finetune.lr=1e-2", "dpo.lr=2e-3", "dpo.micro_batch_size=16",
         "finetune.max_steps=150", "finetune.eval_every=50", "finetune.checkpoint_every=50", "finetune.test_examples=120",
         "finetune.sweep.ranks=[16,8]", "dpo.max_steps=20", "dpo.warmup_steps=2",
         "eval-base.test_examples=120", "eval-dpo.test_examples=120")


def test_a_users_checkpoint_is_tuned_aligned_quantized_gated_and_served_with_its_chat_template(ray_address, serve_port, tmp_path):
    base = save_pretrained_checkpoint(tmp_path / "my-model", "llama", chat=True)
    workdir = tmp_path / "wd"
    out = lifecycle("run", str(ROOT / "workflows" / "finetune-base.yaml"), f"base.source={base}", *QUICK,
                    f"deploy.port={serve_port}", "--no-wait", "--workdir", str(workdir), "--address", ray_address, timeout=1200)
    assert out.returncode == 0, out.stdout + out.stderr
    try:
        _check_run(base, workdir, out.stdout)
    finally:
        delete_serve_app("lifecycle")  # its replica's CPU is needed by the tests that follow
    try:
        _check_adapters(workdir, ray_address, serve_port)
    finally:
        delete_serve_app("adapters")


def _check_adapters(workdir, ray_address, serve_port):
    """The sweep's LoRA adapters, every trial's, served side by side over the user's base by one replica."""
    out = lifecycle("serve", "models:/finetune-base-finetune/1", "app_name=adapters", f"port={serve_port}", "--no-wait",
                    "--workdir", str(workdir), "--address", ray_address, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    client = openai.OpenAI(base_url=printed_url(out.stdout, "/v1"), api_key="unused", max_retries=0, timeout=60)
    served = [m.id for m in client.models.list().data]
    trials = [m for m in served if m.startswith("finetune-base-finetune-r")]
    assert "finetune-base-finetune-adapter" in served and len(trials) >= 1, served
    for model in ["finetune-base-finetune-adapter", *trials]:
        reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Reverse the words: a b c"}],
                                               max_tokens=16, temperature=0)
        assert reply.model == model and reply.choices[0].finish_reason in ("stop", "length")


def _check_run(base, workdir, stdout):
    uri = tracking.tracking_uri_for(workdir)
    metrics = {s: step_run(workdir, s).data.metrics for s in ("finetune", "dpo", "eval-base", "eval-dpo")}
    ft, dpo, before, after = metrics.values()
    print(f"finetune-base: exact match {ft['exact_match_before']:.1%} -> {ft['exact_match_after']:.1%}; DPO held-out "
          f"log-ratio accuracy {dpo['reward_accuracy_after']:.1%} +- {dpo['reward_accuracy_after_se']:.1%} (preference accuracy "
          f"{dpo['preference_accuracy_before']:.1%} -> {dpo['preference_accuracy_after']:.1%}); response NLL "
          f"{before['response_nll']:.2f} (base) -> {after['response_nll']:.2f} (tuned, aligned, int8)")

    # The base came in with its lineage: the exact weights (digest) and its architecture.
    base_run = step_run(workdir, "base")
    record = tracking.load_dict(uri, base_run.info.run_id, "base_source.json")
    assert record["architecture"] == "LlamaForCausalLM" and record["source"] == str(base)
    assert base_run.data.tags["lifecycle.base_source"] == str(base)

    # Fine-tuning through the model's own template, loss on the answer only: a LoRA rank sweep (q_proj and v_proj,
    # peft's Llama default) makes it answer held-out tasks it could not answer in that template before.
    finetune = step_run(workdir, "finetune")
    assert finetune.data.tags["lifecycle.prompt_format"] == "chat template"
    assert ft["exact_match_after"] >= ft["exact_match_before"] + 0.03
    ft_dir = tracking.step_artifact(uri, finetune.info.run_id).path
    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), ft_dir / "adapter")
    assert sorted(adapter.peft_config["default"].target_modules) == ["q_proj", "v_proj"]
    # What the step exports loads with plain transformers and peft: the merged model is the base plus the adapter.
    ids = torch.tensor([list(range(5, 25))])
    merged = AutoModelForCausalLM.from_pretrained(ft_dir)
    assert torch.allclose(merged(ids).logits, adapter.eval()(ids).logits, atol=1e-4)

    # DPO: on held-out pairs the policy moved the preferred answer up against the rejected one, relative to its
    # reference, well beyond chance (an untrained policy moves nothing: every pair a tie, 0.5). The deployed (int8) model's
    # reference answers, in the model's template, are far likelier than the base's.
    assert dpo["reward_accuracy_after"] > 0.5 + 2 * dpo["reward_accuracy_after_se"]
    assert after["response_nll"] < before["response_nll"] - 1.0

    # The endpoint speaks the model's template: held-out prompts the evaluation saw this model answer exactly,
    # sent as chat messages with the official client, are rendered by the template (the prompt tokens say so)
    # and answered again, ended by the model's own eos, <|im_end|>. (The int8 model's activation scales follow
    # the batch, and the evaluation batched 16 prompts: an answer may differ, so several are asked.)
    tokenizer = AutoTokenizer.from_pretrained(base)
    predictions = tracking.step_artifact(uri, step_run(workdir, "eval-dpo").info.run_id).path / "predictions.jsonl"
    right = [p for p in map(json.loads, predictions.read_text().splitlines()) if p["answer"] == p["reference"]][:5]
    assert right, "the deployed model answers some held-out prompts exactly"
    client = openai.OpenAI(base_url=printed_url(stdout, "/v1"), api_key="unused", max_retries=0, timeout=60)
    model = client.models.list().data[0].id
    answered = []
    for prediction in right:
        question = prompt_messages(prediction["prompt"])
        reply = client.chat.completions.create(model=model, messages=question, max_tokens=32, temperature=0)
        rendered = tokenizer.apply_chat_template(question, tokenize=False, add_generation_prompt=True)
        assert rendered.startswith("<|im_start|>user\n") and rendered.endswith("<|im_start|>assistant\n")
        assert reply.usage.prompt_tokens == len(tokenizer(rendered, add_special_tokens=False)["input_ids"])
        answered.append((reply.choices[0].finish_reason, reply.choices[0].message.content == prediction["reference"]))
    # (A quantized model served from_pretrained was random layers answering "The cake eatshite" to everything.)
    assert all(finish == "stop" for finish, _ in answered) and sum(same for _, same in answered) >= min(3, len(right)), answered

    # From the endpoint's model back to the checkpoint it started from.
    lineage = lifecycle("lineage", "models:/finetune-base-quantize@production", "--workdir", str(workdir), "--json")
    assert lineage.returncode == 0, lineage.stderr
    chain = {node["step"]: node for node in json.loads(lineage.stdout)}
    assert {"quantize", "dpo", "finetune", "base"} <= set(chain)
    assert re.fullmatch(re.escape(str(base)) + r" [0-9a-f]{16}", chain["base"]["checkpoint"])
