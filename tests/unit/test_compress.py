"""Compression without Ray: the distillation loss by hand at T = 1 and T > 1, quantized outputs close
to the float ones and a safe round trip through safetensors, pruning's sparsity and its structure,
and the plan check that refuses to quantize before merging."""

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

from components.artifact import Artifact
from components.compress.step import _source
from components.core import prune as P
from components.core.distill import distillation_loss
from components.core.models import ModelConfig, auto_class, build_causal_lm, load_trained
from components.core.quantize import (
    linear_weight_bytes,
    load_quantized,
    quantizable,
    quantize,
    save_quantized,
    weight_count,
)
from components.core.speed import generation_speed
from components.data.config import TokenizerConfig
from components.data.instructions import generate_tasks
from components.data.tokenizer import train_bpe
from workflows.spec import SpecError, load_spec


@pytest.fixture(scope="module")
def tokenizer():
    docs = [e.prompt + e.response for e in generate_tasks(40, seed=1)] * 3
    return train_bpe(docs, TokenizerConfig(vocab_size=400))


def tiny_model(tokenizer, architecture="gpt2", seed=0):
    cfg = ModelConfig(architecture=architecture, n_layer=2, n_embd=64, n_head=2, n_positions=96)
    return build_causal_lm(cfg, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, seed).eval()


def batch(tokenizer, n=4):
    return torch.tensor([tokenizer(e.prompt, add_special_tokens=False)["input_ids"][:20] for e in generate_tasks(40, seed=5)
                         if len(tokenizer(e.prompt, add_special_tokens=False)["input_ids"]) >= 20][:n])


# --- distillation loss ---------------------------------------------------------------------------


def test_distillation_loss_at_t1_by_hand():
    # one position, vocabulary 2: teacher logits (0, 0), student (log 3, 0) -> p_t = (.5, .5), p_s = (.75, .25)
    student = torch.tensor([[[math.log(3), 0.0], [0.0, 0.0]]])
    teacher = torch.zeros(1, 2, 2)
    labels = torch.tensor([[-100, 1]])  # the logits at t predict the token at t + 1
    mask = torch.ones(1, 2)
    kl = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)  # KL(p_t || p_s) = 0.1438410
    ce = -math.log(0.25)
    loss, parts = distillation_loss(student, teacher, labels, mask, temperature=1.0, alpha=0.5)
    assert parts["kl"] == pytest.approx(kl, abs=1e-6) and parts["ce"] == pytest.approx(ce, abs=1e-6)
    assert loss.item() == pytest.approx(0.5 * kl + 0.5 * ce, abs=1e-6)
    # alpha 1: the soft term alone; alpha 0: plain cross-entropy on the labels
    assert distillation_loss(student, teacher, labels, mask, 1.0, 1.0)[0].item() == pytest.approx(kl, abs=1e-6)
    assert distillation_loss(student, teacher, labels, mask, 1.0, 0.0)[0].item() == pytest.approx(ce, abs=1e-6)


def test_distillation_loss_at_t_above_1_softens_and_scales_by_t_squared():
    torch.manual_seed(0)
    student, teacher = torch.randn(2, 5, 7), torch.randn(2, 5, 7) * 3
    labels, mask = torch.randint(0, 7, (2, 5)), torch.ones(2, 5)
    t = 4.0
    loss, parts = distillation_loss(student, teacher, labels, mask, temperature=t, alpha=1.0)
    p_t = F.softmax(teacher[:, :-1] / t, -1)
    expected_kl = (p_t * (p_t.log() - F.log_softmax(student[:, :-1] / t, -1))).sum(-1).mean()
    assert parts["kl"] == pytest.approx(expected_kl.item(), rel=1e-5)
    assert loss.item() == pytest.approx(t**2 * expected_kl.item(), rel=1e-5)
    # softer distributions are closer: the KL at T = 4 is below the KL at T = 1
    assert parts["kl"] < distillation_loss(student, teacher, labels, mask, 1.0, 1.0)[1]["kl"]
    # a student equal to its teacher has zero KL and no soft gradient, at any temperature
    same = teacher.clone().requires_grad_()
    loss, parts = distillation_loss(same, teacher, labels, mask, temperature=t, alpha=1.0)
    loss.backward()
    assert parts["kl"] == pytest.approx(0.0, abs=1e-6) and same.grad.abs().max() < 1e-6


