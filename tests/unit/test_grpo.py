"""Group-relative RL: advantages per algorithm, the clipped loss with its KL term, the verifiers and
user reward functions, against values computed by hand."""

import math

import pytest
import torch

from components.core.grpo import equal_groups, group_advantages, grpo_loss, kl_estimate
from components.core.verifiers import call_reward_function, combine, load_reward_function, verifier_rewards, verify

# --- advantages ---------------------------------------------------------------------------------

REWARDS = torch.tensor([[1.0, 0.0, 0.0, 1.0], [3.0, 3.0, 3.0, 3.0]])


def test_grpo_divides_the_centred_rewards_by_the_groups_sample_std():
    # mean 0.5, unbiased std sqrt(4 x 0.25 / 3) = 0.57735: +-0.5 / 0.57735 = +-0.866025
    adv = group_advantages(REWARDS, "grpo", eps=0.0 + 1e-12)
    assert adv[0].tolist() == pytest.approx([0.866025, -0.866025, -0.866025, 0.866025], abs=1e-5)
    assert adv[1].tolist() == [0.0] * 4  # all equal: no signal
    with_eps = group_advantages(REWARDS, "grpo", eps=1e-4)
    assert with_eps[0, 0].item() == pytest.approx(0.5 / (0.577350 + 1e-4), abs=1e-5)


def test_dr_grpo_only_centres():
    adv = group_advantages(REWARDS, "dr_grpo")
    assert adv.tolist() == [[0.5, -0.5, -0.5, 0.5], [0.0] * 4]


def test_rloo_subtracts_the_mean_of_the_other_samples():
    # r=1: others (1 + 0 + 0) / 3 = 1/3 -> 2/3; r=0: others (1 + 0 + 1) / 3 = 2/3 -> -2/3
    adv = group_advantages(REWARDS, "rloo")
    assert adv[0].tolist() == pytest.approx([2 / 3, -2 / 3, -2 / 3, 2 / 3])
    assert adv[1].tolist() == [0.0] * 4
    uneven = group_advantages(torch.tensor([[2.0, 0.0, 1.0]]), "rloo")
    assert uneven[0].tolist() == pytest.approx([1.5, -1.5, 0.0])  # 2 - 0.5, 0 - 1.5, 1 - 1


def test_advantages_refuse_bad_shapes_and_names_and_count_equal_groups():
    with pytest.raises(ValueError, match="G >= 2"):
        group_advantages(torch.ones(4), "grpo")
    with pytest.raises(ValueError, match="unknown algorithm"):
        group_advantages(REWARDS, "ppo")
    assert equal_groups(REWARDS) == 0.5


# --- KL estimators ------------------------------------------------------------------------------


def test_kl_estimators_match_schulmans_formulas():
    logp, ref = torch.tensor([[0.0]]), torch.tensor([[math.log(0.5)]])  # log r = log 0.5 = -0.693147
    assert kl_estimate(logp, ref, "k1").item() == pytest.approx(0.693147, abs=1e-6)
    assert kl_estimate(logp, ref, "k2").item() == pytest.approx(0.5 * 0.693147**2, abs=1e-6)
    assert kl_estimate(logp, ref, "k3").item() == pytest.approx(0.5 + 0.693147 - 1, abs=1e-6)  # r - 1 - log r
    assert kl_estimate(ref, ref, "k3").item() == 0.0
    with pytest.raises(ValueError, match="estimator"):
        kl_estimate(logp, ref, "k4")


# --- the loss -----------------------------------------------------------------------------------

MASK = torch.tensor([[1.0, 1.0], [1.0, 0.0]])


def test_grpo_and_rloo_average_each_response_over_its_tokens_then_the_responses():
    lp = torch.zeros(2, 2)
    adv = torch.tensor([2.0, -1.0])
    # ratio 1: per token -A; response 1: mean(-2, -2) = -2, response 2: mean(+1) = 1 -> -0.5
    for algorithm in ("grpo", "rloo"):
        loss, stats = grpo_loss(lp, lp, None, adv, MASK, algorithm)
        assert loss.item() == pytest.approx(-0.5)
        assert stats["clip_fraction"].item() == 0.0 and stats["ratio"].item() == pytest.approx(1.0)


