"""Training-memory planner: the source document's figures, DeepSpeed agreement, sharding,
the recommender, config parameter counts and the ``plan`` CLI. No Ray."""

import argparse
import json
import re

import pytest

from components.core import memory
from components.core.memory import GB
from tests.conftest import ROOT
from workflows.plan import add_plan_parser, run_plan
from workflows.plan_model import parse_param_count

# --- the source document's figures -----------------------------------------------------------


def test_storage_reproduces_the_document():
    assert memory.storage_bytes(1e9, "fp32") == 4 * GB
    assert memory.storage_bytes(1e9, "bf16") == 2 * GB
    assert memory.storage_bytes(1e9, "fp16") == 2 * GB
    assert memory.storage_bytes(1e9, "int8") == 1 * GB
    assert memory.storage_table(1e9) == {"fp32": 4 * GB, "16-bit": 2 * GB, "8-bit": 1 * GB}
    with pytest.raises(ValueError, match="unknown precision"):
        memory.storage_bytes(1e9, "fp8")


def test_document_training_breakdown_and_its_two_totals():
    assert memory.DOC_TRAINING_BREAKDOWN_FP32 == {
        "weights": 4, "gradients": 4, "adam_states": 8, "activations_and_temp": 8,
    }
    assert memory.doc_training_bytes_per_param() == 24  # 4 to store + 20 extra
    assert memory.doc_training_bytes_by_breakdown(1e9) == 24 * GB  # = 6x the 4 GB of weights
    assert memory.doc_training_bytes_headline(1e9) == 80 * GB  # the document's 4 GB x 20


def test_rule_of_thumb_explanation_shows_both_readings():
    text = memory.rule_of_thumb_explanation(1e9)
    for needle in ("4 GB", "24 bytes", "6x", "24 GB", "80 GB", "80 bytes/param", "20 *extra bytes", "16 bytes/param"):
        assert needle in text, needle


def test_fp32_ddp_model_states_follow_the_document():
    e = memory.estimate(1e9, "fp32", "ddp", devices=1)
    assert (e.weights, e.gradients, e.optimizer_states) == (4 * GB, 4 * GB, 8 * GB)
    assert e.total == 16 * GB + e.activations
    mixed = memory.estimate(1e9, "bf16", "ddp")
    assert (mixed.weights, mixed.gradients, mixed.optimizer_states) == (2 * GB, 2 * GB, 12 * GB)


# --- agreement with DeepSpeed's estimator ------------------------------------------------------

SIZES = [int(1e6), int(1.24e8), int(1e9)]


@pytest.fixture(scope="module")
def ds():
    from deepspeed.runtime.zero import stage3, stage_1_and_2

    return stage_1_and_2, stage3


@pytest.mark.parametrize("n_params", SIZES)
@pytest.mark.parametrize("devices", [1, 2, 8])
@pytest.mark.parametrize("offload", [False, True])
def test_zero2_matches_deepspeed(ds, n_params, devices, offload):
    cpu, gpu = ds[0].estimate_zero2_model_states_mem_needs(
        total_params=n_params, num_gpus_per_node=devices, cpu_offload=offload
    )
    ours = memory.zero_model_states_bytes(n_params, 2, devices, cpu_offload=offload)
    assert (ours.gpu_bytes, ours.cpu_bytes) == (gpu, cpu)
    assert ours.weights + ours.gradients + ours.optimizer_states == ours.gpu_bytes


@pytest.mark.parametrize("n_params", SIZES)
@pytest.mark.parametrize("devices", [1, 2, 8])
@pytest.mark.parametrize("offload", [False, True])
def test_zero3_matches_deepspeed(ds, n_params, devices, offload):
    largest = n_params // 20
    cpu, gpu, _ = ds[1].estimate_zero3_model_states_mem_needs(
        total_params=n_params, largest_layer_params=largest, num_gpus_per_node=devices,
        cpu_offload=offload, cpu_offload_params=offload,
    )
    ours = memory.zero_model_states_bytes(n_params, 3, devices, cpu_offload=offload, largest_layer_params=largest)
    assert (ours.gpu_bytes, ours.cpu_bytes) == (gpu, cpu)
    assert ours.weights + ours.gradients + ours.optimizer_states == ours.gpu_bytes