def test_distillation_loss_ignores_padding_and_checks_its_arguments():
    torch.manual_seed(1)
    student, teacher, labels = torch.randn(1, 4, 5), torch.randn(1, 4, 5), torch.tensor([[-100, 1, 2, -100]])
    padded = distillation_loss(student, teacher, labels, torch.tensor([[1, 1, 1, 0]]), 2.0, 1.0)[1]["kl"]
    trimmed = distillation_loss(student[:, :3], teacher[:, :3], labels[:, :3], torch.ones(1, 3), 2.0, 1.0)[1]["kl"]
    assert padded == pytest.approx(trimmed, rel=1e-6)
    with pytest.raises(ValueError, match="differ"):
        distillation_loss(student, teacher[..., :4], labels, torch.ones(1, 4))
    with pytest.raises(ValueError, match="temperature"):
        distillation_loss(student, teacher, labels, torch.ones(1, 4), temperature=0.0)


# --- quantization ------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["fp16", "bf16", "int8_dynamic", "int8_weight_only"])
def test_quantized_outputs_stay_close_and_survive_a_safetensors_round_trip(tokenizer, method, tmp_path):
    model = tiny_model(tokenizer)
    ids = batch(tokenizer)
    with torch.no_grad():
        reference = model(input_ids=ids).logits
        quantized = quantize(copy.deepcopy(model), method)
        logits = quantized(input_ids=ids).logits.float()
    # close to the float model: small logit error against the logits' spread, same greedy token almost everywhere
    assert (logits - reference).abs().max() < reference.std()
    assert (logits.argmax(-1) == reference.argmax(-1)).float().mean() > 0.9
    # smaller linear weights: half (16-bit) or about a quarter (int8, plus per-channel scales)
    ratio = linear_weight_bytes(quantized) / linear_weight_bytes(model)
    assert ratio == pytest.approx(0.5) if method in ("fp16", "bf16") else ratio < 0.3
    assert weight_count(quantized) == weight_count(model)

    save_quantized(quantized, tmp_path, method)
    assert {p.suffix for p in tmp_path.iterdir()} <= {".json", ".safetensors"}  # nothing to unpickle
    assert json.loads((tmp_path / "compression.json").read_text())["method"] == method
    for loaded in (load_quantized(tmp_path, auto_class(tmp_path)), load_trained(tmp_path)):
        with torch.no_grad():
            assert torch.equal(loaded(input_ids=ids).logits.float(), logits)


def test_gpt2_conv1d_projections_become_equivalent_linear_layers(tokenizer):
    model = tiny_model(tokenizer)
    ids = batch(tokenizer)
    from components.core.quantize import conv1d_to_linear

    converted = conv1d_to_linear(copy.deepcopy(model))
    with torch.no_grad():
        assert torch.allclose(converted(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5)
    assert len(quantizable(converted)) == 4 * 2  # c_attn, attn c_proj, c_fc, mlp c_proj per block; not the tied head


def test_int4_on_a_cpu_and_unknown_methods_are_clear_errors(tokenizer):
    if torch.cuda.is_available():
        pytest.skip("int4 has kernels here")
    with pytest.raises(ValueError, match="int4_weight_only needs a CUDA GPU"):
        quantize(tiny_model(tokenizer), "int4_weight_only")
    with pytest.raises(ValueError, match="unknown quantization method"):
        quantize(tiny_model(tokenizer), "int3")


def test_a_spec_that_quantizes_before_training_and_merging_is_refused(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: bad\nsteps:\n  pretrain: {uses: pretrain, needs: [corpus, tokenizer]}\n  corpus: {uses: data}\n"
                    "  tokenizer: {uses: tokenizer, needs: [corpus]}\n  instructions: {uses: instructions}\n"
                    "  quantize: {uses: quantize, needs: [pretrain, instructions]}\n"
                    "  finetune:\n    uses: finetune\n    needs: [quantize, instructions, corpus]\n")
    with pytest.raises(SpecError, match=r"bad.yaml:10: step 'finetune' \(finetune\) would train on and merge into 'quantize'"):
        load_spec(spec)


def test_a_soft_prompt_that_cannot_be_merged_is_refused(tmp_path):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps({"peft_type": "PROMPT_TUNING"}))
    with pytest.raises(ValueError, match="soft prompt .* cannot be merged"):
        _source({"finetune": Artifact(str(tmp_path), "model", "", "")})


