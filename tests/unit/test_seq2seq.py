"""The encoder-decoder (T5) family: span corruption, the seq-to-seq head, instruction pairs and generation."""

import pytest
import torch

from components.core.models import ModelConfig, build_model, sentinel_ids
from components.core.objectives import noise_mask, span_corruption
from components.core.peft_methods import LoraSettings, PromptTuningSettings, SelectiveSettings, apply_method
from components.core.sft import IGNORE_INDEX, encode_pair, encode_seq2seq_pair, greedy_answers, pad_batch
from components.data.config import TokenizerConfig
from components.data.instructions import FAMILIES, generate_tasks
from components.data.tokenizer import train_bpe
from components.finetune.step import encode_split
from components.scoring import text_scores_by_family

DOCS = [f"the cat {i} sat on the mat and the dog ran to the red house number {i * 7}." for i in range(300)]


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe(DOCS, TokenizerConfig(vocab_size=400, sentinel_tokens=16))


def _t5(tokenizer, seed=0):
    return build_model(ModelConfig(architecture="t5", n_layer=2, n_embd=32, n_head=2, n_positions=64), tokenizer, seed)


# --- span corruption ----------------------------------------------------------------------


@pytest.mark.parametrize("length,density,mean_span", [(100, 0.15, 3.0), (128, 0.3, 2.0), (40, 0.15, 5.0)])
def test_noise_mask_has_the_asked_density_and_span_count(length, density, mean_span):
    for seed in range(20):
        mask = noise_mask(length, torch.Generator().manual_seed(seed), density, mean_span)
        n_noise = round(length * density)
        starts = mask & ~torch.cat([torch.tensor([False]), mask[:-1]])
        assert mask.shape == (length,) and int(mask.sum()) == n_noise
        assert int(starts.sum()) == max(1, round(n_noise / mean_span))
        assert not mask[0]  # kept tokens come first


def _restore(inputs: list[int], targets: list[int], sentinels: list[int], eos: int) -> list[int]:
    """Put each sentinel's span from the target back in place of the sentinel in the input."""
    spans, current = {}, None
    for t in targets[:-1]:
        if t in sentinels:
            current = t
            spans[t] = []
        else:
            spans[current].append(t)
    assert inputs[-1] == eos and targets[-1] == eos
    out = []
    for t in inputs[:-1]:
        out.extend(spans[t] if t in sentinels else [t])
    return out


def test_span_corruption_input_and_target_rebuild_the_block(tokenizer):
    sentinels, eos = sentinel_ids(tokenizer), tokenizer.eos_token_id
    blocks = torch.tensor(tokenizer(" ".join(DOCS[:30]))["input_ids"][: 4 * 50]).reshape(4, 50)
    batch = span_corruption(blocks, sentinels, eos, torch.Generator().manual_seed(1))
    inputs, labels = batch["input_ids"], batch["labels"]
    assert inputs.shape[0] == labels.shape[0] == 4  # every row the same lengths: no padding needed
    n_noise, n_spans = round(50 * 0.15), max(1, round(round(50 * 0.15) / 3))
    assert inputs.shape[1] == 50 - n_noise + n_spans + 1 and labels.shape[1] == n_noise + n_spans + 1
    for row, i, t in zip(blocks.tolist(), inputs.tolist(), labels.tolist()):
        used = [x for x in i if x in sentinels]
        assert used == sentinels[: len(used)] == [x for x in t if x in sentinels]  # in order, the same in both
        assert _restore(i, t, sentinels, eos) == row


def test_span_corruption_refuses_too_few_sentinels(tokenizer):
    blocks = torch.arange(10, 10 + 2 * 100).reshape(2, 100)
    with pytest.raises(ValueError, match="5 spans need as many sentinel tokens; the tokenizer has 2"):
        span_corruption(blocks, sentinel_ids(tokenizer)[:2], tokenizer.eos_token_id, torch.Generator().manual_seed(0))


# --- the seq-to-seq head and instruction pairs ------------------------------------------------


def test_seq2seq_pairs_put_the_prompt_in_the_encoder_and_only_the_response_in_the_labels(tokenizer):
    ids, labels = encode_seq2seq_pair(tokenizer, "### Instruction:\nsay cat\n\n### Response:\n", "the cat")
    response = tokenizer("the cat", add_special_tokens=False)["input_ids"]
    assert labels == response + [tokenizer.eos_token_id] and IGNORE_INDEX not in labels
    assert ids[-1] == tokenizer.eos_token_id and len(ids) > len(labels)
    batch = pad_batch([(ids, labels), (ids[:3], labels[:1])], tokenizer.pad_token_id)
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (2, len(ids))
    assert batch["labels"].shape == (2, len(labels)) and batch["labels"][1, 1:].eq(IGNORE_INDEX).all()
    # Causal pairs keep one width for inputs and labels, as before.
    causal = pad_batch([encode_pair(tokenizer, "a b", "c"), encode_pair(tokenizer, "a", "c")], tokenizer.pad_token_id)
    assert causal["labels"].shape == causal["input_ids"].shape


def test_encode_split_holds_each_side_to_the_context(tmp_path, tokenizer):
    examples = generate_tasks(5, 0, ["translate"])
    pairs = encode_split(tmp_path / "train.jsonl", examples, tokenizer, 64, seq2seq=True)
    assert all(lab[-1] == tokenizer.eos_token_id and len(lab) < len(ids) for ids, lab in pairs)
    with pytest.raises(ValueError, match=r"train.jsonl:1: prompt \(\d+ tokens\) or response"):
        encode_split(tmp_path / "train.jsonl", examples, tokenizer, 8, seq2seq=True)