@pytest.mark.parametrize("zero_init", [True, False])
@pytest.mark.parametrize("nodes", [1, 2])
def test_zero3_optimizer_only_offload_and_multi_node_match_deepspeed(ds, zero_init, nodes):
    p, largest, per_node = int(1e9), int(5e7), 4
    for offload, offload_params in ((True, False), (True, True), (False, False)):
        cpu, gpu, _ = ds[1].estimate_zero3_model_states_mem_needs(
            p, largest, num_gpus_per_node=per_node, num_nodes=nodes, cpu_offload=offload,
            cpu_offload_params=offload_params, zero_init=zero_init,
        )
        ours = memory.zero_model_states_bytes(
            p, 3, per_node * nodes, offload, largest, nodes=nodes, offload_params=offload_params, zero_init=zero_init,
        )
        assert (ours.gpu_bytes, ours.cpu_bytes) == (gpu, cpu)


def _printed_gpu_gib(text):
    return [float(m) for m in re.findall(r"\|\s+([0-9.]+)GB \|", text)]


def test_all_cold_printers_show_our_figures(ds, capsys):
    # The printers DeepSpeed documents (GiB, two decimals, offload row first).
    ds[0].estimate_zero2_model_states_mem_needs_all_cold(int(1e9), num_gpus_per_node=8)
    ds[1].estimate_zero3_model_states_mem_needs_all_cold(int(1e9), int(5e7), num_gpus_per_node=8)
    printed = _printed_gpu_gib(capsys.readouterr().out)
    z2 = [memory.zero_model_states_bytes(1e9, 2, 8, off).gpu_bytes for off in (True, False)]
    z3_offload = memory.zero_model_states_bytes(1e9, 3, 8, True, int(5e7)).gpu_bytes
    z3 = memory.zero_model_states_bytes(1e9, 3, 8, False, int(5e7)).gpu_bytes
    assert printed[:2] == [round(b / 2**30, 2) for b in z2]
    assert printed[2] == round(z3_offload / 2**30, 2)
    assert printed[-1] == round(z3 / 2**30, 2)


def test_zero_stage1_sits_between_stage0_and_stage2():
    s0, s1, s2 = (memory.zero_model_states_bytes(1e9, s, 8).gpu_bytes for s in (0, 1, 2))
    assert s0 == 20 * GB  # DeepSpeed's accounting with nothing sharded
    assert s1 == 4 * GB + 16 * GB // 8  # 16-bit weights and grads whole, the rest sharded
    assert s2 == 2 * GB + 18 * GB // 8
    with pytest.raises(ValueError, match="largest_layer_params"):
        memory.zero_model_states_bytes(1e9, 3, 8)
    with pytest.raises(ValueError, match="offload"):
        memory.zero_model_states_bytes(1e9, 0, 8, cpu_offload=True)


# --- sharding ------------------------------------------------------------------------------------


def test_sharding_divides_by_devices():
    kw = dict(n_layers=24, hidden=2048, batch=2, seq=512, largest_layer_params=0)
    one = memory.estimate(1e9, "bf16", "fsdp", devices=1, **kw)
    eight = memory.estimate(1e9, "bf16", "fsdp", devices=8, **kw)
    for part in ("weights", "gradients", "optimizer_states"):
        assert getattr(eight, part) == getattr(one, part) // 8
    assert eight.activations == one.activations  # each device still runs its own micro-batch

    def parts(stage):
        e = memory.estimate(1e9, "fp32", "deepspeed", stage, devices=4, **kw)
        return e.weights, e.gradients, e.optimizer_states

    assert parts(0) == (4 * GB, 4 * GB, 8 * GB)
    assert parts(1) == (4 * GB, 4 * GB, 2 * GB)
    assert parts(2) == (4 * GB, 1 * GB, 2 * GB)
    assert parts(3) == (1 * GB, 1 * GB, 2 * GB)


