"""Perplexity exactly as the source document defines it.

    PPL(X) = exp( -1/t * sum_i log p(x_i | x_<i) )

the exponentiated mean negative log-likelihood per predicted token. Texts longer than
the model's context are scored with a sliding window: each window re-reads up to
``context - stride`` tokens of history but only scores the ``stride`` new ones
(stride < context, so at least one token of history), so
every token is predicted exactly once and with as much context as fits.
"""

from __future__ import annotations

import math

import torch


@torch.no_grad()
def token_nll(model: torch.nn.Module, tokens: torch.Tensor, context: int, stride: int | None = None, max_tokens: int | None = None) -> tuple[float, int]:
    """Sum of negative log-likelihoods (nats) and the number of tokens predicted.

    tokens: LongTensor [N], one stream. context: the model's window in tokens.
    stride: new tokens scored per window (default context // 2). max_tokens: stop after
    scoring this many (for cheap estimates). The first token has no prediction.
    """
    stride = stride or max(1, context // 2)
    if not 0 < stride < context:
        # A window must keep one token of history before its first scored token.
        raise ValueError(f"stride must be in 1..context-1 ({context - 1}), got {stride}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    tokens = tokens.to(device).long()
    total_nll, scored, prev_end = 0.0, 0, 1  # positions < prev_end are already scored (position 0 never is)
    n = tokens.numel() if max_tokens is None else min(tokens.numel(), max_tokens + 1)
    for end in range(min(context, n), n + stride, stride):
        end = min(end, n)
        begin = max(0, end - context)
        window = tokens[begin:end].unsqueeze(0)
        logits = model(input_ids=window).logits[0, :-1].float()  # predicts window[1:]
        targets = window[0, 1:]
        new = end - max(prev_end, begin + 1)  # tokens not scored by an earlier window
        if new > 0:
            nll = torch.nn.functional.cross_entropy(logits[-new:], targets[-new:], reduction="sum")
            total_nll += nll.item()
            scored += new
        prev_end = end
        if end >= n:
            break
    model.train(was_training)
    return total_nll, scored


def perplexity(model: torch.nn.Module, tokens: torch.Tensor, context: int, stride: int | None = None, max_tokens: int | None = None) -> float:
    """exp(mean token NLL) over the stream; see token_nll for the arguments."""
    nll, count = token_nll(model, tokens, context, stride, max_tokens)
    if count == 0:
        raise ValueError("perplexity needs at least two tokens")
    return math.exp(nll / count)