def test_the_t5_head_learns_a_mapping_and_generates_the_answer_without_the_prompt(tokenizer):
    torch.manual_seed(0)
    model = _t5(tokenizer)
    prompts = [f"copy {n}" for n in ("cat", "dog", "mat", "red")]
    answers = ["the cat", "the dog", "the mat", "the red"]
    batch = pad_batch([encode_seq2seq_pair(tokenizer, p, a) for p, a in zip(prompts, answers)], tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    first = model(**batch).loss.item()
    for _ in range(60):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert loss.item() < 0.1 * first
    generated = greedy_answers(model, tokenizer, prompts, max_new_tokens=8, batch_size=3)  # batches of mixed lengths
    assert [g.strip() for g in generated] == answers  # the answer alone: no echo of the prompt


def test_lora_on_t5_targets_its_projections_and_trains_only_the_adapter(tokenizer):
    model = _t5(tokenizer)
    tuned = apply_method(model, "lora", LoraSettings(), PromptTuningSettings(), SelectiveSettings())
    names = [n for n, p in tuned.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert {n.split(".")[-4] for n in names} == {"q", "v"}  # the default t5 targets
    assert any(".decoder." in n for n in names) and any(".encoder." in n for n in names)
    every = LoraSettings(target_modules=["q", "k", "v", "o", "wi", "wo"])
    model = apply_method(_t5(tokenizer), "lora", every, PromptTuningSettings(), SelectiveSettings())
    names = {n.split(".")[-4] for n, p in model.named_parameters() if p.requires_grad}
    assert names == {"q", "k", "v", "o", "wi", "wo"}
    with pytest.raises(ValueError, match="no module named 'c_attn' in this t5 model"):
        apply_method(_t5(tokenizer), "lora", LoraSettings(target_modules=["c_attn"]), PromptTuningSettings(), SelectiveSettings())


def test_text_scores_give_exact_match_bleu_and_rouge_per_family(tokenizer):
    model = _t5(tokenizer)
    examples = generate_tasks(4, 0, ["translate", "summarize"])
    scores = text_scores_by_family(model, tokenizer, examples, max_new_tokens=4)
    assert set(scores) == {"exact_match", "bleu", "sentence_bleu", "rougeL"}
    for name in scores:
        assert set(scores[name]) == {"summarize", "translate", "all"}
    assert scores["exact_match"]["all"] == 0.0  # an untrained model


def test_summarize_is_an_opt_in_family_that_needs_every_sentence():
    assert "summarize" not in FAMILIES  # the default family list (and the causal workflows' data) is unchanged
    examples = generate_tasks(50, 0, ["summarize"])
    for e in examples:
        facts = e.prompt.split("### Input:\n")[1].split("\n")[0]
        noun = facts.split()[1]
        adjective = next(s.split()[-1].rstrip(".") for s in facts.split(". ") if " is " in s)
        verbs = [s.split()[2].rstrip(".") for s in facts.rstrip(".").split(". ") if " is " not in s]
        assert e.response == f"The {adjective} {noun} {verbs[0]} and {verbs[1]}."


@pytest.mark.parametrize("method", ["int8_dynamic", "int8_weight_only"])
def test_a_quantized_t5_round_trips_through_safetensors_and_answers_alike(tokenizer, method, tmp_path):
    import copy

    from components.core.models import load_trained
    from components.core.quantize import quantize, save_quantized

    source = _t5(tokenizer).eval()
    save_quantized(quantize(copy.deepcopy(source), method), tmp_path, method)  # T5: bias-free projections, three tied embeddings
    tokenizer.save_pretrained(tmp_path)
    loaded = load_trained(tmp_path)
    assert type(loaded).__name__ == "T5ForConditionalGeneration"
    ids, labels = (torch.tensor([x]) for x in encode_seq2seq_pair(tokenizer, "the cat sat on the mat", "the dog"))
    a, b = source(input_ids=ids, labels=labels).logits, loaded(input_ids=ids, labels=labels).logits
    assert (a - b).abs().max() < 0.1 * a.abs().max()
    assert loaded.get_input_embeddings().weight is loaded.encoder.embed_tokens.weight is loaded.decoder.embed_tokens.weight


def test_the_shipped_spec_validates_and_a_causal_only_phase_on_t5_is_refused(tmp_path):
    import yaml

    from tests.conftest import ROOT
    from workflows.spec import SpecError, load_spec

    shipped = ROOT / "workflows" / "seq2seq-tiny.yaml"
    assert shipped.read_text().startswith("# lifecycle run workflows/seq2seq-tiny.yaml\n")
    resolved = load_spec(shipped)
    assert resolved.configs["pretrain"].model.family == "seq2seq" and resolved.configs["finetune"].method == "full"
    spec = yaml.safe_load(shipped.read_text())
    spec["steps"]["preferences"] = {"uses": "preferences", "needs": ["instructions"]}
    spec["steps"]["dpo"] = {"uses": "dpo", "needs": ["finetune", "preferences"]}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    with pytest.raises(SpecError, match=r"step 'dpo' \(dpo\) does not apply to a seq2seq"):
        load_spec(path)
