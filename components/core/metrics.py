"""Evaluation metrics as the source document defines them, over plain Python lists.

- Exact match: equality after light normalisation (whitespace, trailing punctuation).
- Accuracy: the fraction of predicted labels equal to the true ones.
- ROUGE-1/2 (n-gram overlap) and ROUGE-L (longest common subsequence), from `rouge-score`:
      recall = matches / n-grams in the reference,  precision = matches / n-grams in the output,
  with LCS(gen, ref) in place of the match count for ROUGE-L.
- BLEU, from `sacrebleu`. The document sketches it as "the average of the precisions across
  n-gram sizes"; the standard definition used here is the geometric mean of the clipped
  1..4-gram precisions times a brevity penalty, on a 0..100 scale.
- Perplexity, exp(mean token NLL): `components.core.perplexity`, re-exported here.
- Calibration (HELM lists it beside accuracy): expected calibration error.
- Multiple choice as lm-evaluation-harness scores it: the log-probability of each option's
  tokens given the context (`option_logprobs`), then `choose` and `option_probabilities`.

Every list-taking metric raises ValueError on empty input or mismatched lengths rather than
returning a number that would quietly mean nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from components.core.exact import exact_match  # noqa: F401  (one import site for all metrics)
from components.core.models import context_length
from components.core.perplexity import perplexity  # noqa: F401  (one import site for all metrics)

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def _check_pairs(a: Sequence, b: Sequence, a_name: str, b_name: str) -> None:
    if len(a) != len(b):
        raise ValueError(f"{a_name} and {b_name} differ in length: {len(a)} vs {len(b)}")
    if not a:
        raise ValueError(f"{a_name} and {b_name} are empty; a metric over no examples is undefined")


# --- exact match and accuracy ----------------------------------------------------------


def exact_match_rate(predictions: list[str], references: list[str]) -> float:
    """Fraction in [0, 1] of pairs for which `exact_match` holds."""
    _check_pairs(predictions, references, "predictions", "references")
    return sum(map(exact_match, predictions, references)) / len(predictions)


def accuracy(predicted: list[int], labels: list[int]) -> float:
    """Fraction in [0, 1] of positions where predicted[i] == labels[i]."""
    _check_pairs(predicted, labels, "predicted", "labels")
    return sum(p == y for p, y in zip(predicted, labels)) / len(labels)


# --- ROUGE and BLEU -----------------------------------------------------------------------


def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean ROUGE-1, ROUGE-2 and ROUGE-L precision, recall and F1 over the pairs, each in [0, 1].

    Keys: rouge1_precision, rouge1_recall, rouge1_f1, then the same for rouge2 and rougeL.
    rouge-score's tokenizer lowercases and turns every character outside [a-z0-9] into a
    space, so punctuation and case never count, and text in a non-Latin script has no
    tokens at all (every score 0). No stemming. ROUGE-L here is sentence-level LCS over the
    whole text ("rougeL", not the newline-split "rougeLsum").
    """
    _check_pairs(predictions, references, "predictions", "references")
    from rouge_score.rouge_scorer import RougeScorer  # imports nltk (~2 s): only when used

    scorer = RougeScorer(list(ROUGE_TYPES), use_stemmer=False)
    totals = {f"{t}_{part}": 0.0 for t in ROUGE_TYPES for part in ("precision", "recall", "f1")}
    for prediction, reference in zip(predictions, references):
        scores = scorer.score(reference, prediction)  # target first: recall is over the reference
        for t in ROUGE_TYPES:
            totals[f"{t}_precision"] += scores[t].precision
            totals[f"{t}_recall"] += scores[t].recall
            totals[f"{t}_f1"] += scores[t].fmeasure
    return {k: v / len(predictions) for k, v in totals.items()}


def bleu(predictions: list[str], references: list[str]) -> float:
    """Corpus BLEU on 0..100, one reference per prediction: `sacrebleu.corpus_bleu` with its defaults.

    n-gram counts are summed over the whole corpus before the precisions are taken (so this
    is not the mean of sentence BLEUs). Defaults: 13a tokenisation, case-sensitive, 1..4-grams,
    "exp" smoothing (an order with zero matches gets precision 1/(2^k * total) instead of
    zeroing the score; it only matters when some order has no match at all; no match of any
    order gives 0).
    """
    _check_pairs(predictions, references, "predictions", "references")
    import sacrebleu

    return float(sacrebleu.corpus_bleu(predictions, [references]).score)


def sentence_bleu(prediction: str, reference: str) -> float:
    """BLEU of one prediction against one reference on 0..100: `sacrebleu.sentence_bleu` defaults.

    As `bleu`, plus effective order: n-gram orders longer than the prediction are left out,
    so a short but correct sentence is not scored 0. Sentence BLEU is noisy; report `bleu`
    over a corpus where possible.
    """
    import sacrebleu

    return float(sacrebleu.sentence_bleu(prediction, [reference]).score)


# --- calibration --------------------------------------------------------------------------


