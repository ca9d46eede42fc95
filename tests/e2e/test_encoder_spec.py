"""workflows/encoder-tiny.yaml end to end through the `lifecycle` command, on the session's Ray."""

import pytest

from tests.conftest import ROOT, lifecycle
from tests.e2e.test_shipped_specs import step_run

pytestmark = pytest.mark.full  # `./scripts/test.sh --full` (CI runs the main path only: scripts/test.sh)


def test_encoder_tiny_spec_pretrains_a_bert_fine_tunes_three_heads_and_compresses_one(ray_address, tmp_path):
    out = lifecycle("run", str(ROOT / "workflows" / "encoder-tiny.yaml"), "--workdir", str(tmp_path), "--address", ray_address,
                    "--no-wait", timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr

    # Masked-LM pretraining: the hidden tokens are recovered far more often than by the untrained model.
    pretrain = step_run(tmp_path, "pretrain").data.metrics
    print(f"encoder pretrain: masked-token accuracy {pretrain['mlm_accuracy_initial']:.1%} -> {pretrain['mlm_accuracy_final']:.1%}")
    assert pretrain["mlm_accuracy_final"] > pretrain["mlm_accuracy_initial"] + 0.05

    # Each head: held-out accuracy well above the untrained head's (about chance).
    for task, margin in (("sst2", 0.3), ("mnli", 0.3), ("ner", 0.3)):
        m = step_run(tmp_path, task).data.metrics
        print(f"encoder {task}: accuracy {m['accuracy_before']:.1%} (untrained head) -> {m['accuracy_after']:.1%}"
              + (f", from scratch {m['accuracy_scratch']:.1%}" if "accuracy_scratch" in m else "")
              + (f", entity F1 {m['entity_f1_before']:.2f} -> {m['entity_f1_after']:.2f}" if task == "ner" else ""))
        assert m["accuracy_after"] > m["accuracy_before"] + margin
    assert step_run(tmp_path, "ner").data.metrics["entity_f1_after"] > 0.8
    # What pretraining bought: mnli fine-tuned from the pretrained encoder beats the same run from a fresh one.
    mnli = step_run(tmp_path, "mnli").data.metrics
    assert mnli["accuracy_after"] > mnli["accuracy_scratch"]
    # The gate read the sst2 classifier's evaluation (components/evaluate/encoder.py).
    assert step_run(tmp_path, "eval-sst2").data.metrics["accuracy_sst2"] > 0.8

    # Distillation (components/compress/encoder.py): a student of half the blocks, smaller and faster, well above
    # chance (1/3), the untrained head and itself as cut from the teacher, all scored on 1000 generated dev items.
    d = step_run(tmp_path, "distill-mnli").data.metrics
    print(f"encoder distill: student {d['params_ratio']:.0%} of the weights, x{d['speedup']:.2f} faster, accuracy "
          f"{d['accuracy_initial']:.1%} (as cut) -> {d['accuracy']:.1%} ± {d['accuracy_se']:.1%} (teacher {d['teacher_accuracy']:.1%}) "
          f"on {d['test_examples']:.0f}")
    assert d["test_examples"] == 1000 and d["student_params"] < 0.8 * d["teacher_params"] and d["speedup"] > 1.2
    assert d["accuracy"] > max(0.6, mnli["accuracy_before"] + 0.2, d["accuracy_initial"] + 0.2)
    # Pruning: the sparsity asked for is reached and held through recovery, which wins back accuracy pruning lost.
    p = step_run(tmp_path, "prune-mnli").data.metrics
    print(f"encoder prune: {p['sparsity']:.0%} of the block weights zero, accuracy {p['source_accuracy']:.1%} -> "
          f"{p['accuracy_before_recovery']:.1%} pruned -> {p['accuracy']:.1%} recovered (± {p['accuracy_se']:.1%}, {p['test_examples']:.0f} items)")
    assert abs(p["sparsity"] - 0.9) < 0.01
    assert p["accuracy"] > p["accuracy_before_recovery"] + 3 * p["accuracy_se"]
    q = step_run(tmp_path, "quantize-mnli").data.metrics
    print(f"encoder int8: linear weights x{q['linear_weight_bytes_ratio']:.2f}, x{q['speedup']:.2f} faster, accuracy "
          f"{q['source_accuracy']:.1%} -> {q['accuracy']:.1%} (± {q['accuracy_se']:.1%}, {q['test_examples']:.0f} items)")
    assert q["linear_weight_bytes_ratio"] < 0.35 and q["accuracy"] > q["source_accuracy"] - 2 * q["accuracy_se"]
