"""Fine-tuning pieces on tiny models: parameter counts, loss masking, frozen weights, merge, methods, bad input."""

import json

import peft
import pytest
import torch
from transformers import AutoModelForCausalLM

from components.core.models import ModelConfig, build_causal_lm
from components.core.peft_methods import LoraSettings, PromptTuningSettings, SelectiveSettings, apply_method, trainable_parameters
from components.core.sft import IGNORE_INDEX, encode_pair, encode_split, greedy_answers, pad_batch
from components.data.config import TokenizerConfig
from components.data.instructions import generate_tasks
from components.data.tokenizer import train_bpe
from components.finetune.config import FinetuneConfig
from components.scoring import AnswerMemo, reuse_tags
from workflows.spec import SpecError, load_spec


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    docs = [e.prompt + e.response for e in generate_tasks(40, seed=1)] * 3
    tok = train_bpe(docs, TokenizerConfig(vocab_size=400))
    path = tmp_path_factory.mktemp("tok")
    tok.save_pretrained(path)
    tok.name_or_path = str(path)  # prompt tuning initialises from text through this path
    return tok


def tiny_model(tokenizer, seed=0):
    cfg = ModelConfig(n_layer=2, n_embd=32, n_head=2, n_positions=96)
    return build_causal_lm(cfg, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, seed)


def apply(model, method, tokenizer=None, **lora):
    return apply_method(model, method, LoraSettings(**lora), PromptTuningSettings(), SelectiveSettings(trainable=["*.h.1.*"]), tokenizer)


def batch_of(tokenizer, n=8):
    examples = generate_tasks(n, seed=3, families=["reverse"])
    return pad_batch([encode_pair(tokenizer, e.prompt, e.response) for e in examples], tokenizer.pad_token_id)


def train_steps(model, batch, steps=20, lr=1e-2):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def test_lora_on_a_512x64_weight_trains_4608_of_32768_parameters():
    """The source document's worked example: rank 8 on a 512 x 64 weight, an 86% reduction."""
    layer = torch.nn.Sequential()
    layer.add_module("proj", torch.nn.Linear(64, 512, bias=False))  # weight [512, 64]
    model = peft.get_peft_model(layer, peft.LoraConfig(r=8, target_modules=["proj"]))
    trainable, total = trainable_parameters(model)
    assert (trainable, total - trainable) == (4608, 32768)  # A: 8 x 64, B: 512 x 8
    assert round(1 - trainable / 32768, 2) == 0.86


def test_labels_mask_the_prompt_and_the_loss_covers_only_response_tokens(tokenizer):
    ids, labels = encode_pair(tokenizer, "### Instruction:\nAdd 2 and 3.\n\n### Response:\n", "5")
    n_prompt = len(tokenizer("### Instruction:\nAdd 2 and 3.\n\n### Response:\n", add_special_tokens=False)["input_ids"])
    assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:] and ids[-1] == tokenizer.eos_token_id

    model = tiny_model(tokenizer)
    batch = batch_of(tokenizer)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    scored = batch["labels"][:, 1:] != IGNORE_INDEX
    manual = torch.nn.functional.cross_entropy(logits[:, :-1][scored], batch["labels"][:, 1:][scored])
    assert torch.allclose(model(**batch).loss, manual, atol=1e-5)
    # Changing prompt tokens' labels cannot change the loss: they are not scored.
    assert scored.sum() < batch["attention_mask"].sum() - len(batch["input_ids"])