def expected_calibration_error(confidences: list[float], correct: list[bool], n_bins: int = 10) -> float:
    """ECE = sum over bins b of |B_b|/n * |accuracy(B_b) - mean confidence(B_b)|, in [0, 1].

    Bins split [0, 1] into `n_bins` equal widths, [k/n_bins, (k+1)/n_bins), the last one closed
    so that confidence 1.0 falls in it. Empty bins contribute nothing.
    """
    _check_pairs(confidences, correct, "confidences", "correct")
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}")
    bad = [c for c in confidences if not 0.0 <= c <= 1.0]
    if bad:
        raise ValueError(f"confidences must lie in [0, 1], got {bad[:3]}")
    count, conf_sum, hits = [0] * n_bins, [0.0] * n_bins, [0] * n_bins
    for c, ok in zip(confidences, correct):
        b = min(int(c * n_bins), n_bins - 1)
        count[b] += 1
        conf_sum[b] += c
        hits[b] += bool(ok)
    n = len(confidences)
    return sum(abs(hits[b] - conf_sum[b]) / n for b in range(n_bins) if count[b])  # |B|/n * |acc - conf|


# --- multiple choice by log-likelihood -----------------------------------------------------


def _encode_option(tokenizer, context: str, option: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) the way lm-evaluation-harness splits them.

    context+option is tokenised as one string, so the option's first token is the one the
    model would really see, and the continuation is what follows the context's own tokens.
    Unlike the harness, trailing whitespace stays on the context: this project's prompts end
    in "### Response:\n", which fine-tuning (sft.encode_pair) and generation treat as part of
    the prompt, so the "\n" is conditioned on, not scored. Put a separating space in the
    option (" Paris") where the context has none.
    """
    whole = tokenizer(context + option, add_special_tokens=False)["input_ids"]
    ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
    if not ctx:
        # Nothing to condition on: the first option token is predicted from bos (else eos), as in the harness.
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        return [prefix], whole
    return ctx, whole[len(ctx):]


@torch.no_grad()
def option_logprobs(model, tokenizer, contexts: list[str], options: list[list[str]], batch_size: int = 16) -> list[list[float]]:
    """Summed log-probability (nats, <= 0) of each option's tokens given its context.

    contexts: N strings; options: N lists of candidate continuations. Returns N lists of floats,
    options[i][j] -> result[i][j]. Only continuation tokens are scored. Sequences longer than
    the model's context (config.n_positions or max_position_embeddings) are cut from the left,
    dropping the oldest context. Requests are batched longest first, right-padded with an
    attention mask, with the model in eval mode (its mode is restored afterwards).
    """
    _check_pairs(contexts, options, "contexts", "options")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    max_len = context_length(model)
    requests = []  # (i, j, input ids, number of continuation tokens)
    for i, (context, opts) in enumerate(zip(contexts, options)):
        if not opts:
            raise ValueError(f"context {i} has no options")
        for j, option in enumerate(opts):
            ctx, cont = _encode_option(tokenizer, context, option)
            if not cont:
                raise ValueError(f"option {j} of context {i} ({option!r}) has no tokens")
            if max_len is not None and len(cont) > max_len:
                raise ValueError(f"option {j} of context {i} has {len(cont)} tokens, more than the model's {max_len}")
            seq = ctx + cont
            if max_len is not None:
                seq = seq[-(max_len + 1):]  # the last token is only a target, never an input
            requests.append((i, j, seq[:-1], seq[-len(cont):]))

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad_id = next((t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0)
    results = [[0.0] * len(opts) for opts in options]
    # Longest first: similar lengths share a batch (less padding), and an out-of-memory shows up at once.
    order = sorted(range(len(requests)), key=lambda r: -len(requests[r][2]))
    for start in range(0, len(order), batch_size):
        batch = [requests[r] for r in order[start : start + batch_size]]
        width = max(len(inp) for _, _, inp, _ in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (_, _, inp, _) in enumerate(batch):
            ids[row, : len(inp)] = torch.tensor(inp)
            mask[row, : len(inp)] = 1
        logprobs = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float().log_softmax(-1)
        for row, (i, j, inp, cont) in enumerate(batch):
            # Position p predicts token p+1, so the continuation's targets are read at the last len(cont) inputs.
            rows = logprobs[row, len(inp) - len(cont) : len(inp)]
            targets = torch.tensor(cont, device=rows.device)
            results[i][j] = rows.gather(-1, targets[:, None]).sum().item()
    model.train(was_training)
    return results


def choose(logprobs: list[float], option_lengths: list[int] | None = None) -> int:
    """Index of the best option: argmax of the log-probabilities (the harness's "acc").

    With `option_lengths`, argmax of logprob / length instead, so long options are not
    penalised for having more tokens to pay for ("acc_norm"-like; the harness divides by the
    option's length in characters, any positive unit works). Ties go to the lowest index.
    """
    if not logprobs:
        raise ValueError("logprobs is empty; there is no option to choose")
    scores = logprobs
    if option_lengths is not None:
        _check_pairs(logprobs, option_lengths, "logprobs", "option_lengths")
        if any(n <= 0 for n in option_lengths):
            raise ValueError(f"option_lengths must be positive, got {option_lengths}")
        scores = [lp / n for lp, n in zip(logprobs, option_lengths)]
    return max(range(len(scores)), key=scores.__getitem__)


def option_probabilities(logprobs: list[float]) -> list[float]:
    """Softmax over the options' log-probabilities: a distribution over the N options, summing to 1.

    This renormalises over the candidates only (the model gives mass to other continuations
    too); its maximum is the confidence for `expected_calibration_error`.
    """
    if not logprobs:
        raise ValueError("logprobs is empty")
    top = max(logprobs)  # subtract the max so exp never overflows or underflows to all zeros
    weights = [math.exp(lp - top) for lp in logprobs]
    total = sum(weights)
    return [w / total for w in weights]