# --- pruning -----------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [0.3, 0.5, 0.8])
def test_unstructured_pruning_reaches_its_sparsity_and_masks_hold_the_zeros(tokenizer, target):
    model = tiny_model(tokenizer)
    embedding = model.get_input_embeddings().weight.clone()
    masks = P.prune_unstructured(model, target)
    assert P.sparsity(model) == pytest.approx(target, abs=1e-3)
    assert torch.equal(model.get_input_embeddings().weight, embedding)  # only block projections are pruned
    kept = [w.abs()[masks[f"{n}.weight"]] for n, w in ((n, m.weight) for n, m in P.block_weights(model))]
    zeroed = [m.weight.abs()[~masks[f"{n}.weight"]] for n, m in P.block_weights(model)]
    assert max(z.max() for z in zeroed) == 0 and min(k.min() for k in kept) > 0  # global threshold: zeros are the smallest
    with torch.no_grad():  # an optimizer step moves every weight; the masks put the zeros back
        for _, m in P.block_weights(model):
            m.weight.add_(0.1)
    P.apply_masks(model, masks)
    assert P.sparsity(model) == pytest.approx(target, abs=1e-3)


@pytest.mark.parametrize("architecture", ["gpt2", "llama"])
def test_channel_pruning_and_layer_selection_build_smaller_plain_models(tokenizer, architecture, tmp_path):
    model = tiny_model(tokenizer, architecture)
    ids = batch(tokenizer)
    with torch.no_grad():
        reference = model(input_ids=ids).logits
        assert torch.allclose(P.prune_mlp_channels(model, 1.0)(input_ids=ids).logits, reference, atol=1e-5)
        assert torch.allclose(P.keep_layers(model, [0, 1])(input_ids=ids).logits, reference, atol=1e-5)
    half = P.prune_mlp_channels(model, 0.5)
    width = half.config.n_inner if architecture == "gpt2" else half.config.intermediate_size
    assert width == 128  # half of 4 x 64
    student = P.keep_layers(half, [1])
    assert len(P.transformer_blocks(student)) == 1 and weight_count(student) < weight_count(model)
    student.save_pretrained(tmp_path)  # a plain Hugging Face model: loads without any lifecycle code
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        assert torch.equal(AutoModelForCausalLM.from_pretrained(tmp_path)(input_ids=ids).logits, student(input_ids=ids).logits)
    with pytest.raises(ValueError, match="layers"):
        P.keep_layers(model, [5])


def test_generation_speed_measures_every_model(tokenizer):
    models = [tiny_model(tokenizer), quantize(tiny_model(tokenizer), "int8_dynamic")]
    prompts = [e.prompt for e in generate_tasks(4, seed=2)]
    speeds = generation_speed(models, tokenizer, prompts, new_tokens=4, repeats=2)
    assert len(speeds) == 2 and all(s["latency_ms"] > 0 and s["tokens_per_s"] > 0 for s in speeds)


def test_prune_names_its_two_methods_and_leaves_the_source_alone():
    model = build_causal_lm(ModelConfig(n_layer=2, n_embd=32, n_head=2, n_positions=32), 64, 1, 2, 0, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    zeroed, masks = P.prune(model, "unstructured", 0.5)
    narrow, none = P.prune(model, "channels", 0.5)
    assert abs(P.sparsity(zeroed) - 0.5) < 0.01 and masks and none == {}
    assert sum(p.numel() for p in narrow.parameters()) < sum(p.numel() for p in model.parameters())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    with pytest.raises(ValueError, match="'unstructured' or 'channels'"):
        P.prune(model, "random", 0.5)
