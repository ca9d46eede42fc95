"""The GPU presets of the main path, validated and planned offline: the hub is a cache holding only each
model's real config.json (tests/data/hub), which is all validation and `lifecycle plan` read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import ROOT
from workflows import cli
from workflows.spec import load_spec

HUB = ROOT / "tests" / "data" / "hub"
PRESETS = {  # spec -> (repo, GPUs, billions of parameters)
    "qwen2.5-0.5b-1gpu.yaml": ("Qwen/Qwen2.5-0.5B-Instruct", 1, 0.494),
    "llama-3.1-8b-8gpu.yaml": ("meta-llama/Llama-3.1-8B-Instruct", 8, 8.03),
    "finetune-base.yaml": ("HuggingFaceTB/SmolLM2-135M-Instruct", 0, 0.1345),
}


def config_only_cache(workdir: Path, repo: str, commit: str = "c" * 40) -> str:
    """A hub cache as huggingface_hub leaves it after fetching one file: refs/main -> snapshots/<commit>/config.json."""
    root = workdir / "hub" / f"models--{repo.replace('/', '--')}"
    (root / "snapshots" / commit).mkdir(parents=True)
    (root / "snapshots" / commit / "config.json").write_text((HUB / f"{repo.replace('/', '--')}.json").read_text())
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    return commit


@pytest.mark.parametrize("spec", list(PRESETS))
def test_a_preset_pins_its_hub_model_and_fits_its_gpus(spec, tmp_path, capsys):
    repo, gpus, billions = PRESETS[spec]
    commit = config_only_cache(tmp_path, repo)
    resolved = load_spec(ROOT / "workflows" / spec, workdir=tmp_path)
    base = resolved.configs["base"].resolved
    assert (base.family, base.revision) == ("causal", commit)
    flags = ["--gpus", str(gpus), "--gpu-memory", "80"] if gpus else []
    code = cli.main(["plan", "--spec", str(ROOT / "workflows" / spec), *flags, "--workdir", str(tmp_path), "--json"])
    plan = json.loads(capsys.readouterr().out)
    assert code == 0 and plan["fits"], plan["problems"]
    steps = {s["step"]: s for s in plan["steps"]}
    finetune = steps["finetune"]
    assert finetune["model_from"] == "base" and abs(finetune["n_params"] / 1e9 - billions) < 0.02 * billions
    # Activations sized at the examples' length, not the model's 8k/32k/128k context.
    assert finetune["seq"] == steps["dpo"]["seq"] == 512
    print(spec, {name: (s.get("strategy"), f"{s['per_device_bytes']['total'] / 1e9:.1f} GB") for name, s in steps.items() if s.get("planned")})