def test_lora_keeps_base_weights_frozen_and_merge_gives_the_same_logits(tokenizer):
    model = apply(tiny_model(tokenizer), "lora", r=4)
    base = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    batch = batch_of(tokenizer)
    losses = train_steps(model, batch)
    assert losses[-1] < losses[0]
    for n, p in model.named_parameters():
        if "lora_" in n:
            assert p.requires_grad
        else:
            assert not p.requires_grad and torch.equal(p, base[n]), n
    assert any(not torch.equal(p, lora[n]) for n, p in model.named_parameters() if "lora_" in n)

    model.eval()
    with torch.no_grad():
        adapter_logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        merged = model.merge_and_unload()
        assert not isinstance(merged, peft.PeftModel)
        merged_logits = merged(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.allclose(adapter_logits, merged_logits, atol=1e-5)


@pytest.mark.parametrize("method", ["full", "selective", "lora", "prompt_tuning", "ia3"])
def test_every_method_trains_only_its_parameters_and_lowers_the_loss(tokenizer, method):
    model = apply(tiny_model(tokenizer), method, tokenizer)
    trainable, total = trainable_parameters(model)
    n_embd = 32
    expected = {
        "full": lambda: trainable == total,
        "selective": lambda: 0 < trainable < total / 2,  # block 1 of 2, the embeddings stay frozen
        "lora": lambda: trainable == 2 * 8 * (32 + 96),  # c_attn 32 -> 96, rank 8, two blocks
        "prompt_tuning": lambda: trainable == 16 * n_embd,  # 16 virtual tokens
        "ia3": lambda: 0 < trainable < 1000,
    }[method]
    assert expected(), (method, trainable, total)
    losses = train_steps(model, batch_of(tokenizer), steps=25, lr=3e-2 if method != "full" else 3e-3)
    assert losses[-1] < losses[0], (method, losses[0], losses[-1])


@pytest.mark.parametrize("lora", [{}, {"r": 4, "alpha": 8, "target_modules": ["c_attn", "mlp.c_proj"]}])
def test_lora_on_the_tiny_default_model_trains_under_2_percent_and_saves_under_5_percent(tmp_path, lora):
    model = build_causal_lm(ModelConfig(), 2048, 1, 0, 2)
    model.save_pretrained(tmp_path / "model")
    adapted = apply(model, "lora", **lora)
    trainable, total = trainable_parameters(adapted)
    assert trainable / total < 0.02, trainable / total
    adapted.save_pretrained(tmp_path / "adapter")
    adapter_bytes = (tmp_path / "adapter" / "adapter_model.safetensors").stat().st_size
    assert adapter_bytes / (tmp_path / "model" / "model.safetensors").stat().st_size < 0.05


def test_adapter_saves_as_small_safetensors_and_reloads(tokenizer, tmp_path):
    model = apply(tiny_model(tokenizer), "lora", r=4)
    train_steps(model, batch_of(tokenizer), steps=5)
    model.save_pretrained(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["r"] == 4
    reloaded = peft.PeftModel.from_pretrained(tiny_model(tokenizer), tmp_path / "adapter")
    batch = batch_of(tokenizer)
    model.eval()
    reloaded.eval()
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, reloaded(**batch).logits, atol=1e-6)


def test_greedy_answers_stop_at_eos_and_handle_ragged_prompts(tokenizer):
    model = tiny_model(tokenizer)
    examples = generate_tasks(6, seed=5, families=["add", "copy_field"])
    answers = greedy_answers(model, tokenizer, [e.prompt for e in examples], max_new_tokens=5, batch_size=4)
    assert len(answers) == len(examples) and all(isinstance(a, str) for a in answers)
    # Left padding must not change a prompt's answer: batched equals one at a time.
    assert answers == [greedy_answers(model, tokenizer, [e.prompt], max_new_tokens=5)[0] for e in examples]


def test_unknown_target_module_is_an_error_naming_the_field(tokenizer):
    with pytest.raises(ValueError, match=r"lora.target_modules: no module named 'q_proj'"):
        apply(tiny_model(tokenizer), "lora", target_modules=["q_proj"])


def test_example_longer_than_the_context_names_file_and_line(tokenizer, tmp_path):
    examples = generate_tasks(3, seed=0, families=["add"])
    long = examples[:2] + [type(examples[0])("add", examples[2].prompt * 10, "1")]
    with pytest.raises(ValueError, match=r"train.jsonl:3: prompt \+ response is \d+ tokens, more than the model's context of 96"):
        encode_split(tmp_path / "train.jsonl", long, tokenizer, 96)


@pytest.mark.parametrize("override, expected", [
    ("finetune.lora.r=0", "lora.r"),
    ("finetune.method=adapterz", "method"),
    ("finetune.sweep={ranks: [4, 0]}", "ranks"),
])
def test_bad_finetune_config_is_caught_before_ray(override, expected):
    from tests.conftest import ROOT

    with pytest.raises(SpecError, match=expected):
        load_spec(ROOT / "workflows" / "smoke.yaml", [override])


def test_malformed_instruction_file_is_caught_before_ray_with_file_and_line(tmp_path):
    from tests.conftest import ROOT

    bad = tmp_path / "tasks.jsonl"
    bad.write_text('{"instruction": "Say hi.", "output": "hi"}\n{"instruction": "Say yo."}\n')
    with pytest.raises(SpecError, match=r"tasks.jsonl:2: missing field 'output'"):
        load_spec(ROOT / "workflows" / "smoke.yaml", [f"instructions.source={bad}"])


def test_sweep_needs_lora():
    with pytest.raises(ValueError, match="sweep searches LoRA rank"):
        FinetuneConfig(method="ia3", sweep={})


def test_merged_export_loads_as_a_plain_model(tokenizer, tmp_path):
    model = apply(tiny_model(tokenizer), "lora", r=4)
    train_steps(model, batch_of(tokenizer), steps=5)
    model.merge_and_unload().save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").exists()
    assert not isinstance(AutoModelForCausalLM.from_pretrained(tmp_path / "m"), peft.PeftModel)


def test_an_answer_memo_answers_each_prompt_once_per_model(tokenizer, tmp_path):
    model = tiny_model(tokenizer)
    prompts = [e.prompt for e in generate_tasks(5, seed=3, families=["add", "copy_field"])]
    first = AnswerMemo.of("model-key", str(tmp_path), "finetune")
    assert first.answers(model, tokenizer, prompts, 8) == greedy_answers(model, tokenizer, prompts, 8)
    assert first.reused == {}
    # Another step, a shorter budget: served from the kept answers (the model is never called).
    second = AnswerMemo.of("model-key", str(tmp_path), "dpo")
    assert second.answers(None, tokenizer, prompts, 5) == greedy_answers(model, tokenizer, prompts, 5)
    assert second.reused == {"finetune": len(prompts)} and reuse_tags(before=second) == {"lifecycle.answers_before": f"{len(prompts)} from finetune"}
    # A longer budget is generated again, except an answer that ended at eos within its budget.
    (tmp_path / "answers" / "model-key" / "x.jsonl").write_text(json.dumps({"prompt": "p", "ids": [5, 6], "budget": 8, "step": "eval"}) + "\n")
    third = AnswerMemo.of("model-key", str(tmp_path), "grpo")
    assert third.answers(model, tokenizer, [*prompts, "p"], 12) == [*greedy_answers(model, tokenizer, prompts, 12), tokenizer.decode([5, 6])]
    assert third.reused == {"eval": 1}
    # Another model's answers are its own.
    assert AnswerMemo.of("other-key", str(tmp_path), "dpo").answers(model, tokenizer, ["p"], 4) != [tokenizer.decode([5, 6])]
    # The evaluate phase takes what is kept and generates only the rest, on its replicas.
    evaluate = AnswerMemo.of("model-key", str(tmp_path), "eval-finetune")
    assert evaluate.known(tokenizer, [*prompts, "unseen"], 5) == dict(zip(prompts, greedy_answers(model, tokenizer, prompts, 5)))
    assert evaluate.reused == {"finetune": len(prompts)}
    assert AnswerMemo.of("other-key", str(tmp_path), "eval").known(tokenizer, prompts, 5) == {}


def test_the_selective_default_trains_block_3_of_a_gpt2_and_of_a_llama(tokenizer):
    """The default patterns name block 3 in both layouts ('*.h.3.*' GPT-2, '*layers.3.*' Llama): each model
    matches one of them. Requiring every pattern to match refused the default on every model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    gpt2 = build_causal_lm(ModelConfig(n_layer=4, n_embd=32, n_head=2, n_positions=96), len(tokenizer), tokenizer.bos_token_id,
                           tokenizer.eos_token_id, tokenizer.pad_token_id, 0)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                                         num_attention_heads=2, num_key_value_heads=2))
    for model, block in ((gpt2, ".h.3."), (llama, "layers.3.")):
        model = apply_method(model, "selective", LoraSettings(), PromptTuningSettings(), SelectiveSettings(), tokenizer)
        trained = [n for n, p in model.named_parameters() if p.requires_grad]
        assert trained and all(block in n for n in trained), trained
    with pytest.raises(ValueError, match=r"selective.trainable: no parameter matches any of \['\*.h.9.\*'\]"):
        apply_method(gpt2, "selective", LoraSettings(), PromptTuningSettings(), SelectiveSettings(trainable=["*.h.9.*"]), tokenizer)
