"""workflows/seq2seq-tiny.yaml end to end through the `lifecycle` command, on the session's Ray."""

import pytest

from tests.conftest import ROOT, lifecycle
from tests.e2e.test_shipped_specs import step_run

pytestmark = pytest.mark.full  # `./scripts/test.sh --full` (CI runs the main path only: scripts/test.sh)

FAMILIES = ("summarize", "translate")


def test_seq2seq_tiny_spec_pretrains_finetunes_evaluates_and_quantizes_a_t5_model(ray_address, tmp_path):
    out = lifecycle("run", str(ROOT / "workflows" / "seq2seq-tiny.yaml"), "--workdir", str(tmp_path), "--address", ray_address,
                    "--no-wait", timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr
    pretrain, ft = step_run(tmp_path, "pretrain").data.metrics, step_run(tmp_path, "finetune").data.metrics
    evals = {s: step_run(tmp_path, f"eval-{s}").data.metrics for s in ("pretrain", "finetune", "quantize")}
    print(f"seq2seq pretrain: span accuracy {pretrain['span_accuracy_initial']:.1%} -> {pretrain['span_accuracy_final']:.1%}")
    for family in FAMILIES:
        print(f"seq2seq finetune {family}: sentence BLEU {ft[f'sentence_bleu_before_{family}']:.1f} -> "
              f"{ft[f'sentence_bleu_after_{family}']:.1f}, corpus BLEU {ft[f'bleu_before_{family}']:.1f} -> "
              f"{ft[f'bleu_after_{family}']:.1f}, ROUGE-L {ft[f'rougeL_before_{family}']:.2f} -> {ft[f'rougeL_after_{family}']:.2f}, "
              f"exact match {ft[f'exact_match_before_{family}']:.1%} -> {ft[f'exact_match_after_{family}']:.1%}")
    for step, scores in evals.items():
        print(f"seq2seq eval-{step}: exact match {scores['exact_match']:.1%}, BLEU {scores['bleu']:.1f}, ROUGE-L {scores['rougeL_f1']:.2f}")

    # Span corruption: the hidden spans are recovered far more often than by the untrained model.
    assert pretrain["span_accuracy_final"] > pretrain["span_accuracy_initial"] + 0.2

    # Seq-to-seq fine-tuning: every family's BLEU and ROUGE-L well above the pretrained-only model's. Sentence
    # BLEU, since the 2-3 word translations have no 4-gram and a corpus BLEU of 0 even when right.
    assert sorted(k.removeprefix("rougeL_after_") for k in ft if k.startswith("rougeL_after_")) == list(FAMILIES)
    for family in FAMILIES:
        assert ft[f"sentence_bleu_after_{family}"] > ft[f"sentence_bleu_before_{family}"] + 10
        assert ft[f"rougeL_after_{family}"] > ft[f"rougeL_before_{family}"] + 0.1
    assert "corpus_ppl_after" not in ft  # the forgetting check is causal-only

    # The evaluate phase scores the models by generation alone (no perplexity for a t5 model): the fine-tuned
    # one far above the pretrained one, and its int8 copy close to it.
    before, after, quantized = evals.values()
    assert "perplexity" not in after and "response_nll" not in after
    assert after["rougeL_f1"] > before["rougeL_f1"] + 0.2 and after["bleu"] > before["bleu"] + 10
    assert quantized["rougeL_f1"] > after["rougeL_f1"] - 0.05
