"""Metrics: hand-worked values from the source document's definitions, agreement with rouge-score
and sacrebleu called directly, and batched multiple-choice scoring against a plain loop."""

import math

import pytest
import sacrebleu
import torch
from rouge_score.rouge_scorer import RougeScorer

from components.core import metrics
from components.core.metrics import (
    accuracy,
    bleu,
    choose,
    exact_match,
    exact_match_rate,
    expected_calibration_error,
    option_logprobs,
    option_probabilities,
    rouge,
    sentence_bleu,
)
from components.core.models import ModelConfig, build_causal_lm
from components.data.config import TokenizerConfig
from components.data.instructions import generate_tasks
from components.data.tokenizer import train_bpe

# --- exact match and accuracy ----------------------------------------------------------------


def test_exact_match_is_the_one_the_instruction_data_uses():
    from components.data import instructions

    assert instructions.exact_match is exact_match
    assert exact_match("19.", "19") and not exact_match("rome", "Rome")


def test_exact_match_rate_and_accuracy():
    # hits: "19."~"19", " a\n"~"a"; misses: case, a different number
    assert exact_match_rate(["19.", "rome", " a\n", "1"], ["19", "Rome", "a", "2"]) == 0.5
    assert accuracy([1, 0, 2, 2], [1, 1, 2, 0]) == 0.5
    assert accuracy([3], [3]) == 1.0 and accuracy([0, 0], [1, 1]) == 0.0


@pytest.mark.parametrize("fn", [exact_match_rate, accuracy, rouge, bleu, expected_calibration_error])
def test_list_metrics_reject_mismatched_and_empty_input(fn):
    a, b = {
        accuracy: ([1, 2], [1]),
        expected_calibration_error: ([0.5, 0.5], [True]),
    }.get(fn, (["x", "y"], ["x"]))
    with pytest.raises(ValueError, match=r"differ in length: 2 vs 1"):
        fn(a, b)
    with pytest.raises(ValueError, match="empty"):
        fn([], [])


# --- ROUGE ------------------------------------------------------------------------------------

REF = "the cat sat on the mat"


def test_rouge_by_hand_from_the_documents_definitions():
    # recall = matches / n-grams in the reference, precision = matches / n-grams in the output.
    # output "the cat on the mat" (5 words) vs reference "the cat sat on the mat" (6 words):
    #   ROUGE-1: matches the x2, cat, on, mat = 5  -> P = 5/5, R = 5/6, F1 = 2PR/(P+R) = 10/11
    #   ROUGE-2: ref bigrams {the cat, cat sat, sat on, on the, the mat} (5),
    #            output bigrams {the cat, cat on, on the, the mat} (4), 3 shared -> P = 3/4, R = 3/5, F1 = 2/3
    #   ROUGE-L: LCS = "the cat on the mat" = 5 -> P = 5/5, R = 5/6, F1 = 10/11
    got = rouge(["the cat on the mat"], [REF])
    want = {
        "rouge1_precision": 1.0, "rouge1_recall": 5 / 6, "rouge1_f1": 10 / 11,
        "rouge2_precision": 3 / 4, "rouge2_recall": 3 / 5, "rouge2_f1": 2 / 3,
        "rougeL_precision": 1.0, "rougeL_recall": 5 / 6, "rougeL_f1": 10 / 11,
    }
    assert got == pytest.approx(want)
    assert list(got) == list(want)  # exactly these 9 keys


def test_rouge_word_order_counts_only_for_bigrams_and_lcs():
    # "on the mat the cat sat": the same 6 words -> ROUGE-1 = 1.
    #   bigrams {on the, the mat, mat the, the cat, cat sat}: 4 of 5 in the reference -> 0.8
    #   LCS with "the cat sat on the mat" is 3 ("the cat sat" or "on the mat") -> 3/6 = 0.5
    got = rouge(["on the mat the cat sat"], [REF])
    assert got["rouge1_f1"] == pytest.approx(1.0)
    assert got["rouge2_precision"] == got["rouge2_recall"] == pytest.approx(0.8)
    assert got["rougeL_f1"] == pytest.approx(0.5)


def test_rouge_averages_pairs_and_ignores_case_and_punctuation():
    both = rouge(["the cat on the mat", "on the mat the cat sat"], [REF, REF])
    assert both["rouge2_recall"] == pytest.approx((3 / 5 + 0.8) / 2)
    assert rouge(["The CAT, sat; on the mat!"], [REF])["rougeL_f1"] == pytest.approx(1.0)
    assert rouge(["dog"], [REF])["rouge1_f1"] == 0.0


