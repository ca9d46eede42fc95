"""Any architecture transformers ships, brought as a pretrained checkpoint: tiny random models of
eleven of them, saved as safetensors and loaded back through the lifecycle's own loading code, are
told apart, sharded by their own blocks, LoRA/IA3-tuned with peft's defaults, pruned and cut into
students. Nothing is downloaded: every model is built from a config."""

import pytest
import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM

from components.core import prune as P
from components.core.models import (
    UNBOUNDED_CONTEXT,
    auto_class,
    context_length,
    count_parameters,
    family_of,
    load_trained,
    transformer_blocks,
)
from components.core.peft_methods import (
    ALL_LINEAR,
    LoraSettings,
    PromptTuningSettings,
    SelectiveSettings,
    apply_method,
    ia3_defaults,
    lora_defaults,
)

VOCAB = 512
# Sizes shared by the decoders (hidden 32, 2 layers, 4 heads of 8): a few thousand weights per layer. Weights drawn
# 10x wider than a fresh model's (0.02), like a trained model's: from transformers' near-zero init, frozen weights
# and a q/v-only LoRA barely move the logits in a few steps.
INIT = 0.2
DECODER = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
               max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2, initializer_range=INIT)
ENCODER = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
               max_position_embeddings=130, pad_token_id=1)

# name: (model class, config, family)
ARCHITECTURES = {
    "llama": ("LlamaForCausalLM", transformers.LlamaConfig(**DECODER, num_key_value_heads=2), "causal"),
    "qwen2": ("Qwen2ForCausalLM", transformers.Qwen2Config(**DECODER, num_key_value_heads=2), "causal"),
    "mistral": ("MistralForCausalLM", transformers.MistralConfig(**DECODER, num_key_value_heads=2, sliding_window=64), "causal"),
    "gemma": ("GemmaForCausalLM", transformers.GemmaConfig(**DECODER, num_key_value_heads=2, head_dim=8), "causal"),
    "gpt_neox": ("GPTNeoXForCausalLM", transformers.GPTNeoXConfig(**DECODER), "causal"),
    "phi": ("PhiForCausalLM", transformers.PhiConfig(**DECODER), "causal"),
    "gpt2": ("GPT2LMHeadModel", transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=128,
                                                        bos_token_id=1, eos_token_id=2, pad_token_id=0, initializer_range=INIT), "causal"),
    "bert": ("BertForMaskedLM", transformers.BertConfig(**ENCODER), "masked"),
    "roberta": ("RobertaForMaskedLM", transformers.RobertaConfig(**ENCODER), "masked"),
    # A hub T5 sets no n_positions (relative positions): context_length falls back.
    "t5": ("T5ForConditionalGeneration", transformers.T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2,
                                                               num_decoder_layers=2, num_heads=4, pad_token_id=0, eos_token_id=2,
                                                               decoder_start_token_id=0), "seq2seq"),
    "bart": ("BartForConditionalGeneration", transformers.BartConfig(vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2,
                                                                     encoder_attention_heads=4, decoder_attention_heads=4,
                                                                     encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=128),
             "seq2seq"),
}
CAUSAL = [n for n, (_, _, family) in ARCHITECTURES.items() if family == "causal"]
NAMES = list(ARCHITECTURES)
# peft's defaults must stay what the lifecycle's own architectures trained with before (the tiny run's numbers).
OWN_LORA = {"gpt2": ["c_attn"], "llama": ["q_proj", "v_proj"], "t5": ["q", "v"]}
OWN_IA3 = {"gpt2": (["c_attn", "mlp.c_proj"], ["mlp.c_proj"]), "llama": (["k_proj", "v_proj", "down_proj"], ["down_proj"]),
           "t5": (["k", "v", "wo"], ["wo"])}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, str]:
    """{architecture: folder} of tiny random checkpoints saved as safetensors, as a user brings them."""
    folders = {}
    for name, (cls, config, _) in ARCHITECTURES.items():
        torch.manual_seed(0)
        folder = tmp_path_factory.mktemp(name)
        getattr(transformers, cls)(config).save_pretrained(folder, safe_serialization=True)
        folders[name] = str(folder)
    return folders


def _load(checkpoints, name):
    torch.manual_seed(0)  # untied random heads, if any, are the same on every load
    return load_trained(checkpoints[name])


def _settings(**lora):
    return LoraSettings(**lora), PromptTuningSettings(init_text=None), SelectiveSettings()


def _batch(n: int = 4, length: int = 16) -> torch.Tensor:
    """[n, length] token ids: a fixed repeating pattern, learnable in a few steps."""
    pattern = torch.arange(3, 3 + 2 * length, 2) % VOCAB
    return torch.stack([pattern.roll(i) for i in range(n)])


