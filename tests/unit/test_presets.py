"""The GPT-2 124M scale presets: one 8-GPU node and two, the same run apart from scale. No Ray."""

import copy

import yaml

from tests.conftest import ROOT
from workflows.spec import load_spec

ONE_NODE = ROOT / "workflows" / "gpt2-124m.yaml"
TWO_NODES = ROOT / "workflows" / "gpt2-124m-multinode.yaml"
# What may change with the number of GPUs: the scale block and how a step's batch is accumulated.
SCALE_FIELDS = {("steps", "pretrain", "with", "grad_accum")}


def _tokens_per_step(resolved) -> int:
    """Tokens in one optimizer step of the pretrain step: workers x micro-batch x accumulation x context."""
    cfg = resolved.configs["pretrain"]
    return resolved.spec.scale.workers * cfg.micro_batch_size * cfg.grad_accum * cfg.model.n_positions


def test_presets_are_gpt2_small_on_eight_and_sixteen_gpus():
    one, two = load_spec(ONE_NODE), load_spec(TWO_NODES)
    for resolved, workers in ((one, 8), (two, 16)):
        scale = resolved.spec.scale
        assert (scale.workers, scale.gpus_per_worker, scale.cpus_per_worker) == (workers, 1, 8)
        model = resolved.configs["pretrain"].model
        assert (model.n_layer, model.n_embd, model.n_head, model.n_positions) == (12, 768, 12, 1024)
        assert resolved.configs["tokenizer"].vocab_size == 50257
        assert resolved.configs["corpus"].source.startswith("hf:")
        pre = resolved.configs["pretrain"]
        assert (pre.strategy, pre.precision, pre.lr, pre.warmup_steps) == ("fsdp", "bf16", 6e-4, 700)
    # The same global batch (about half a million tokens, as nanoGPT) on both, so lr and schedule carry over.
    assert _tokens_per_step(one) == _tokens_per_step(two) == 524_288


def test_multinode_differs_only_in_scale_and_batch_fields():
    one, two = (yaml.safe_load(path.read_text()) for path in (ONE_NODE, TWO_NODES))
    stripped = []
    for document in (one, two):
        document = copy.deepcopy(document)
        for key in ("name", "description", "scale"):
            document.pop(key)
        for path in SCALE_FIELDS:
            node = document
            for part in path[:-1]:
                node = node[part]
            node.pop(path[-1])
        stripped.append(document)
    assert stripped[0] == stripped[1]
    assert one["scale"].keys() == two["scale"].keys() and one["scale"]["workers"] * 2 == two["scale"]["workers"]


def test_presets_start_with_their_run_and_submit_commands():
    for path in (ONE_NODE, TWO_NODES):
        lines = path.read_text().splitlines()
        assert lines[0].startswith(f"# lifecycle run workflows/{path.name} --address")
        assert any(line.startswith(f"# From elsewhere, through the Ray Jobs API: lifecycle submit workflows/{path.name}")
                   for line in lines[:3])