def test_rouge_agrees_with_rouge_score_called_directly():
    preds = ["a quick brown dog jumps", "hello world", "one two three four", "x"]
    refs = ["the quick brown fox jumps over", "hello there world", "four three two one", "x y"]
    scorer = RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    direct = [scorer.score(r, p) for p, r in zip(preds, refs)]
    got = rouge(preds, refs)
    for t in ("rouge1", "rouge2", "rougeL"):
        assert got[f"{t}_precision"] == pytest.approx(sum(d[t].precision for d in direct) / 4)
        assert got[f"{t}_recall"] == pytest.approx(sum(d[t].recall for d in direct) / 4)
        assert got[f"{t}_f1"] == pytest.approx(sum(d[t].fmeasure for d in direct) / 4)
    assert all(0.0 <= v <= 1.0 for v in got.values())


# --- BLEU -------------------------------------------------------------------------------------

BLEU_REF = "the quick brown fox jumps high"


def test_bleu_of_identical_and_disjoint_text():
    assert bleu([BLEU_REF, "a b c d"], [BLEU_REF, "a b c d"]) == pytest.approx(100.0)
    assert sentence_bleu(BLEU_REF, BLEU_REF) == pytest.approx(100.0)
    assert bleu(["red green blue yellow"], [BLEU_REF]) == 0.0
    assert sentence_bleu("red green blue yellow", BLEU_REF) == 0.0


def test_bleu_by_hand_geometric_mean_of_precisions_times_brevity_penalty():
    # The document: "Avg(precision across n-gram sizes)". Standard BLEU takes the geometric mean.
    # "... jumps low" vs "... jumps high", both 6 words (brevity penalty 1):
    #   p1 = 5/6, p2 = 4/5, p3 = 3/4, p4 = 2/3 -> product 1/3 -> BLEU = 100 * (1/3)**(1/4) = 75.98
    want = 100 * (5 / 6 * 4 / 5 * 3 / 4 * 2 / 3) ** 0.25
    assert want == pytest.approx(75.98, abs=0.01)
    pred = "the quick brown fox jumps low"
    assert sentence_bleu(pred, BLEU_REF) == pytest.approx(want)
    assert bleu([pred], [BLEU_REF]) == pytest.approx(want)
    # A 5-word prefix: every precision is 1, brevity penalty exp(1 - 6/5) -> 81.87
    assert bleu(["the quick brown fox jumps"], [BLEU_REF]) == pytest.approx(100 * math.exp(1 - 6 / 5))


def test_bleu_agrees_with_sacrebleu_and_is_corpus_level():
    preds = ["the cat is on the mat", "there is a dog in the park today", "hello"]
    refs = ["the cat sat on the mat", "a dog is in the park", "hello world"]
    assert bleu(preds, refs) == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score)
    for p, r in zip(preds, refs):
        assert sentence_bleu(p, r) == pytest.approx(sacrebleu.sentence_bleu(p, [r]).score)
    # n-gram counts are pooled over the corpus, so corpus BLEU is not the mean sentence BLEU
    assert bleu(preds, refs) != pytest.approx(sum(map(sentence_bleu, preds, refs)) / 3)


# --- calibration ------------------------------------------------------------------------------


def test_expected_calibration_error_by_hand():
    # 10 bins. [0.9, 0.9] -> bin 9: acc 1/2, conf 0.9, weight 2/5 -> 0.4 * 0.4 = 0.16
    #          [0.6, 0.6] -> bin 6: acc 1,   conf 0.6, weight 2/5 -> 0.4 * 0.4 = 0.16
    #          [0.2]      -> bin 2: acc 0,   conf 0.2, weight 1/5 -> 0.2 * 0.2 = 0.04      ECE = 0.36
    conf, correct = [0.9, 0.9, 0.6, 0.6, 0.2], [True, False, True, True, False]
    assert expected_calibration_error(conf, correct) == pytest.approx(0.36)
    # One bin: |accuracy - mean confidence| = |3/5 - 3.2/5| = 0.04
    assert expected_calibration_error(conf, correct, n_bins=1) == pytest.approx(0.04)


def test_confidence_one_falls_in_the_last_bin():
    # 1.0 (wrong) and 0.9 (right) share bin 9 = [0.9, 1.0]: acc 1/2, conf 0.95 -> 0.45.
    # Were 1.0 in a bin of its own: (|0 - 1.0| + |1 - 0.9|) / 2 = 0.55.
    assert expected_calibration_error([1.0, 0.9], [False, True]) == pytest.approx(0.45)
    assert expected_calibration_error([0.0, 1.0], [False, True]) == 0.0
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        expected_calibration_error([1.2], [True])
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error([0.5], [True], n_bins=0)


