"""The phases a step may use: where its config and run function live, what it needs.

A plain table, read by the validator (configs only: cheap to import), by the engine
(run functions: imported inside the Ray task that runs the step) and by ``lifecycle plan``
(how a training step is sized: workflows/plan_spec.py).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class Sizing:
    """Where ``lifecycle plan`` reads a Ray Train step's training setup in its config.

    Every other name is a field of the config's ``block`` (the config itself when "");
    None: the phase has no such field, and the default in brackets applies. The block also has
    ``strategy``, ``max_steps`` (0: nothing trains, nothing to plan) and ``micro_batch_size``.
    """

    block: str = ""  # the config field holding the training sub-config; "": the config itself
    stage: str | None = "zero_stage"  # ZeRO stage, read under deepspeed; None: deepspeed is not a choice
    cpu_offload: str | None = None  # bool, honoured under deepspeed only (FSDP ignores it) [False]
    precision: str | None = None  # "auto" | "fp32" | "bf16"; auto: bf16 on a GPU [fp32: the loop has no mixed precision]
    checkpointing: str | None = None  # activation checkpointing "on" | "off" | "auto" (on with a GPU) [off]
    method: str | None = None  # how it trains; anything but "full" is counted as full (upper bound) [full]
    sweep: str | None = None  # a SweepConfig or None; its max_concurrent_trials Ray Train runs at once [1]
    seq: str | None = None  # the longest input in tokens [the model's context length]
    pairs: bool = False  # chosen + rejected: 2 x micro_batch_size sequences forward and kept for backward
    packed: bool = False  # batches are packed to the full context; else padded to their longest example
    vocab_logits: bool = True  # a logit per token per vocabulary entry (a task head's few labels: False)
    # A frozen fp32 copy of the model on every worker besides the trained one:
    reference: bool = False  # the policy's reference, unless an adapter (method not "full") carries the training
    teacher: str | None = None  # the soft term's weight: > 0 holds the teacher; the student counted at its size


@dataclass(frozen=True)
class Phase:
    config: str  # "module:Class" of the pydantic config
    run: str  # "module:function" with the step contract
    needs: tuple[str, ...]  # artifact kinds it consumes, one upstream each; "kind?" is optional
    produces: str  # artifact kind it returns
    summary: str
    check: str | None = None  # "module:function" (cfg, workdir) -> cfg, run on the config before Ray starts
    cache: bool = True  # False: run every time (a live endpoint is not a file to reuse)
    # Model families (components/core/models.py) the phase applies to; None: it takes no model.
    families: tuple[str, ...] | None = ("causal",)
    trains_weights: bool = False  # trains its model input (and merges adapters into it): never after a quantize step
    # What `lifecycle plan` sizes: "ray_train" workers on scale.workers; "actors" placed by the phase's own
    # config (a row, not estimated); "task": no training workers (a Ray task, which may start Ray Data or Serve).
    runner: Literal["task", "ray_train", "actors"] = "task"
    sizing: Sizing | None = None  # runner "ray_train": how `lifecycle plan` sizes the step
    placement: str | None = None  # runner "actors": where its actors go, for `lifecycle plan`'s row


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
        families=None, runner="ray_train",
        sizing=Sizing(cpu_offload="cpu_offload", precision="precision", checkpointing="activation_checkpointing", packed=True),
    ),
    "base": Phase(
        "components.base.config:BaseConfig", "components.base.step:run", (), "model",
        "bring in a pretrained checkpoint (a local Hugging Face folder, hf:ORG/NAME[@REVISION] or a registered model): "
        "safetensors only, revision pinned, every weight file's digest in the lineage",
        check="components.base.step:check", families=None,
    ),
    "instructions": Phase(
        "components.data.instructions:InstructionDataConfig", "components.data.step:run_instructions", (), "instructions",
        "generate or load instruction data; split train/validation/test by seeded hash",
        check="components.data.step:check_instructions", families=None,
    ),
    "finetune": Phase(
        "components.finetune.config:FinetuneConfig", "components.finetune.step:run", ("model", "instructions", "dataset"), "model",
        "instruction-tune a model (LoRA, prompt tuning, IA3, selective or full) with Ray Train; optional Ray Tune rank sweep",
        families=("causal", "seq2seq"), trains_weights=True, runner="ray_train",
        sizing=Sizing(method="method", sweep="sweep", seq="max_length"),
    ),
    "classify": Phase(
        "components.classify.config:ClassifyConfig", "components.classify.step:run", ("model",), "model",
        "fine-tune a masked (BERT) encoder with a sequence (sst2, mnli) or token (ner) classification head with Ray Train",
        families=("masked",), trains_weights=True, runner="ray_train",
        sizing=Sizing(stage=None, method="method", sweep="sweep", seq="max_length", vocab_logits=False),
    ),
    "preferences": Phase(
        "components.data.preferences:PreferenceDataConfig", "components.data.step:run_preferences", ("instructions?",),
        "preferences", "derive preference pairs from the instructions (bundled) or load TRL / Anthropic-HH JSONL; split train/test",
        check="components.data.step:check_preferences", families=None,
    ),
    "reward": Phase(
        "components.rlhf.config:RewardConfig", "components.rlhf.step:run_reward", ("model", "preferences"), "reward_model",
        "train a reward model (scalar head, Bradley-Terry loss) on preference pairs with Ray Train",
        trains_weights=True, runner="ray_train", sizing=Sizing(pairs=True, vocab_logits=False, seq="max_length"),  # a scalar head: one logit per sequence
    ),
    "ppo": Phase(
        "components.rlhf.config:PPOConfig", "components.rlhf.step:run_ppo", ("model", "reward_model", "preferences"), "model",
        "align the model with PPO and a KL penalty: policy, reference, reward and value models as Ray actors",
        trains_weights=True, runner="actors",
        placement="four role actors (policy, reference, reward, value), each on ppo.gpus_per_role GPUs",
    ),
    "dpo": Phase(
        "components.rlhf.config:DPOConfig", "components.rlhf.step:run_dpo", ("model", "preferences"), "model",
        "align the model on preference pairs with DPO (or IPO) under Ray Train; no reward model, no sampling",
        trains_weights=True, runner="ray_train", sizing=Sizing(pairs=True, method="method", reference=True, seq="max_length"),
    ),
    "grpo": Phase(
        "components.grpo.config:GRPOConfig", "components.grpo.step:run", ("model", "instructions", "reward_model?"), "model",
        "group-relative RL (GRPO, Dr. GRPO, RLOO) with verifiable rewards: G sampled answers per prompt scored by checkers, "
        "user functions or the reward model; rollout, reference and learner as Ray actors, no value model",
        check="components.grpo.config:check", trains_weights=True, runner="actors",
        placement="grpo.rollout_actors rollout actors, a reference and a learner (and a reward model when a term), "
        "each grpo.cpus_per_actor CPUs and grpo.gpus_per_actor GPUs",
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
        trains_weights=True, runner="ray_train", sizing=Sizing(block="training", stage=None, teacher="alpha"),
    ),
    "prune": Phase(
        "components.compress.config:PruneConfig", "components.compress.step:run_prune", ("model", "instructions?"), "model",
        "magnitude-prune the model (global unstructured or MLP channels), then recover with a short distillation; "
        "a classifier on its task's data", families=("causal", "masked"),
        trains_weights=True, runner="ray_train", sizing=Sizing(block="recovery", stage=None, teacher="alpha"),
    ),
    "evaluate": Phase(
        "components.evaluate.config:EvaluateConfig", "components.evaluate.step:run", ("model", "instructions?", "dataset?", "endpoint?"),
        "evaluation", "score a model (perplexity, exact match, ROUGE, BLEU, benchmark suites) on Ray Data replicas; "
        "lm-eval tasks on it in-process, or on the live endpoint of a deploy step serving it",
        check="components.evaluate.config:check", families=("causal", "masked", "seq2seq"),
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



def load(ref: str):
    """Import ``module:attr``."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)