def test_sixteen_bit_deepspeed_uses_deepspeeds_accounting():
    e = memory.estimate(1e9, "bf16", "deepspeed", 2, devices=8, n_layers=24, hidden=2048)
    z = memory.zero_model_states_bytes(1e9, 2, 8)
    assert e.weights + e.gradients + e.optimizer_states == z.gpu_bytes
    assert e.total == z.gpu_bytes + e.activations


def test_activations_follow_korthikanti():
    assert memory.activation_bytes(2, 512, 24, 2048, "bf16") == 24 * 34 * 512 * 2 * 2048
    assert memory.activation_bytes(2, 512, 24, 2048, "fp32") == 2 * 24 * 34 * 512 * 2 * 2048
    eager = memory.activation_bytes(1, 512, 1, 2048, "bf16", n_heads=16)
    assert eager == 34 * 512 * 2048 + 5 * 16 * 512 * 512


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="int8"):
        memory.estimate(1e9, "int8")
    with pytest.raises(ValueError, match="strategy"):
        memory.estimate(1e9, strategy="zero")
    with pytest.raises(ValueError, match="DDP"):
        memory.estimate(1e9, strategy="ddp", cpu_offload=True)
    with pytest.raises(ValueError, match="positive"):
        memory.estimate(0)


# --- the recommender ----------------------------------------------------------------------------


def test_recommends_ddp_when_a_replica_fits():
    r = memory.recommend_strategy(1.24e8, "bf16", devices=4, device_memory_bytes=80 * GB)
    assert r.strategy == "ddp" and "fits" in r.reason
    assert memory.estimate(1.24e8, "bf16", devices=4).recommendation.strategy == "ddp"


def test_recommends_fsdp_when_only_sharded_fits():
    r = memory.recommend_strategy(7e9, "bf16", devices=8, device_memory_bytes=80 * GB)
    assert (r.strategy, r.stage, r.cpu_offload) == ("fsdp", 3, False)
    assert r.per_device_bytes <= 80 * GB and "FSDP" in r.reason


def test_recommends_offload_when_even_sharded_does_not_fit():
    r = memory.recommend_strategy(7e9, "bf16", devices=1, device_memory_bytes=80 * GB)
    assert (r.strategy, r.stage, r.cpu_offload) == ("deepspeed", 3, True)
    r = memory.recommend_strategy(70e9, "bf16", devices=8, device_memory_bytes=10 * GB, batch=64, seq=4096)
    assert r.reason.startswith("Does not fit")


# --- parameter counts from configs ----------------------------------------------------------------

TINY_GPT2 = {"model_type": "gpt2", "n_layer": 2, "n_embd": 64, "n_head": 4, "vocab_size": 1000,
             "n_positions": 128, "bos_token_id": 0, "eos_token_id": 0}


def test_param_count_of_tiny_gpt2_matches_the_real_model():
    from transformers import GPT2Config, GPT2LMHeadModel

    size = memory.count_params_from_config(TINY_GPT2)
    real = GPT2LMHeadModel(GPT2Config(**{k: v for k, v in TINY_GPT2.items() if k != "model_type"}))
    assert size.n_params == real.num_parameters()
    assert (size.n_layers, size.hidden) == (2, 64)
    assert size.largest_layer_params == 1000 * 64  # the tied token embedding


def test_param_count_of_tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 172, "num_attention_heads": 4,
           "num_key_value_heads": 2, "vocab_size": 1000, "bos_token_id": 0, "eos_token_id": 0}
    size = memory.count_params_from_config({"model_type": "llama", **cfg})
    assert size.n_params == LlamaForCausalLM(LlamaConfig(**cfg)).num_parameters()
    assert (size.n_layers, size.hidden) == (2, 64)


# --- the plan CLI -----------------------------------------------------------------------------------


def _run(argv):
    parser = argparse.ArgumentParser(prog="lifecycle")
    add_plan_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["plan", *argv])
    return run_plan(args)