def _block_count(config) -> int:
    if getattr(config, "is_encoder_decoder", False):
        return config.num_layers + config.num_decoder_layers if hasattr(config, "num_decoder_layers") else config.encoder_layers + config.decoder_layers
    return config.num_hidden_layers


def test_peft_defaults_keep_the_lifecycles_own_targets():
    assert {a: lora_defaults()[a] for a in OWN_LORA} == OWN_LORA
    assert {a: ia3_defaults()[a] for a in OWN_IA3} == OWN_IA3


@pytest.mark.parametrize("name", NAMES)
def test_loaded_checkpoint_has_its_family_class_and_blocks(checkpoints, name):
    cls, config, family = ARCHITECTURES[name]
    model = _load(checkpoints, name)
    assert type(model).__name__ == cls
    assert family_of(model) == family_of(AutoConfig.from_pretrained(checkpoints[name])) == family
    assert auto_class(checkpoints[name]) is {"causal": transformers.AutoModelForCausalLM, "masked": transformers.AutoModelForMaskedLM,
                                             "seq2seq": transformers.AutoModelForSeq2SeqLM}[family]
    blocks = transformer_blocks(model)
    assert len(blocks) == _block_count(model.config) and len({id(b) for b in blocks}) == len(blocks)
    if model._no_split_modules:  # BERT and RoBERTa name none: found by their encoder.layer
        assert all(type(b).__name__ in model._no_split_modules for b in blocks)
    else:
        assert all(type(b).__name__.endswith("Layer") for b in blocks)


@pytest.mark.parametrize("name", NAMES)
def test_context_length_is_the_positions_a_model_can_take(checkpoints, name):
    model = _load(checkpoints, name)
    expected = {"gpt2": 128, "bert": 130, "roberta": 130 - 2, "t5": UNBOUNDED_CONTEXT}.get(name, 128)
    assert context_length(model) == expected
    ids = torch.full((1, context_length(model)), 5)
    with torch.no_grad():  # the whole window runs (RoBERTa numbers positions from padding_idx + 1)
        model(input_ids=ids, **({"decoder_input_ids": ids[:, :4]} if family_of(model) == "seq2seq" else {}))


def test_a_decoders_classifier_stays_causal_and_a_bert_decoder_too():
    gpt2 = transformers.GPT2Config(n_layer=1, architectures=["GPT2ForSequenceClassification"])  # a reward model
    llama = transformers.LlamaConfig(architectures=["LlamaForSequenceClassification"])
    bert_decoder = transformers.BertConfig(is_decoder=True, architectures=["BertLMHeadModel"])
    roberta_cls = transformers.RobertaConfig(architectures=["RobertaForSequenceClassification"])
    bert_ner = transformers.BertConfig(architectures=["BertForTokenClassification"])
    assert [family_of(c) for c in (gpt2, llama, bert_decoder, roberta_cls, bert_ner)] == ["causal", "causal", "causal", "masked", "masked"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("targets", [None, [ALL_LINEAR]])
def test_lora_finds_targets_and_trains_only_them(checkpoints, name, targets):
    model = _load(checkpoints, name)
    peft_model = apply_method(model, "lora", *_settings(target_modules=targets))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    adapted = {n.rsplit(".", 1)[-1] for n, m in peft_model.named_modules() if hasattr(m, "lora_A")}
    if targets is None:
        assert adapted == {t.rsplit(".", 1)[-1] for t in lora_defaults()[model.config.model_type]}
    else:  # attention and MLP, never the output head (RoBERTa's lm_head.dense before it is a hidden layer: adapted)
        assert len(adapted) > len(lora_defaults()[model.config.model_type])
        assert not hasattr(peft_model.get_base_model().get_output_embeddings(), "lora_A")
    assert len(transformer_blocks(peft_model)) == _block_count(model.config)  # still found under the wrapper


@pytest.mark.parametrize("name", NAMES)
def test_ia3_uses_peft_defaults(checkpoints, name):
    model = _load(checkpoints, name)
    peft_model = apply_method(model, "ia3", *_settings())
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("ia3_" in n for n in trainable)


def _train_lora(model, targets, steps: int = 20):
    """(first loss, last loss, peft model) of `steps` AdamW steps of LoRA on one fixed batch."""
    peft_model = apply_method(model, "lora", *_settings(target_modules=targets, dropout=0.0))
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=3e-2)
    ids = _batch()
    losses = []
    for _ in range(steps):
        loss = peft_model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses[0], losses[-1], peft_model