def test_dr_grpo_sums_tokens_over_a_constant():
    lp = torch.zeros(2, 2)
    loss, _ = grpo_loss(lp, lp, None, torch.tensor([2.0, -1.0]), MASK, "dr_grpo", max_new_tokens=4)
    assert loss.item() == pytest.approx((-2 - 2 + 1) / (2 * 4))
    with pytest.raises(ValueError, match="max_new_tokens"):
        grpo_loss(lp, lp, None, torch.tensor([2.0, -1.0]), MASK, "dr_grpo")


def test_the_ratio_is_clipped_only_where_it_would_push_further():
    new = torch.full((2, 1), math.log(1.5))
    old = torch.zeros(2, 1)
    # A = +1: min(1.5, 1.2) = 1.2 -> -1.2 (clipped); A = -1: min(-1.5, -1.2) = -1.5 -> +1.5 (not clipped)
    loss, stats = grpo_loss(new, old, None, torch.tensor([1.0, -1.0]), torch.ones(2, 1), "grpo", clip_low=0.2, clip_high=0.2)
    assert loss.item() == pytest.approx((-1.2 + 1.5) / 2)
    assert stats["clip_fraction"].item() == 0.5
    # a wider upper clip (DAPO's clip-higher) lets the first ratio through
    loss, _ = grpo_loss(new, old, None, torch.tensor([1.0, -1.0]), torch.ones(2, 1), "grpo", clip_high=0.6)
    assert loss.item() == pytest.approx((-1.5 + 1.5) / 2)


def test_the_kl_term_is_beta_times_the_estimate_per_token_and_has_a_gradient():
    lp = torch.zeros(1, 2, requires_grad=True)
    ref = torch.full((1, 2), math.log(0.5))
    k3 = 0.5 + math.log(2) - 1
    loss, stats = grpo_loss(lp, lp.detach(), ref, torch.tensor([1.0]), torch.ones(1, 2), "grpo", beta=0.1)
    assert loss.item() == pytest.approx(-1 + 0.1 * k3, abs=1e-6)
    assert stats["kl"].item() == pytest.approx(k3, abs=1e-6)
    loss.backward()
    # d/dlogp of -exp(lp - old) x A / 2 is -A / 2 = -0.5; of 0.1 x (exp(ref - lp) + lp - ref - 1) / 2 is 0.1 x (1 - 0.5) / 2
    assert lp.grad[0].tolist() == pytest.approx([-0.5 + 0.025, -0.5 + 0.025], abs=1e-6)


# --- verifiers ----------------------------------------------------------------------------------


def test_numeric_families_take_a_bare_number_within_tolerance():
    assert verify("correct", "add", "19.", "19") == 1.0
    assert verify("correct", "add", " 19 ", "19") == 1.0
    assert verify("correct", "add", "19.4", "19") == 0.0
    assert verify("correct", "add", "19.4", "19", tolerance=0.5) == 1.0
    assert verify("correct", "count", "the answer is 5", "5") == 0.0  # not a bare number
    assert verify("format", "count", "7", "5") == 1.0 and verify("format", "count", "seven", "5") == 0.0


def test_word_families_are_exact_and_their_format_is_the_answers_shape():
    assert verify("correct", "reverse", "cat dog sun", "cat dog sun") == 1.0
    assert verify("correct", "sort", "cat dog sun", "Cat dog sun") == 0.0  # case is significant
    assert verify("format", "sort", "dog cat sun", "cat dog sun") == 1.0
    assert verify("format", "translate", "le chat", "le chien noir") == 0.0
    assert verify("correct", "copy_field", "Rome", "Rome") == 1.0
    assert verify("format", "copy_field", "", "Rome") == 0.0
    assert verify("format", "first_sentence", "The cat is red.", "The dog runs.") == 1.0
    assert verify("format", "first_sentence", "The cat is red. The dog runs.", "The cat is red.") == 0.0
    assert verify("correct", "my_family", "x", "x") == 1.0  # unknown families: exact match
    assert verifier_rewards("correct", ["add", "sort"], ["3", "b a"], ["3", "a b"]) == [1.0, 0.0]
    with pytest.raises(ValueError, match="unknown verifier"):
        verify("length", "add", "1", "1")


