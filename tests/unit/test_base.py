"""The base phase: a pretrained checkpoint brought in from a folder, the hub's cache or the registry.

Tiny checkpoints of each architecture are written with `save_pretrained` (tests/checkpoints.py) and
read by the phase's real loading code; the hub is a cache folder this test writes (HF_HUB_OFFLINE
is set in tests/conftest.py), never the network. No Ray: the step runs in-process on a real
MLflow SQLite store.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from components import tracking
from components.artifact import StepContext
from components.base.config import BaseConfig
from components.base.source import resolve
from components.base.step import run
from tests.checkpoints import CONFIGS, save_checkpoint
from workflows import cli
from workflows.spec import SpecError, load_spec

FAMILY = {"bert": "masked", "roberta": "masked", "t5": "seq2seq", "bart": "seq2seq"}
SPEC = """\
name: b
steps:
  base:
    uses: base
    with:
      source: {source}
  corpus:
    uses: data
  instructions:
    uses: instructions
  finetune:
    uses: finetune
    needs: [base, instructions, corpus]
"""


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("checkpoints")
    return {arch: save_checkpoint(root / arch, arch, chat=arch == "qwen2") for arch in CONFIGS}


def _context(tmp_path: Path, step: str = "base", out: str = "out") -> StepContext:
    uri = tracking.tracking_uri_for(tmp_path)
    parent = tracking.start_workflow_run(uri, tmp_path, "t", "sha", {}, None)
    run_id = tracking.start_step_run(uri, parent, step, "base", "key", [], "sha", {})
    out = tmp_path / out
    out.mkdir()
    return StepContext(step, "base", tmp_path, out, str(tmp_path / "ray_storage"), uri, run_id, "key")


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_each_architecture_is_brought_in_and_loads_back_as_it_was(checkpoints, arch, tmp_path):
    cfg = resolve(BaseConfig(source=str(checkpoints[arch])), tmp_path)
    assert cfg.resolved.family == FAMILY.get(arch, "causal")
    assert cfg.resolved.model_type == arch and cfg.resolved.architecture == CONFIGS[arch][1]
    ctx = _context(tmp_path)
    artifact = run(cfg, {}, ctx)
    assert artifact.kind == "model" and artifact.metrics["parameters"] > 1000
    assert sorted(p.name for p in ctx.output_dir.glob("*.safetensors")) == ["model.safetensors"]
    assert not list(ctx.output_dir.glob("*.bin"))
    # The same weights: the saved copy is the checkpoint (float32 in, float32 out).
    before, after = load_file(checkpoints[arch] / "model.safetensors"), load_file(ctx.output_dir / "model.safetensors")
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    # Lineage: every weight file's digest, the architecture and the size.
    record = tracking.load_dict(ctx.tracking_uri, ctx.run_id, "base_source.json")
    digest = hashlib.sha256((checkpoints[arch] / "model.safetensors").read_bytes()).hexdigest()
    assert record["weights_sha256"] == {"model.safetensors": digest}
    assert record["architecture"] == CONFIGS[arch][1] and record["parameters"] == artifact.metrics["parameters"]


def test_a_tokenizer_without_pad_token_pads_with_eos(tmp_path):
    folder = save_checkpoint(tmp_path / "llama", "llama")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("pad_token", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    assert AutoTokenizer.from_pretrained(folder).pad_token is None, "the test needs a tokenizer without pad"
    ctx = _context(tmp_path)
    run(resolve(BaseConfig(source=str(folder)), tmp_path), {}, ctx)
    saved = AutoTokenizer.from_pretrained(ctx.output_dir)
    assert saved.pad_token == saved.eos_token == tokenizer.eos_token
    assert AutoModelForCausalLM.from_pretrained(ctx.output_dir).config.pad_token_id == saved.eos_token_id


def test_bfloat16_halves_the_copy(checkpoints, tmp_path):
    ctx = _context(tmp_path)
    run(resolve(BaseConfig(source=str(checkpoints["llama"]), dtype="bfloat16"), tmp_path), {}, ctx)
    model = AutoModelForCausalLM.from_pretrained(ctx.output_dir, dtype="auto")
    assert next(model.parameters()).dtype == torch.bfloat16
    ratio = (ctx.output_dir / "model.safetensors").stat().st_size / (checkpoints["llama"] / "model.safetensors").stat().st_size
    assert 0.45 < ratio < 0.55


def _hub_cache(workdir: Path, repo: str, folder: Path, commit: str = "a" * 40) -> str:
    """huggingface_hub's cache layout, as a download leaves it: refs/main names the snapshot's commit."""
    root = workdir / "hub" / f"models--{repo.replace('/', '--')}"
    shutil.copytree(folder, root / "snapshots" / commit)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    return commit


def test_hf_source_resolves_the_revision_to_its_commit_through_the_cache(checkpoints, tmp_path):
    commit = _hub_cache(tmp_path, "tiny-org/tiny-qwen", checkpoints["qwen2"])
    cfg = resolve(BaseConfig(source="hf:tiny-org/tiny-qwen"), tmp_path)
    assert cfg.resolved.revision == commit and cfg.resolved.model_type == "qwen2"
    ctx = _context(tmp_path)
    artifact = run(cfg, {}, ctx)
    assert artifact.metrics["source"] == f"hf:tiny-org/tiny-qwen@{commit}"
    assert tracking.client(ctx.tracking_uri).get_run(ctx.run_id).data.tags["lifecycle.base_revision"] == commit
    assert AutoTokenizer.from_pretrained(ctx.output_dir).chat_template, "the model's own chat template travels with it"
    assert "@" + commit[:12] in artifact.headline
    # A branch named in the source is pinned as well: the run records the commit, not "main".
    branch = resolve(BaseConfig(source="hf:tiny-org/tiny-qwen@main"), tmp_path)
    assert branch.resolved.revision == commit
    assert run(branch, {}, _context(tmp_path, out="out2")).metrics["source"] == f"hf:tiny-org/tiny-qwen@{commit}"


def test_a_registered_model_is_a_source(checkpoints, tmp_path):
    uri = tracking.tracking_uri_for(tmp_path)
    parent = tracking.start_workflow_run(uri, tmp_path, "t", "sha", {}, None)
    run_id = tracking.start_step_run(uri, parent, "earlier", "finetune", "k0", [], "sha", {})
    version = tracking.register_model(uri, run_id, "earlier-model", str(checkpoints["gpt2"]))
    cfg = resolve(BaseConfig(source=f"models:/earlier-model/{version}"), tmp_path)
    assert cfg.resolved.revision == f"earlier-model/{version}" and cfg.resolved.family == "causal"
    assert run(cfg, {}, _context(tmp_path)).metrics["parameters"] > 1000


def test_a_changed_folder_is_a_new_cache_key(checkpoints, tmp_path):
    folder = shutil.copytree(checkpoints["gpt2"], tmp_path / "m")
    first = resolve(BaseConfig(source=str(folder)), tmp_path).resolved.fingerprint
    (folder / "generation_config.json").write_text((folder / "generation_config.json").read_text() + " ")
    assert resolve(BaseConfig(source=str(folder)), tmp_path).resolved.fingerprint != first


@pytest.mark.parametrize("breakage, message", [
    ("no_config", r"no config.json in .* \(not a Hugging Face model folder\)"),
    ("pickled", r"pytorch_model.bin: pickled weights are refused"),
    ("no_tokenizer", r"no tokenizer in"),
    ("missing", r"no such folder"),
])
def test_bad_folders_are_refused_naming_the_file(checkpoints, tmp_path, breakage, message):
    folder = shutil.copytree(checkpoints["llama"], tmp_path / "m")
    if breakage == "no_config":
        (folder / "config.json").unlink()
    elif breakage == "pickled":
        (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    elif breakage == "no_tokenizer":
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (folder / name).unlink()
    else:
        shutil.rmtree(folder)
    with pytest.raises(ValueError, match="field 'source': .*" + message):
        resolve(BaseConfig(source=str(folder)), tmp_path)


def test_bad_sources_stop_the_cli_before_ray_with_exit_2_and_the_line(checkpoints, tmp_path, capsys):
    cases = {
        "hf:nobody/nothing": "cannot be reached",
        "models:/nothing/1": "no lifecycle runs here",
        str(checkpoints["bert"]): r"step 'finetune' \(finetune\) does not apply to a masked \(encoder\) model \(from 'base', "
                                  r"BertForMaskedLM from",
    }
    for source, message in cases.items():
        spec = tmp_path / "spec.yaml"
        spec.write_text(SPEC.format(source=source))
        assert cli.main(["run", str(spec), "--workdir", str(tmp_path / "wd")]) == 2
        err = capsys.readouterr().err
        assert re.search(message, err), err
        assert "spec.yaml:" in err
    assert not (tmp_path / "wd" / "artifacts").exists() and not (tmp_path / "wd" / "mlflow.db").exists()


def test_the_bad_field_is_named_with_its_line(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.format(source=tmp_path / "absent"))
    with pytest.raises(SpecError, match=r"spec.yaml:6: step 'base': field 'source': .*absent: no such folder"):
        load_spec(spec, workdir=tmp_path)