# --- multiple choice --------------------------------------------------------------------------


def test_option_probabilities_is_a_stable_softmax():
    assert option_probabilities([math.log(0.2), math.log(0.3), math.log(0.5)]) == pytest.approx([0.2, 0.3, 0.5])
    assert option_probabilities([-1000.0, -1000.0 - math.log(3)]) == pytest.approx([0.75, 0.25])
    with pytest.raises(ValueError):
        option_probabilities([])


def test_choose_with_and_without_length_normalisation():
    assert choose([-4.0, -6.0]) == 0
    assert choose([-4.0, -6.0], option_lengths=[1, 3]) == 1  # -4/1 < -6/3
    assert choose([-2.0, -1.0, -1.0]) == 1  # ties go to the first
    with pytest.raises(ValueError, match="differ in length"):
        choose([-1.0, -2.0], [1])
    with pytest.raises(ValueError, match="positive"):
        choose([-1.0], [0])
    with pytest.raises(ValueError):
        choose([])


@pytest.fixture(scope="module")
def tokenizer():
    docs = [e.prompt + e.response for e in generate_tasks(10, seed=1)]
    return train_bpe(docs, TokenizerConfig(vocab_size=300))


@pytest.fixture(scope="module")
def model(tokenizer):
    cfg = ModelConfig(n_layer=1, n_embd=16, n_head=2, n_positions=32)
    return build_causal_lm(cfg, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, seed=0)


def unbatched(model, tokenizer, context, option):
    """One sequence at a time, no padding: the reference the batched version must match."""
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    cont = tokenizer(context + option, add_special_tokens=False)["input_ids"][len(ctx):]
    ids = (ctx + cont)[-(model.config.n_positions + 1):][:-1]  # keep the newest tokens
    with torch.no_grad():
        logprobs = model(torch.tensor([ids])).logits[0].log_softmax(-1)
    return sum(logprobs[len(ids) - len(cont) + k, t].item() for k, t in enumerate(cont))


def test_batched_option_logprobs_equal_a_plain_loop(tokenizer, model):
    contexts = [
        "### Instruction:\nAdd 2 and 3.\n\n### Response:\n",  # the trailing "\n" is context, not scored
        "Reverse the words: cat dog",
        # longer than the 32-position model: the oldest context tokens are dropped
        "### Instruction:\nSort the words: apple bird boat\n\n### Instruction:\nCount the words: cat cat\n",
    ]
    options = [["5", "6", "15"], [" dog cat", " cat dog", " dog"], ["2", "3 words", "apple"]]
    assert len(tokenizer(contexts[2], add_special_tokens=False)["input_ids"]) > 32
    model.train()
    got = option_logprobs(model, tokenizer, contexts, options, batch_size=4)  # batches of mixed lengths
    assert model.training  # the caller's mode is restored
    model.eval()
    want = [[unbatched(model, tokenizer, c, o) for o in opts] for c, opts in zip(contexts, options)]
    assert [len(r) for r in got] == [3, 3, 3]
    for g, w in zip(got, want):
        assert g == pytest.approx(w, abs=1e-4)
        assert all(x < 0 for x in g)
    one_by_one = option_logprobs(model, tokenizer, contexts, options, batch_size=1)
    assert sum(one_by_one, []) == pytest.approx(sum(got, []), abs=1e-4)


def test_option_logprobs_and_the_documents_perplexity_agree(tokenizer, model):
    # PPL(X) = exp(-1/t sum_i log p(x_i | x_<i)). With no context the option is scored from bos,
    # which is exactly perplexity over [bos] + tokens.
    text = "Add 2 and 3."
    tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
    [[logprob]] = option_logprobs(model, tokenizer, [""], [[text]])
    stream = torch.tensor([tokenizer.bos_token_id] + tokens)
    assert metrics.perplexity(model, stream, context=32) == pytest.approx(math.exp(-logprob / len(tokens)), rel=1e-5)


def test_option_logprobs_rejects_bad_input(tokenizer, model):
    with pytest.raises(ValueError, match="differ in length"):
        option_logprobs(model, tokenizer, ["a", "b"], [["x"]])
    with pytest.raises(ValueError, match="empty"):
        option_logprobs(model, tokenizer, [], [])
    with pytest.raises(ValueError, match="no options"):
        option_logprobs(model, tokenizer, ["a"], [[]])
    with pytest.raises(ValueError, match="no tokens"):
        option_logprobs(model, tokenizer, ["a"], [[""]])
    with pytest.raises(ValueError, match="more than the model's 32"):
        option_logprobs(model, tokenizer, ["a"], [["cat " * 20]])