# --- user reward functions ----------------------------------------------------------------------


def length_reward(prompts, completions, references, families):
    return [-abs(len(c) - len(r)) / 10 for c, r in zip(completions, references)]


def kwargs_reward(prompts, completions, **kwargs):
    return [1.0 for _ in completions]


def picky_reward(prompts, completions, **kwargs):
    if any(c == "boom" for c in completions):
        raise RuntimeError("cannot score boom")
    return [math.nan if c == "nan" else 1.0 for c in completions]


def short_reward(prompts, completions, **kwargs):
    return [1.0] * (len(completions) - 1) if len(completions) > 1 else [1.0]


def two_arguments(prompts, completions):
    return [0.0] * len(completions)


NOT_CALLABLE = 3


def test_a_user_reward_function_is_imported_and_its_signature_checked():
    assert load_reward_function("tests.unit.test_grpo:length_reward") is length_reward
    assert load_reward_function("tests.unit.test_grpo:kwargs_reward") is kwargs_reward
    for ref, message in [("no_colon", "module:function"), ("no_such_module_xyz:f", "cannot import"),
                         ("tests.unit.test_grpo:missing", "no attribute"), ("tests.unit.test_grpo:NOT_CALLABLE", "not callable"),
                         ("tests.unit.test_grpo:two_arguments", "keyword arguments")]:
        with pytest.raises(ValueError, match=message):
            load_reward_function(ref)


def test_failures_of_a_reward_function_are_pinned_to_their_completion():
    prompts, refs, fams = ["p0", "p1", "p2"], ["a", "b", "c"], ["x"] * 3
    values, problems = call_reward_function(length_reward, prompts, ["a", "bbb", "c"], refs, fams)
    assert values == pytest.approx([0.0, -0.2, 0.0]) and problems == []
    values, problems = call_reward_function(picky_reward, prompts, ["a", "boom", "nan"], refs, fams)
    assert values[0] == 1.0 and math.isnan(values[1]) and math.isnan(values[2])
    assert [i for i, _ in problems] == [1, 2]
    assert "cannot score boom" in problems[0][1] and "nan" in problems[1][1]
    values, problems = call_reward_function(short_reward, prompts, ["a", "b", "c"], refs, fams)
    assert values == [1.0] * 3 and problems == []  # one at a time it returns the right length


def test_terms_combine_by_weight():
    assert combine({"correct": [1.0, 0.0], "format": [1.0, 1.0]}, {"correct": 1.0, "format": 0.1}) == pytest.approx([1.1, 0.1])


# --- the phase's spec validation ----------------------------------------------------------------

SPEC = """name: g
steps:
  corpus: {uses: data}
  tokenizer: {uses: tokenizer, needs: [corpus]}
  pretrain: {uses: pretrain, needs: [corpus, tokenizer]}
  instructions: {uses: instructions}
  finetune: {uses: finetune, needs: [pretrain, instructions, corpus]}
  grpo:
    uses: grpo
    needs: [finetune, instructions]
    with:
      algorithm: dr_grpo
      rewards: {correct: 1.0, format: 0.1, REWARD: 0.5}
"""


def test_the_spec_refuses_a_reward_function_that_cannot_be_imported_or_called(tmp_path):
    from workflows.spec import SpecError, load_spec

    path = tmp_path / "spec.yaml"
    path.write_text(SPEC.replace("REWARD", "'tests.unit.test_grpo:length_reward'"))
    cfg = load_spec(path).configs["grpo"]
    assert cfg.algorithm == "dr_grpo" and cfg.user_functions == ["tests.unit.test_grpo:length_reward"]
    for ref, message in [("no_such_module_xyz:f", "cannot import module"), ("tests.unit.test_grpo:two_arguments", "keyword arguments"),
                         ("bleu", "unknown reward term")]:
        path.write_text(SPEC.replace("REWARD", f"'{ref}'"))
        with pytest.raises(SpecError, match=f"step 'grpo'.*{message}"):
            load_spec(path)
