"""The three model families: built from config, told apart, and checked by the spec validator."""

import textwrap

import pytest
import torch

from components.core.models import ModelConfig, build_model, count_parameters, family_of, sentinel_ids, transformer_blocks
from components.core.objectives import objective, token_accuracy
from components.data.config import TokenizerConfig
from components.data.tokenizer import train_bpe
from workflows.spec import SpecError, load_spec

DOCS = [f"the cat {i} sat on the mat and the dog ran to the red house number {i * 7}." for i in range(300)]


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe(DOCS, TokenizerConfig(vocab_size=400, mask_token="<mask>", sentinel_tokens=8))


@pytest.mark.parametrize("architecture,family,blocks", [("gpt2", "causal", 2), ("llama", "causal", 2), ("bert", "masked", 2), ("t5", "seq2seq", 4)])
def test_each_architecture_builds_its_family_with_the_tokenizers_ids(tokenizer, architecture, family, blocks):
    cfg = ModelConfig(architecture=architecture, n_layer=2, n_embd=32, n_head=2, n_positions=64)
    model = build_model(cfg, tokenizer, seed=3)
    assert cfg.family == family_of(model) == family
    assert len(transformer_blocks(model)) == blocks  # t5: encoder and decoder blocks
    assert model.config.vocab_size == len(tokenizer) and model.config.pad_token_id == tokenizer.pad_token_id
    again = build_model(cfg, tokenizer, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert count_parameters(model) > 10_000


def test_each_family_trains_on_its_own_objective(tokenizer):
    # A few steps on one batch: the objective's loss falls and its hidden-token accuracy is measurable.
    stream = tokenizer(" ".join(DOCS[:20]))["input_ids"]
    blocks = torch.tensor(stream[: 8 * 24]).reshape(8, 24)
    for architecture in ("gpt2", "bert", "t5"):
        cfg = ModelConfig(architecture=architecture, n_layer=2, n_embd=32, n_head=2, n_positions=64)
        model = build_model(cfg, tokenizer)
        make = objective(cfg.family, tokenizer, sentinel_ids(tokenizer))
        batch = make(blocks, torch.Generator().manual_seed(0))
        optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
        first = model(**batch).loss.item()
        for _ in range(30):
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        assert loss.item() < 0.7 * first, architecture
        correct, scored = token_accuracy(model.eval(), batch)
        assert scored > 0 and correct / scored > 0.2, architecture


def test_a_family_without_its_special_tokens_is_refused():
    plain = train_bpe(DOCS, TokenizerConfig(vocab_size=400))
    with pytest.raises(ValueError, match="mask token"):
        build_model(ModelConfig(architecture="bert"), plain)
    with pytest.raises(ValueError, match="sentinel"):
        build_model(ModelConfig(architecture="t5"), plain)
    assert sentinel_ids(plain) == []


def test_the_causal_tokenizer_is_unchanged_by_the_new_options():
    # The defaults add no mask or sentinel token: the causal workflows keep their ids.
    plain, opted = train_bpe(DOCS, TokenizerConfig(vocab_size=400)), train_bpe(DOCS, TokenizerConfig(vocab_size=400, mask_token="<mask>"))
    assert plain.mask_token is None and plain.all_special_ids == [0, 2, 1]
    assert opted.mask_token_id == 3 and opted("the <mask>")["input_ids"][-1] == 3


def _spec(tmp_path, body: str):
    path = tmp_path / "spec.yaml"
    path.write_text(textwrap.dedent(body))
    return path


def test_the_validator_refuses_a_phase_that_does_not_apply_to_the_family(tmp_path):
    path = _spec(tmp_path, """\
        name: t
        steps:
          corpus: {uses: data}
          tokenizer: {uses: tokenizer, needs: [corpus], with: {mask_token: "<mask>"}}
          pretrain: {uses: pretrain, needs: [corpus, tokenizer], with: {model: {architecture: bert}}}
          preferences: {uses: preferences}
          dpo: {uses: dpo, needs: [pretrain, preferences]}
        """)
    with pytest.raises(SpecError, match=r"spec.yaml:7: step 'dpo' \(dpo\) does not apply to a masked \(encoder\) model \(from 'pretrain', architecture bert\)"):
        load_spec(path)


def test_the_validator_asks_for_the_tokens_a_family_needs(tmp_path):
    path = _spec(tmp_path, """\
        name: t
        steps:
          corpus: {uses: data}
          tokenizer: {uses: tokenizer, needs: [corpus]}
          pretrain: {uses: pretrain, needs: [corpus, tokenizer], with: {model: {architecture: t5}}}
        """)
    with pytest.raises(SpecError, match=r"spec.yaml:4: step 'tokenizer': 'pretrain' pretrains a t5 model, which needs span sentinels"):
        load_spec(path)
    assert load_spec(path, ["tokenizer.sentinel_tokens=32"]).configs["pretrain"].model.family == "seq2seq"
    with pytest.raises(SpecError, match="needs a mask token"):
        load_spec(path, ["pretrain.model.architecture=bert"])


def test_the_validator_refuses_rag_on_a_model_that_is_not_causal(tmp_path):
    path = _spec(tmp_path, """\
        name: t
        steps:
          corpus: {uses: data}
          tokenizer: {uses: tokenizer, needs: [corpus], with: {sentinel_tokens: 32}}
          pretrain: {uses: pretrain, needs: [corpus, tokenizer], with: {model: {architecture: t5}}}
          instructions: {uses: instructions}
          evaluate: {uses: evaluate, needs: [pretrain, instructions]}
          gate: {uses: gate, needs: [evaluate]}
          deploy: {uses: deploy, needs: [gate], with: {rag: {}}}
        """)
    with pytest.raises(SpecError, match=r"spec.yaml:9: step 'deploy', field 'rag': the RAG route answers with a causal LM"):
        load_spec(path)
    assert load_spec(path, ["deploy.rag=null"]).configs["deploy"].rag is None


def test_the_validator_refuses_classify_on_a_causal_model_and_finetune_on_bert(tmp_path):
    gpt2 = _spec(tmp_path, """\
        name: t
        steps:
          corpus: {uses: data}
          tokenizer: {uses: tokenizer, needs: [corpus]}
          pretrain: {uses: pretrain, needs: [corpus, tokenizer]}
          sst2: {uses: classify, needs: [pretrain], with: {task: sst2}}
        """)
    with pytest.raises(SpecError, match=r"spec.yaml:6: step 'sst2' \(classify\) does not apply to a causal"):
        load_spec(gpt2)
    bert = _spec(tmp_path, """\
        name: t
        steps:
          corpus: {uses: data}
          tokenizer: {uses: tokenizer, needs: [corpus], with: {mask_token: "<mask>"}}
          pretrain: {uses: pretrain, needs: [corpus, tokenizer], with: {model: {architecture: bert}}}
          instructions: {uses: instructions}
          finetune: {uses: finetune, needs: [pretrain, instructions, corpus]}
          sst2: {uses: classify, needs: [pretrain], with: {task: sst2}}
        """)
    with pytest.raises(SpecError, match=r"spec.yaml:7: step 'finetune' \(finetune\) does not apply to a masked"):
        load_spec(bert)


def test_the_validator_names_a_bad_classify_field(tmp_path):
    path = _spec(tmp_path, """\
        name: t
        steps:
          corpus: {uses: data}
          tokenizer: {uses: tokenizer, needs: [corpus], with: {mask_token: "<mask>"}}
          pretrain: {uses: pretrain, needs: [corpus, tokenizer], with: {model: {architecture: bert}}}
          cola: {uses: classify, needs: [pretrain], with: {task: cola}}
        """)
    with pytest.raises(SpecError, match=r"spec.yaml:6: step 'cola', field 'task'"):
        load_spec(path)


ENCODER = """\
    name: t
    steps:
      corpus: {uses: data}
      tokenizer: {uses: tokenizer, needs: [corpus], with: {mask_token: "<mask>"}}
      pretrain: {uses: pretrain, needs: [corpus, tokenizer], with: {model: {architecture: bert}}}
      ner: {uses: classify, needs: [pretrain], with: {task: ner}}
      mnli: {uses: classify, needs: [pretrain], with: {task: mnli}}
      distill: {uses: distill, needs: [mnli]}
      prune: {uses: prune, needs: [distill]}
    """


def test_the_validator_refuses_evaluate_on_a_token_classifier_or_a_bare_bert(tmp_path):
    ner = _spec(tmp_path, ENCODER + "  evaluate: {uses: evaluate, needs: [ner]}\n")
    with pytest.raises(SpecError, match=r"spec.yaml:10: step 'evaluate', field 'needs': 'ner' is a token classifier \(task ner\)"):
        load_spec(ner)
    bare = _spec(tmp_path, ENCODER + "  evaluate: {uses: evaluate, needs: [pretrain]}\n")
    with pytest.raises(SpecError, match=r"spec.yaml:10: step 'evaluate', field 'needs': evaluate scores an encoder only as an "
                                        r"sst2 or mnli sequence classifier, and 'pretrain' is a bare pretrained bert"):
        load_spec(bare)
    # A compressed mnli classifier is still one (through prune and distill), scored where the suite is asked for.
    pruned = _spec(tmp_path, ENCODER + "  evaluate: {uses: evaluate, needs: [prune], with: {benchmarks: [sst2]}}\n")
    with pytest.raises(SpecError, match=r"spec.yaml:10: step 'evaluate', field 'benchmarks': its model is an mnli classifier "
                                        r"\(from 'mnli'\)"):
        load_spec(pruned)
    assert load_spec(pruned, ["evaluate.benchmarks=[mnli]"]).configs["evaluate"].benchmarks == ["mnli"]
    with pytest.raises(SpecError, match=r"step 'evaluate', field 'lm_eval_tasks': lm-eval scores a language model's text, "
                                        r"and 'mnli' is an mnli classifier"):
        load_spec(pruned, ["evaluate.benchmarks=[mnli]", "evaluate.lm_eval_tasks=[lifecycle_mnli]"])


def test_the_validator_refuses_compressing_a_bare_bert_and_lets_classifiers_through(tmp_path):
    for phase in ("distill", "prune", "quantize"):
        path = _spec(tmp_path, ENCODER + f"  small: {{uses: {phase}, needs: [pretrain]}}\n")
        with pytest.raises(SpecError, match=rf"spec.yaml:10: step 'small', field 'needs': {phase} compresses a classifier, "
                                            r"and 'pretrain' is a bare pretrained bert \(masked LM\): put a classify step between"):
            load_spec(path)
    assert load_spec(_spec(tmp_path, ENCODER)).order[-2:] == ["distill", "prune"]
    quantized = _spec(tmp_path, ENCODER + "  int8: {uses: quantize, needs: [mnli]}\n      score: {uses: evaluate, needs: [int8], with: {benchmarks: [mnli]}}\n")
    assert load_spec(quantized).order.index("int8") < load_spec(quantized).order.index("score")


def test_the_validator_asks_a_causal_distill_prune_or_quantize_for_its_instructions(tmp_path):
    for phase in ("distill", "prune", "quantize"):
        path = _spec(tmp_path, f"""\
            name: t
            steps:
              corpus: {{uses: data}}
              tokenizer: {{uses: tokenizer, needs: [corpus]}}
              pretrain: {{uses: pretrain, needs: [corpus, tokenizer]}}
              small: {{uses: {phase}, needs: [pretrain]}}
            """)
        with pytest.raises(SpecError, match=rf"spec.yaml:6: step 'small', field 'needs': {phase} on a causal model trains .* "
                                            "add an instructions step"):
            load_spec(path)
