"""The phases a step may use: where its config and run function live, what it needs.

A plain table, read by the validator (configs only: cheap to import) and by the engine
(run functions: imported inside the Ray task that runs the step).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Phase:
    config: str  # "module:Class" of the pydantic config
    run: str  # "module:function" with the step contract
    needs: tuple[str, ...]  # artifact kinds it consumes, one upstream each; "kind?" is optional
    produces: str  # artifact kind it returns
    summary: str
    check: str | None = None  # "module:function" run on the config before Ray starts
    cache: bool = True  # False: run every time (a live endpoint is not a file to reuse)
    # Model families (components/core/models.py) the phase applies to; None: it takes no model.
    families: tuple[str, ...] | None = ("causal",)


PHASES: dict[str, Phase] = {
    "data": Phase(
        "components.data.config:DataConfig", "components.data.step:run_data", (), "dataset",
        "load a text corpus and split it train/validation by a seeded hash",
        check="components.data.step:check_data", families=None,
    ),
    "tokenizer": Phase(
        "components.data.config:TokenizerConfig", "components.data.step:run_tokenizer", ("dataset",), "tokenizer",
        "train a byte-level BPE tokenizer on the training split", families=None,
    ),
    "pretrain": Phase(
        "components.pretrain.config:PretrainConfig", "components.pretrain.step:run", ("dataset", "tokenizer"), "model",
        "pretrain a causal, masked (BERT) or seq2seq (T5) model with Ray Train (FSDP2, DDP or DeepSpeed)",
        families=None,
    ),
    "instructions": Phase(
        "components.data.instructions:InstructionDataConfig", "components.data.step:run_instructions", (), "instructions",
        "generate or load instruction data; split train/validation/test by seeded hash",
        check="components.data.step:check_instructions", families=None,
    ),
    "finetune": Phase(
        "components.finetune.config:FinetuneConfig", "components.finetune.step:run", ("model", "instructions", "dataset"), "model",
        "instruction-tune a model (LoRA, prompt tuning, IA3, selective or full) with Ray Train; optional Ray Tune rank sweep",
        families=("causal", "seq2seq"),
    ),
    "classify": Phase(
        "components.classify.config:ClassifyConfig", "components.classify.step:run", ("model",), "model",
        "fine-tune a masked (BERT) encoder with a sequence (sst2, mnli) or token (ner) classification head with Ray Train",
        families=("masked",),
    ),
    "preferences": Phase(
        "components.data.preferences:PreferenceDataConfig", "components.data.step:run_preferences", ("instructions?",),
        "preferences", "derive preference pairs from the instructions (bundled) or load TRL / Anthropic-HH JSONL; split train/test",
        check="components.data.step:check_preferences", families=None,
    ),
    "reward": Phase(
        "components.rlhf.config:RewardConfig", "components.rlhf.step:run_reward", ("model", "preferences"), "reward_model",
        "train a reward model (scalar head, Bradley-Terry loss) on preference pairs with Ray Train",
    ),
    "ppo": Phase(
        "components.rlhf.config:PPOConfig", "components.rlhf.step:run_ppo", ("model", "reward_model", "preferences"), "model",
        "align the model with PPO and a KL penalty: policy, reference, reward and value models as Ray actors",
    ),
    "dpo": Phase(
        "components.rlhf.config:DPOConfig", "components.rlhf.step:run_dpo", ("model", "preferences"), "model",
        "align the model on preference pairs with DPO (or IPO) under Ray Train; no reward model, no sampling",
    ),
    "grpo": Phase(
        "components.grpo.config:GRPOConfig", "components.grpo.step:run", ("model", "instructions", "reward_model?"), "model",
        "group-relative RL (GRPO, Dr. GRPO, RLOO) with verifiable rewards: G sampled answers per prompt scored by checkers, "
        "user functions or the reward model; rollout, reference and learner as Ray actors, no value model",
        check="components.grpo.step:check",
    ),
    "quantize": Phase(
        "components.compress.config:QuantizeConfig", "components.compress.step:run_quantize", ("model", "instructions?"), "model",
        "quantize a merged model (fp16/bf16, int8 dynamic, int8/int4 weight-only); size, CPU speed and exact match next to the source; "
        "a classifier's accuracy on its task's data", families=("causal", "seq2seq", "masked"),
    ),
    "distill": Phase(
        "components.compress.config:DistillConfig", "components.compress.step:run_distill", ("model", "instructions?"), "model",
        "distil the model into a smaller student (its own layers, narrower MLPs) on its softened distribution, with Ray Train; "
        "a classifier on its task's data", families=("causal", "masked"),
    ),
    "prune": Phase(
        "components.compress.config:PruneConfig", "components.compress.step:run_prune", ("model", "instructions?"), "model",
        "magnitude-prune the model (global unstructured or MLP channels), then recover with a short distillation; "
        "a classifier on its task's data", families=("causal", "masked"),
    ),
    "evaluate": Phase(
        "components.evaluate.config:EvaluateConfig", "components.evaluate.step:run", ("model", "instructions?", "dataset?"),
        "evaluation", "score a model (perplexity, exact match, ROUGE, BLEU, benchmark suites) on Ray Data replicas",
        check="components.evaluate.step:check", families=("causal", "masked", "seq2seq"),
    ),
    "gate": Phase(
        "components.evaluate.config:GateConfig", "components.evaluate.gate:run", ("evaluation",), "approval",
        "let an evaluated model through to deploy only if it meets thresholds and does not regress",
        families=("causal", "masked", "seq2seq"),
    ),
    "deploy": Phase(
        "components.deploy.config:DeployConfig", "components.deploy.step:run", ("approval",), "endpoint",
        "serve the approved model (and its LoRA adapter) behind an OpenAI-compatible API on Ray Serve "
        "(causal and seq2seq: completions; classifiers: /v1/classify)",
        cache=False, families=("causal", "masked", "seq2seq"),
    ),
}


# Phases that train their model input (and merge adapters into it): never after a quantize step.
TRAINS_WEIGHTS = {"finetune", "classify", "reward", "ppo", "dpo", "distill", "prune"}


def load(ref: str):
    """Import ``module:attr``."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)