@pytest.mark.parametrize("text,value", [
    ("1e9", 10**9), ("124M", 124 * 10**6), ("1B", 10**9), ("1.3b", 13 * 10**8), ("350K", 350_000),
    ("124_000_000", 124 * 10**6), ("7,000,000", 7 * 10**6), ("2T", 2 * 10**12),
])
def test_parse_param_count(text, value):
    assert parse_param_count(text) == value


def test_plan_json_for_1b_fp32_ddp(capsys):
    assert _run(["--params", "1B", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["inputs"]["n_params"] == 10**9
    b = plan["per_device_bytes"]
    assert (b["weights"], b["gradients"], b["optimizer_states"]) == (4 * GB, 4 * GB, 8 * GB)
    assert b["total"] == sum(b[k] for k in ("weights", "gradients", "optimizer_states", "activations"))
    assert plan["storage_gb"] == {"fp32": 4.0, "16-bit": 2.0, "8-bit": 1.0}
    assert plan["doc_rule_of_thumb"]["breakdown_gb"] == 24.0
    assert plan["doc_rule_of_thumb"]["headline_gb"] == 80.0
    assert plan["recommendation"]["strategy"] == "ddp"


def test_plan_table(capsys):
    assert _run(["--params", "7B", "--precision", "bf16", "--devices", "8", "--strategy", "fsdp"]) == 0
    out = capsys.readouterr().out
    for needle in ("weights", "optimizer states", "activations", "total", "16-bit 14 GB", "FSDP"):
        assert needle in out, needle


def test_plan_from_config_files(tmp_path, capsys):
    # The same tiny GPT-2 four ways: config.json, a YAML pointing at it, an inline HF block,
    # and this project's workflow spec (pretrain ModelConfig + tokenizer vocab).
    (tmp_path / "config.json").write_text(json.dumps(TINY_GPT2))
    (tmp_path / "pointer.yaml").write_text("model: {config: config.json}\n")
    (tmp_path / "inline.yaml").write_text("model:\n  type: gpt2\n  n_layer: 2\n  n_embd: 64\n  n_head: 4\n"
                                          "  vocab_size: 1000\n  n_positions: 128\n  bos_token_id: 0\n  eos_token_id: 0\n")
    (tmp_path / "spec.yaml").write_text(
        "name: t\nsteps:\n"
        "  tok: {uses: tokenizer, with: {vocab_size: 1000}}\n"
        "  pretrain:\n    uses: pretrain\n    with:\n      micro_batch_size: 4\n"
        "      model: {n_layer: 2, n_embd: 64, n_head: 4, n_positions: 128}\n"
    )
    want = memory.count_params_from_config(TINY_GPT2).n_params
    for name in ("config.json", "pointer.yaml", "inline.yaml", "spec.yaml"):
        assert _run(["--model", str(tmp_path / name), "--json"]) == 0
        plan = json.loads(capsys.readouterr().out)
        assert plan["inputs"]["n_params"] == want, name
        assert plan["inputs"]["n_layers"] == 2 and plan["inputs"]["hidden"] == 64
    assert (plan["inputs"]["batch"], plan["inputs"]["seq"]) == (4, 128)  # the spec's own micro-batch and context
    (tmp_path / "bad.yaml").write_text("model: {n_layer: 2, bogus: 1}\n")
    assert _run(["--model", str(tmp_path / "bad.yaml")]) == 2
    assert "model.bogus" in capsys.readouterr().err


@pytest.mark.parametrize("argv,needle", [
    (["--params", "12X"], "--params"),
    (["--params", "-5"], "--params"),
    (["--params", "1B", "--precision", "int8"], "int8"),
    (["--params", "1B", "--stage", "2"], "deepspeed"),
    (["--params", "1B", "--devices", "0"], "--devices"),
    (["--params", "1B", "--batch", "0"], "batch"),
    (["--params", "1B", "--device-memory", "0"], "--device-memory"),
    (["--model", "/nonexistent/config.json"], "No such file"),
])
def test_plan_bad_input_exits_2_with_one_line(argv, needle, capsys):
    assert _run(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("lifecycle plan: error:")
    assert needle in captured.err


def test_plan_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        _run(["--params", "1B", "--strategy", "zero"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        _run([])  # neither --params nor --model
    assert exc.value.code == 2


# --- plan --spec: every training step of a workflow at its scale ---------------------------------

GPT2 = str(ROOT / "workflows" / "gpt2-124m.yaml")
GPT2_MULTINODE = str(ROOT / "workflows" / "gpt2-124m-multinode.yaml")
TINY = str(ROOT / "workflows" / "tiny.yaml")
GPT2_PARAMS = 124_439_808  # GPT-2 small at vocab 50257, context 1024, tied embeddings


def _gpt2_fsdp_bf16_bytes(devices: int) -> int:
    """Hand count of one pretrain worker of gpt2-124m: FSDP full shard, bf16, micro-batch 16 x 1024."""
    p = GPT2_PARAMS
    states = 2 * -(-2 * p // devices) + -(-12 * p // devices)  # 16-bit weights + grads, fp32 Adam (ZeRO paper), sharded
    gathered = (2 + 2) * 50257 * 768  # the largest unit gathered whole: the token embedding's weights and grads
    activations = 12 * 34 * 1024 * 16 * 768  # Korthikanti: layers x 34 s b h bytes at 16-bit
    return states + gathered + activations


def test_plan_spec_gpt2_fits_eight_80gb_gpus_with_fsdp(capsys):
    assert _run(["--spec", GPT2, "--gpus", "8", "--gpu-memory", "80", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["fits"] and plan["problems"] == [] and plan["on_gpu"]
    pre = next(s for s in plan["steps"] if s["step"] == "pretrain")
    assert (pre["strategy"], pre["precision"], pre["devices"], pre["micro_batch"], pre["seq"]) == ("fsdp", "bf16", 8, 16, 1024)
    assert pre["n_params"] == GPT2_PARAMS and pre["fits"] is True
    assert pre["per_gpu_bytes"] == pre["per_device_bytes"]["total"] == _gpt2_fsdp_bf16_bytes(8) == 5_537_097_216
    assert pre["recommendation"]["strategy"] == "ddp"  # 124M fits a replica: the estimator says sharding is optional
    # The later steps train the pretrain step's model, found through needs.
    assert {s["step"]: s["model_from"] for s in plan["steps"]} == {"pretrain": "pretrain", "finetune": "pretrain"}
    assert _run(["--spec", GPT2, "--gpus", "8"]) == 0
    out = capsys.readouterr().out
    for needle in ("gpt2-124m", "8 workers x 1 GPU", "pretrain", "FSDP", "bf16", "16 x 1024", "5.54", "yes", "Fits"):
        assert needle in out, needle


def test_plan_spec_multinode_shards_over_sixteen(capsys):
    assert _run(["--spec", GPT2_MULTINODE, "--gpus", "16", "--json"]) == 0
    pre = json.loads(capsys.readouterr().out)["steps"][0]
    assert pre["devices"] == 16 and pre["per_gpu_bytes"] == _gpt2_fsdp_bf16_bytes(16) == 5_412_657_408


def test_plan_spec_says_which_step_does_not_fit(capsys):
    assert _run(["--spec", GPT2, "--gpus", "8", "--gpu-memory", "4"]) == 1
    out = capsys.readouterr().out
    assert "step 'pretrain' (pretrain, FSDP) needs 5.54 GB per GPU > 4 GB" in out
    assert "cut batch/seq or checkpoint activations" in out  # the recommender's advice
    assert _run(["--spec", GPT2, "--gpu-memory", "4", "--json"]) == 1
    plan = json.loads(capsys.readouterr().out)
    assert not plan["fits"] and [s["fits"] for s in plan["steps"]] == [False, False]
    # Halving the micro-batch through an override makes the pretrain step fit 4 GB; the recommender offers DDP.
    assert _run(["--spec", GPT2, "pretrain.micro_batch_size=4", "finetune.micro_batch_size=2", "--gpu-memory", "4"]) == 0
    assert "Fits" in capsys.readouterr().out


def test_plan_spec_refuses_a_cluster_with_too_few_gpus(capsys):
    assert _run(["--spec", GPT2, "--gpus", "4"]) == 1
    out = capsys.readouterr().out
    assert "too few GPUs: the cluster has 4, step 'pretrain' needs 8" in out
    assert _run(["--spec", GPT2, "scale.workers=4", "--gpus", "4"]) == 0  # the spec's scale, overridden
    capsys.readouterr()


def test_plan_spec_reads_the_cluster_from_address(monkeypatch, capsys):
    import workflows.plan_spec as plan_spec

    asked = []
    monkeypatch.setattr(plan_spec, "cluster_resources", lambda address: asked.append(address) or {"gpus": 8.0, "cpus": 32.0})
    assert _run(["--spec", GPT2, "--address", "http://head:8265", "--json"]) == 1
    plan = json.loads(capsys.readouterr().out)
    assert asked == ["http://head:8265"] and plan["cluster"]["gpus"] == 8.0
    assert plan["problems"] == ["too few CPUs: the cluster has 32, step 'pretrain' needs 64 "
                                "(scale.workers 8 x scale.cpus_per_worker 8)"]


def test_plan_spec_on_cpu_workers(capsys):
    assert _run(["--spec", TINY]) == 0
    out = capsys.readouterr().out
    assert "2 CPU workers" in out and "runs on CPU workers" in out and "GB per worker" in out
    assert _run(["--spec", TINY, "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert not plan["on_gpu"] and plan["fits"]
    by_step = {s["step"]: s for s in plan["steps"]}
    assert set(by_step) == {"pretrain", "finetune", "reward", "dpo", "distill", "prune", "ppo", "grpo"}
    assert by_step["pretrain"]["precision"] == "fp32" and by_step["pretrain"]["fits"] is True  # precision auto on CPU
    assert by_step["reward"]["micro_batch"] == 32  # pairs: chosen and rejected both kept for backward
    assert by_step["distill"]["per_device_bytes"]["frozen_models"] == 4 * by_step["distill"]["n_params"]  # the teacher
    assert by_step["ppo"]["planned"] is False and by_step["grpo"]["planned"] is False


def test_plan_spec_on_cpu_checks_host_memory(capsys):
    # The largest model the schema takes does not "fit: CPU": its workers need more than a host has.
    big = ["pretrain.model.n_layer=512", "pretrain.model.n_embd=32768", "pretrain.model.n_head=256"]
    assert _run(["--spec", TINY, *big, "--json"]) == 1
    plan = json.loads(capsys.readouterr().out)
    assert not plan["fits"] and plan["problems"][0].startswith("step 'pretrain' (pretrain) needs ")
    assert "GB of host memory on CPU workers (2 workers x " in plan["problems"][0]


@pytest.mark.parametrize("argv,needle", [
    (["--spec", TINY, "pretrain.model.n_layer=lots"], "tiny.yaml:24: step 'pretrain', field 'model.n_layer'"),
    (["--spec", TINY, "pretrain.lr"], "tiny.yaml: override 'pretrain.lr'"),
    (["--spec", "/nonexistent/spec.yaml"], "/nonexistent/spec.yaml: cannot read the spec"),
    (["--spec", TINY, "--strategy", "ddp"], "--strategy does not go with --spec"),
    (["--spec", TINY, "--gpus", "-1"], "--gpus must be >= 0"),
    (["--spec", TINY, "--gpus", "8", "--address", "auto"], "not both"),
    (["--spec", TINY, "--address", "local"], "would start a Ray here"),
    (["--params", "1B", "--gpus", "8"], "--gpus: only with --spec"),
    (["--params", "1B", "scale.workers=2"], "overrides: only with --spec"),
])
def test_plan_spec_bad_input_exits_2(argv, needle, capsys):
    assert _run(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert needle in captured.err
