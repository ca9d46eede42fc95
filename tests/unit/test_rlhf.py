"""RLHF without Ray: the preference losses and the PPO math against hand-computed values, and the
preference data loaders (TRL and Anthropic-HH shapes, bad lines, the bundled derivation)."""

import json
import math

import pytest
import torch

from components.core.ppo import (
    adaptive_kl_coef,
    at_response,
    entropy,
    gae,
    kl_penalized_rewards,
    pack,
    policy_loss,
    token_logprobs,
    value_loss,
    whiten,
)
from components.core.preference import bradley_terry_loss, dpo_loss, per_token_nll, sequence_logprobs
from components.data.corpus import DataError
from components.data.instructions import format_prompt, generate_tasks
from components.data.preferences import derive_pairs, load_preferences, read_pairs_jsonl, split_pairs, write_pairs_jsonl
from components.rlhf.config import PPOConfig


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


# --- preference losses -------------------------------------------------------------------------


def test_bradley_terry_loss_by_hand():
    # pairs with reward gaps 2 and 0: (-log s(2) - log s(0)) / 2 = (0.126928 + 0.693147) / 2
    loss = bradley_terry_loss(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.0]))
    assert loss.item() == pytest.approx(0.4100378, abs=1e-6)
    # only the difference matters
    assert bradley_terry_loss(torch.tensor([7.0]), torch.tensor([5.0])).item() == pytest.approx(-log_sigmoid(2.0), abs=1e-6)


def test_dpo_and_ipo_losses_by_hand():
    # log-ratios: chosen -1 - (-2) = 1, rejected -3 - (-2) = -1, margin 2, beta 0.5
    args = torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0])
    loss, chosen, rejected = dpo_loss(*args, beta=0.5)
    assert loss.item() == pytest.approx(-log_sigmoid(1.0), abs=1e-6)  # 0.3132617
    assert chosen.item() == pytest.approx(0.5) and rejected.item() == pytest.approx(-0.5)
    ipo, _, _ = dpo_loss(*args, beta=0.5, kind="ipo")
    assert ipo.item() == pytest.approx((2 - 1 / (2 * 0.5)) ** 2)  # (margin - 1/(2 beta))^2 = 1
    # at the reference (policy == reference) DPO's loss is log 2 whatever the answers
    same = torch.tensor([-4.0])
    assert dpo_loss(same, same - 1, same, same - 1)[0].item() == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match="unknown DPO loss"):
        dpo_loss(*args, kind="kto")


def test_dpo_gradient_raises_chosen_and_lowers_rejected():
    chosen, rejected = torch.tensor([-2.0], requires_grad=True), torch.tensor([-2.0], requires_grad=True)
    loss, _, _ = dpo_loss(chosen, rejected, torch.tensor([-2.0]), torch.tensor([-2.0]), beta=0.1)
    loss.backward()
    assert chosen.grad.item() < 0 < rejected.grad.item()  # descent raises log p(chosen), lowers log p(rejected)


def test_sequence_logprobs_sums_only_labelled_positions():
    vocab = 8
    logits = torch.zeros(1, 5, vocab)  # uniform: every token has log p = -log 8
    labels = torch.tensor([[-100, -100, 3, 4, -100]])  # 2 labelled tokens (positions 2, 3)
    assert sequence_logprobs(logits, labels).item() == pytest.approx(-2 * math.log(vocab))
    assert per_token_nll(sequence_logprobs(logits, labels), labels).item() == pytest.approx(math.log(vocab))
    logits[0, 1, 3] = 10.0  # position 1 predicts the token at position 2
    assert sequence_logprobs(logits, labels).item() > -math.log(vocab) - 1e-3


# --- PPO ---------------------------------------------------------------------------------------------