@pytest.mark.parametrize("name", CAUSAL)
def test_lora_learns_and_merges_into_a_plain_checkpoint(checkpoints, name, tmp_path):
    torch.manual_seed(0)
    first, last, peft_model = _train_lora(_load(checkpoints, name).train(), None)
    assert last < 0.9 * first, (first, last)
    merged = peft_model.merge_and_unload().eval()
    merged.save_pretrained(tmp_path, safe_serialization=True)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(again) is type(merged)
    ids = _batch()
    with torch.no_grad():
        assert torch.allclose(merged(input_ids=ids).logits, again(input_ids=ids).logits, atol=1e-5)


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_all_linear_lora_learns_too(checkpoints, name):
    torch.manual_seed(0)
    first, last, _ = _train_lora(_load(checkpoints, name).train(), [ALL_LINEAR])
    assert last < 0.9 * first, (first, last)


def test_an_architecture_peft_has_no_default_for_names_the_field():
    torch.manual_seed(0)
    granite = transformers.GraniteForCausalLM(transformers.GraniteConfig(**{**DECODER, "num_key_value_heads": 2}))
    assert "granite" not in lora_defaults() and "granite" not in ia3_defaults()
    with pytest.raises(ValueError, match=r"lora.target_modules: peft has no default for a granite model.*q_proj"):
        apply_method(granite, "lora", *_settings())
    with pytest.raises(ValueError, match=r"ia3 has no default target modules for a granite model"):
        apply_method(granite, "ia3", *_settings())
    with pytest.raises(ValueError, match=r"lora.target_modules: 'all-linear' already takes"):
        apply_method(granite, "lora", *_settings(target_modules=[ALL_LINEAR, "q_proj"]))
    assert apply_method(granite, "lora", *_settings(target_modules=["q_proj", "v_proj"])) is not None  # named: it works


@pytest.mark.parametrize("name", [n for n in NAMES if ARCHITECTURES[n][2] != "seq2seq"])
def test_student_from_a_teacher_keeps_layers_and_narrower_mlps(checkpoints, name, tmp_path):
    """The distillation student (compress/step.py): one of the teacher's blocks, half its MLP channels."""
    teacher = _load(checkpoints, name)
    student = P.prune_mlp_channels(P.keep_layers(teacher, [1]), 0.5)
    assert len(transformer_blocks(student)) == 1 and student.config.num_hidden_layers == 1
    width = student.config.n_inner if name == "gpt2" else student.config.intermediate_size
    assert width == (64 if name == "gpt2" else 32)  # half of gpt2's default 4 * 32, of the others' 64
    assert count_parameters(student) < count_parameters(teacher)
    student.save_pretrained(tmp_path, safe_serialization=True)
    again = load_trained(tmp_path)
    ids = _batch(2, 8)
    with torch.no_grad():
        assert torch.allclose(student(input_ids=ids).logits, again(input_ids=ids).logits, atol=1e-5)
    # Keeping every layer and channel is the teacher itself.
    same = P.prune_mlp_channels(P.keep_layers(teacher, [0, 1]), 1.0)
    with torch.no_grad():
        assert torch.allclose(same(input_ids=ids).logits, teacher(input_ids=ids).logits, atol=1e-5)


def test_qwen2_student_keeps_its_layers_attention_types():
    torch.manual_seed(0)
    config = transformers.Qwen2Config(**{**DECODER, "num_hidden_layers": 3}, num_key_value_heads=2,
                                      layer_types=["full_attention", "sliding_attention", "full_attention"], use_sliding_window=True,
                                      sliding_window=4)
    student = P.keep_layers(transformers.Qwen2ForCausalLM(config), [1, 2])
    assert student.config.layer_types == ["sliding_attention", "full_attention"]


@pytest.mark.parametrize("name", ["t5", "bart"])
def test_an_encoder_decoder_refuses_clearly(checkpoints, name):
    model = _load(checkpoints, name)
    with pytest.raises(ValueError, match="blocks in one list"):
        P.keep_layers(model, [0])
    with pytest.raises(ValueError, match=f"does not support the {name} architecture"):
        P.prune_mlp_channels(model, 0.5)
    assert P.sparsity(P.prune(model, "unstructured", 0.5)[0]) == pytest.approx(0.5, abs=0.01)  # unstructured: any model


@pytest.mark.parametrize("name", CAUSAL)
def test_ppos_value_model_starts_from_the_reward_head_on_every_decoder(checkpoints, name, tmp_path):
    # The value model (a token classifier) copies the reward model's (a sequence classifier) head, which each
    # architecture names its own way (`score`, `classifier`).
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from components.core.models import label_head
    from components.rlhf.roles import Value
    from tests.checkpoints import _tokenizer

    torch.manual_seed(0)
    reward = AutoModelForSequenceClassification.from_pretrained(checkpoints[name], num_labels=1)
    reward.save_pretrained(tmp_path)
    _tokenizer(False).save_pretrained(tmp_path)
    value = Value(str(tmp_path), lr=1e-3, grad_clip=1.0)
    assert torch.equal(label_head(value.model).weight, label_head(reward).weight)
    assert isinstance(AutoTokenizer.from_pretrained(tmp_path), transformers.PreTrainedTokenizerBase)
