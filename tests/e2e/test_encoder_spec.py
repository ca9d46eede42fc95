"""workflows/encoder-tiny.yaml end to end through the `lifecycle` command, on the session's Ray."""

from tests.conftest import ROOT, lifecycle
from tests.e2e.test_shipped_specs import step_run


def test_encoder_tiny_spec_pretrains_a_bert_and_fine_tunes_three_heads(ray_address, tmp_path):
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