def test_kl_penalty_is_per_token_and_the_score_lands_on_the_last_token():
    logprobs = torch.tensor([[-1.0, -2.0, -1.0], [-1.0, -1.0, 0.0]])
    ref = torch.tensor([[-1.5, -1.0, -1.0], [-2.0, -1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])  # second response: one token
    rewards, kl = kl_penalized_rewards(torch.tensor([3.0, -1.0]), logprobs, ref, mask, kl_coef=0.1)
    assert kl.tolist() == [[0.5, -1.0, 0.0], [1.0, 0.0, 0.0]]
    assert rewards[0].tolist() == pytest.approx([-0.05, 0.1, 3.0])
    assert rewards[1].tolist() == pytest.approx([-0.1 - 1.0, 0.0, 0.0])
    # no drift from the reference, no penalty: only the score
    rewards, kl = kl_penalized_rewards(torch.tensor([2.0]), ref[:1], ref[:1], mask[:1], kl_coef=5.0)
    assert kl.abs().sum() == 0 and rewards.tolist() == [[0.0, 0.0, 2.0]]


def test_gae_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.2, 0.4]])
    mask = torch.ones(1, 3)
    # lambda 1, gamma 1: advantage = return-to-go (1) - V_t
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert adv.tolist()[0] == pytest.approx([0.5, 0.8, 0.6]) and ret.tolist()[0] == pytest.approx([1.0, 1.0, 1.0])
    # lambda 0: one-step TD errors r_t + V_{t+1} - V_t (V = 0 after the end)
    adv, _ = gae(rewards, values, mask, gamma=1.0, lam=0.0)
    assert adv.tolist()[0] == pytest.approx([-0.3, 0.2, 0.6])
    # padding after the end gets nothing and does not leak into the last real token
    adv, _ = gae(torch.tensor([[1.0, 5.0]]), torch.tensor([[0.0, 9.0]]), torch.tensor([[1.0, 0.0]]), 1.0, 1.0)
    assert adv.tolist() == [[1.0, 0.0]]


def test_policy_loss_clips_and_counts():
    mask = torch.ones(1, 2)
    old = torch.zeros(1, 2)
    new = torch.log(torch.tensor([[1.5, 1.0]]))  # ratios 1.5 (clipped at 1.2) and 1.0
    adv = torch.tensor([[1.0, -2.0]])
    loss, clipped = policy_loss(new, old, adv, mask, clip=0.2)
    assert loss.item() == pytest.approx((-1.2 + 2.0) / 2)
    assert clipped.item() == pytest.approx(0.5)
    # a negative advantage is not clipped from below when the ratio grew: min picks the pessimistic term
    loss, _ = policy_loss(torch.log(torch.tensor([[1.5]])), torch.zeros(1, 1), torch.tensor([[-1.0]]), torch.ones(1, 1))
    assert loss.item() == pytest.approx(1.5)


def test_value_loss_takes_the_worse_of_clipped_and_unclipped():
    # V moved 0 -> 1 toward a return of 2: clipped V = 0.2; max((1-2)^2, (0.2-2)^2) = 3.24
    loss = value_loss(torch.tensor([[1.0]]), torch.tensor([[0.0]]), torch.tensor([[2.0]]), torch.ones(1, 1), clip=0.2)
    assert loss.item() == pytest.approx(0.5 * 3.24)


def test_adaptive_kl_coefficient_moves_toward_target_with_bounded_steps():
    assert adaptive_kl_coef(0.1, kl=8.0, target=4.0, horizon=100, n_responses=10) == pytest.approx(0.1 * 1.02)  # error clipped at +20%
    assert adaptive_kl_coef(0.1, kl=3.6, target=4.0, horizon=100, n_responses=10) == pytest.approx(0.1 * (1 - 0.1 * 0.1))
    assert adaptive_kl_coef(0.1, kl=4.0, target=4.0, horizon=100, n_responses=10) == pytest.approx(0.1)


def test_entropy_logprobs_and_whiten():
    logits = torch.zeros(1, 2, 4)
    assert entropy(logits).tolist()[0] == pytest.approx([math.log(4)] * 2)
    assert token_logprobs(logits, torch.tensor([[1, 2]])).tolist()[0] == pytest.approx([-math.log(4)] * 2)
    x = whiten(torch.tensor([[1.0, 2.0, 3.0, 100.0]]), torch.tensor([[1.0, 1.0, 1.0, 0.0]]))
    assert x[0, :3].mean().item() == pytest.approx(0, abs=1e-6) and x[0, 3].item() == 0


