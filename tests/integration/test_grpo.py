"""GRPO's role actors on the test cluster: the loop raises a reward it can reach, the reference stays
frozen, a rollout actor killed mid-run is replaced without losing the run, a re-run resumes from the
last saved iteration, and a reward function that fails names the prompt."""

import pytest
import ray
from ray.util.placement_group import placement_group, remove_placement_group

from components.core.models import ModelConfig, build_causal_lm
from components.data.config import TokenizerConfig
from components.data.instructions import generate_tasks
from components.data.tokenizer import train_bpe
from components.grpo import loop
from components.grpo.config import GRPOConfig
from components.grpo.step import start_actors

LOGGED = {"reward", "reward_tests.integration.test_grpo.brevity", "reward_correct", "kl", "kl_response", "entropy",
          "clip_fraction", "response_length", "equal_reward_groups", "generation_s", "reward_s", "training_s", "sync_s"}


def brevity(prompts, completions, references, families):
    """1 for an empty answer, less by 0.02 a character: a reward a random tiny model can learn within seconds
    (its 12-token answers are long and differ in length, so every group carries signal)."""
    return [1 - len(c) / 50 for c in completions]


def fails_on_add(prompts, completions, **kwargs):
    if any("Add" in p for p in prompts):
        raise RuntimeError("no sums here")
    return [0.0] * len(completions)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("grpo-model")
    examples = generate_tasks(20, seed=3)
    tok = train_bpe([e.prompt + e.response for e in examples] * 3, TokenizerConfig(vocab_size=400))
    lm = build_causal_lm(ModelConfig(n_layer=2, n_embd=32, n_head=2, n_positions=128), len(tok),
                         tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, seed=0)
    lm.save_pretrained(root)
    tok.save_pretrained(root)
    data = [{"ids": tok(e.prompt, add_special_tokens=False)["input_ids"], "prompt": e.prompt, "reference": e.response,
             "family": e.family} for e in examples]
    return str(root), tok, data


def test_actors_raise_the_reward_survive_a_killed_rollout_actor_and_resume(ray_address, tiny, tmp_path):
    model_dir, tok, data = tiny
    cfg = GRPOConfig(iterations=8, prompts_per_iteration=6, group_size=4, max_new_tokens=12, minibatch=24, lr=2e-2, method="full",
                     beta=0.01, rollout_actors=2, cpus_per_actor=0.25, checkpoint_every=4,
                     rewards={"tests.integration.test_grpo:brevity": 1.0, "correct": 1.0})
    functions = {"tests.integration.test_grpo:brevity": brevity}
    pg = placement_group([{"CPU": 0.25}] * 4, strategy="PACK")
    assert pg.wait(timeout_seconds=60)
    try:
        actors, replace = start_actors(cfg, model_dir, None, pg, rollouts=2)
        fingerprint = ray.get(actors["reference"].fingerprint.remote())
        seen = []

        def report(metrics, iteration):
            seen.append(metrics)
            if iteration == 3:
                ray.kill(actors["rollouts"][1])  # the next iteration finds it dead and replaces it

        state = loop.train(cfg, actors, replace, data, tok, functions, str(tmp_path), report)
        assert [m["iteration"] for m in seen] == list(range(1, 9)) and state["rollout_restarts"] == 1
        assert LOGGED <= set(seen[0])
        assert seen[0]["kl_response"] == pytest.approx(0.0, abs=1e-4)  # the first rollout is the reference's
        first, last = sum(m["reward"] for m in seen[:2]) / 2, sum(m["reward"] for m in seen[-2:]) / 2
        assert last > first + 0.05, [round(m["reward"], 3) for m in seen]
        assert ray.get(actors["reference"].fingerprint.remote()) == fingerprint
        assert loop.latest_checkpoint(str(tmp_path)).endswith("iter-00008")

        # A killed driver: new actors, the same checkpoints; the run goes on from iteration 8.
        for actor in [actors["learner"], actors["reference"], *actors["rollouts"]]:
            ray.kill(actor)
        actors, replace = start_actors(cfg, model_dir, None, pg, rollouts=2)
        resumed = []
        longer = cfg.model_copy(update={"iterations": 9})
        state = loop.train(longer, actors, replace, data, tok, functions, str(tmp_path), lambda m, i: resumed.append(m))
        assert [m["iteration"] for m in resumed] == [9] and len(state["history"]) == 9
        assert resumed[0]["reward"] > first  # the learner came back trained, not from scratch

        # A reward function that raises names the prompt; with skip, its groups are dropped and counted.
        bad = cfg.model_copy(update={"iterations": 1, "rewards": {"tests.integration.test_grpo:fails_on_add": 1.0}})
        fns = {"tests.integration.test_grpo:fails_on_add": fails_on_add}
        with pytest.raises(loop.RewardError, match="no sums here") as error:
            loop.train(bad, actors, replace, data, tok, fns, str(tmp_path / "raise"), lambda m, i: None)
        assert "prompt '### Instruction:\\nAdd" in str(error.value)
        skipping = bad.model_copy(update={"on_bad_reward": "skip", "prompts_per_iteration": 20})
        state = loop.train(skipping, actors, replace, data, tok, fns, str(tmp_path / "skip"), lambda m, i: None)
        assert state["skipped_groups"] > 0
        for actor in [actors["learner"], actors["reference"], *actors["rollouts"]]:
            ray.kill(actor)
    finally:
        remove_placement_group(pg)