def test_pack_places_each_response_after_its_prompt():
    batch = pack([[5, 6, 7], [8]], [[1, 2], [3, 4, 0]], pad_id=9)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 1, 2], [8, 3, 4, 0, 9]]
    assert batch["tokens"].tolist() == [[1, 2, 9], [3, 4, 0]]
    assert batch["mask"].tolist() == [[1, 1, 0], [1, 1, 1]]
    assert batch["index"].tolist() == [[2, 3, 4], [0, 1, 2]]  # the position whose output predicts token j
    logits = torch.arange(10.0).reshape(2, 5, 1)
    assert at_response(logits, batch["index"]).squeeze(-1).tolist() == [[2, 3, 4], [5, 6, 7]]


def test_ppo_config_checks():
    with pytest.raises(ValueError, match="minibatch"):
        PPOConfig(rollout_batch=8, minibatch=16)


# --- preference data -----------------------------------------------------------------------------


def write(path, lines):
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


def test_trl_and_hh_shapes_load_to_the_same_pair(tmp_path):
    trl = {"prompt": "Add 2 and 3.", "chosen": "5", "rejected": "6"}
    conversational = {"prompt": [{"role": "user", "content": "Add 2 and 3."}],
                      "chosen": [{"role": "assistant", "content": "5"}], "rejected": [{"role": "assistant", "content": "6"}]}
    hh = {"chosen": "\n\nHuman: Add 2 and 3.\n\nAssistant: 5", "rejected": "\n\nHuman: Add 2 and 3.\n\nAssistant: 6"}
    pairs, skipped = load_preferences(write(tmp_path / "p.jsonl", [trl, conversational, hh]))
    assert {(p.prompt, p.chosen, p.rejected) for p in pairs} == {(format_prompt("Add 2 and 3."), "5", "6")}
    assert len(pairs) == 3 and skipped == {"missing_or_empty": 0, "identical": 0}


@pytest.mark.parametrize("bad, message", [
    ({"prompt": "x", "chosen": "a"}, "missing field 'rejected'"),
    ({"prompt": "x", "chosen": "", "rejected": "b"}, "field 'chosen' is empty"),
    ({"prompt": "x", "chosen": "same", "rejected": "same"}, "identical"),
    ({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: z\n\nAssistant: c"}, "differ before"),
    ({"prompt": "x", "chosen": 3, "rejected": "b"}, "must be a string"),
])
def test_bad_pairs_are_errors_naming_file_and_line_or_counted_when_skipped(tmp_path, bad, message):
    good = {"prompt": "Add 1 and 1.", "chosen": "2", "rejected": "3"}
    path = write(tmp_path / "p.jsonl", [good, bad])
    with pytest.raises(DataError, match=rf"p\.jsonl:2: .*{message}"):
        load_preferences(path)
    pairs, skipped = load_preferences(path, on_bad="skip")
    assert len(pairs) == 1 and sum(skipped.values()) == 1


def test_bundled_pairs_are_deterministic_and_always_prefer_the_correct_answer(tmp_path):
    examples = generate_tasks(30, seed=0)
    mix = {"corrupt": 1.0, "wrong": 1.0, "off_task": 1.0, "unhelpful": 1.0}
    pairs = derive_pairs(examples, seed=0, mix=mix)
    assert pairs == derive_pairs(examples, seed=0, mix=mix)
    assert [p.chosen for p in pairs] == [e.response for e in examples]
    assert all(p.rejected != p.chosen and p.rejected.strip() for p in pairs)
    kinds = {p.kind for p in pairs}
    assert kinds == {"corrupt", "wrong", "off_task", "unhelpful"}
    answers: dict[str, set] = {}
    for e in examples:
        answers.setdefault(e.family, set()).add(e.response)
    for p in pairs:  # "wrong" answers another prompt of the family, "off_task" a prompt of another family
        if p.kind == "wrong":
            assert p.rejected in answers[p.family]
        if p.kind == "off_task":
            assert any(p.rejected in a for f, a in answers.items() if f != p.family)
    write_pairs_jsonl(tmp_path / "t.jsonl", pairs)
    assert read_pairs_jsonl(tmp_path / "t.jsonl") == pairs
    split = split_pairs(pairs, 0.2, seed=0)
    assert not {p.prompt for p in split["train"]} & {p.prompt for p in split["test"]}
    assert derive_pairs(examples, 0, {"corrupt": 0.0, "unhelpful": 1.0})[0].kind == "unhelpful"
