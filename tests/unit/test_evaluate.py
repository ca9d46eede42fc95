"""The evaluate phase without Ray: summarising per-item outputs, the report, the gate's rules."""

import math
from dataclasses import replace

import pytest

from components.artifact import Artifact
from components.core import metrics as M
from components.data.benchmarks import Item
from components.data.instructions import Example
from components.evaluate import report
from components.evaluate.config import EvaluateConfig, GateConfig, check
from components.evaluate.gate import decide
from components.evaluate.step import Request, _perturbed, _segments, summarise
from components.scoring import keep_perplexity, kept_perplexity
from workflows.engine import origin_of
from workflows.spec import needs_match


def out(**kw):
    return {"answer": "", "logprobs": [], "nll": 0.0, "count": 0, "seconds": 0.0, "new_tokens": 0, **kw}


def test_summarise_by_hand():
    ex = [Example("add", "p1", "7"), Example("add", "p2", "9"), Example("reverse", "p3", "b a")]
    sst = [Item("sst2", "good film\nAnswer:", (" negative", " positive"), 1), Item("sst2", "bad\nAnswer:", (" negative", " positive"), 0)]
    requests = [Request("ppl"), Request("ppl")]
    results = [out(nll=10.0, count=5), out(nll=2.0, count=1)]
    for e, answer in zip(ex, ["7", "8", "b a"]):
        requests += [Request("instructions", example=e), Request("response", example=e)]
        results += [out(answer=answer, seconds=0.5, new_tokens=2), out(logprobs=[-3.0])]
    # Original prompts: item 1 right with p=0.8, item 2 wrong with p=0.6; typo copies: both right.
    lp = lambda p_first: [math.log(p_first), math.log(1 - p_first)]  # noqa: E731
    requests += [Request("benchmark", item=sst[0]), Request("benchmark", item=sst[1]),
                 Request("benchmark", item=sst[0], variant="typo"), Request("benchmark", item=sst[1], variant="typo")]
    results += [out(logprobs=lp(0.2)), out(logprobs=lp(0.4)), out(logprobs=lp(0.1)), out(logprobs=lp(0.9))]

    s = summarise(requests, results, EvaluateConfig())
    assert s["perplexity"] == pytest.approx(math.exp(12 / 6))
    assert s["exact_match"] == pytest.approx(2 / 3)
    assert s["exact_match_add"] == 0.5 and s["exact_match_reverse"] == 1.0
    assert s["response_nll"] == pytest.approx(3.0)
    assert s["tokens_per_s"] == pytest.approx(6 / 1.5)
    assert s["rouge1_f1"] == pytest.approx(2 / 3) and s["bleu"] == M.bleu(["7", "8", "b a"], ["7", "9", "b a"])
    assert s["accuracy_sst2"] == 0.5 and s["accuracy_sst2_typo"] == 1.0 and s["robustness_sst2"] == 1.0
    # ECE by hand: confidences 0.8 (right) and 0.6 (wrong) fall in two bins: (|1-0.8| + |0-0.6|) / 2.
    assert s["ece_sst2"] == pytest.approx(0.4)
    assert s["accuracy"] == 0.5 and s["calibration_ece"] == pytest.approx(0.4)


def test_segments_and_perturbation_keep_the_cue():
    class Tok:
        eos_token_id = 0

        class backend_tokenizer:
            @staticmethod
            def encode_batch(docs, add_special_tokens=False):
                return [type("E", (), {"ids": [1] * len(d)}) for d in docs]

    segments = _segments(["abcde", "xyz"], Tok, max_tokens=8, segment=3)
    assert [len(s) for s in segments] == [3, 3, 2] and segments[0] == [1, 1, 1] and segments[1][2] == 0
    text = "The Film Was Fine\nAnswer:"
    changed = _perturbed(text, "case", 0)
    assert changed != text and changed.endswith("\nAnswer:")


ROWS = [
    {"step": "eval-pretrain", "model": "pretrain", "metrics": {"perplexity": 66.0, "exact_match": 0.0, "accuracy_sst2": 0.5}},
    {"step": "eval-finetune", "model": "finetune", "metrics": {"perplexity": 90.0, "exact_match": 0.25, "accuracy_sst2": 0.55}},
]


def test_report_table_has_every_checkpoint_and_deltas():
    md = report.markdown(ROWS)
    lines = md.splitlines()
    head = next(line for line in lines if line.startswith("| model"))
    assert head == "| model | evaluate step | perplexity | exact_match |"
    assert "| pretrain | eval-pretrain | 66 | 0 |" in md
    assert "| finetune | eval-finetune | 90 (+24) | 0.25 (+0.25) |" in md
    assert "| accuracy_sst2 | 0.5 | 0.55 (+0.05) |" in md  # the detail table, a column per model
    page = report.html_page(ROWS, report.figure(ROWS))
    assert page.count("<table>") == 2 and "data:image/png;base64," in page and "90 (+24)" in page
    assert "No evaluate step" in report.markdown([])
    assert report.size_quality_figure(ROWS) is None  # no sizes: nothing to plot


def test_report_leaves_out_speed_measured_under_different_loads():
    timed = [{**r, "metrics": {**r["metrics"], "tokens_per_s": s}} for r, s in zip(ROWS, (1800.0, 750.0))]
    assert report.columns(timed) == report.columns(ROWS) and "tokens_per_s" not in report.markdown(timed)


def test_size_quality_plot_has_a_point_per_sized_model():
    sized = [{**r, "metrics": {**r["metrics"], "model_bytes": b}} for r, b in zip(ROWS, (4.3e6, 2.0e6))]
    fig = report.size_quality_figure(sized)
    panels = [ax for ax in fig.axes if ax.collections]
    assert [ax.get_title() for ax in panels] == ["exact_match", "perplexity (lower better)"]
    assert [tuple(c.get_offsets()[0]) for c in panels[0].collections] == [(4.3, 0.0), (2.0, 0.25)]
    assert "model_bytes" in report.markdown(sized).splitlines()[4]  # a headline column


def test_gate_rules():
    cfg = GateConfig(min={"exact_match": 0.6}, max={"perplexity": 100}, no_regression={"exact_match": 0.01, "perplexity": 5})
    good = {"exact_match": 0.7, "perplexity": 50.0}
    assert decide(good, cfg, None) == []
    assert decide(good, cfg, {"exact_match": 0.705, "perplexity": 47.0}) == []  # within tolerance
    failures = decide({"exact_match": 0.5, "perplexity": 120.0}, cfg, {"exact_match": 0.7, "perplexity": 50.0})
    assert len(failures) == 4
    assert failures[0] == "exact_match 0.5 < min 0.6" and "perplexity 120 > max 100" in failures
    assert any("exact_match 0.5 regresses 0.2 from the deployed 0.7" in f for f in failures)
    assert any(f.startswith("perplexity 120 regresses 70") for f in failures)  # lower is better: a rise regresses
    assert decide({}, GateConfig(min={"bleu": 1}), None) == ["bleu: not measured (rule min 1)"]


def test_the_gate_bounds_forgetting():
    cfg = GateConfig(max={"forgetting_ratio": 2.0}, no_regression={"forgetting_ratio": 0.5})
    assert decide({"forgetting_ratio": 1.4}, cfg, {"forgetting_ratio": 1.2}) == []
    assert decide({"forgetting_ratio": 3892.0}, cfg, None) == ["forgetting_ratio 3892 > max 2"]
    assert decide({"forgetting_ratio": 1.9}, cfg, {"forgetting_ratio": 1.2})[0].startswith("forgetting_ratio 1.9 regresses 0.7")
    assert decide({"perplexity": 60.0}, cfg, None) == ["forgetting_ratio: not measured (rule max 2)"]


def test_a_model_remembers_its_pretrained_origin():
    pretrained = Artifact("/s/artifacts/pretrain-1", "model", "r1", "k1")
    pretrained = replace(pretrained, metrics=origin_of("pretrain", pretrained, {"corpus": Artifact("/s/c", "dataset", "r0", "k0")}))
    assert pretrained.metrics == {"origin_step": "pretrain", "origin_uri": "/s/artifacts/pretrain-1", "origin_key": "k1"}
    tuned = Artifact("/s/artifacts/finetune-2", "model", "r2", "k2")
    tuned = replace(tuned, metrics=origin_of("finetune", tuned, {"pretrain": pretrained}))
    int8 = Artifact("/s/artifacts/quantize-3", "model", "r3", "k3")
    # Down the lineage (fine-tuned, then quantized), the origin stays the pretrained model.
    assert origin_of("quantize", int8, {"finetune": tuned, "instructions": Artifact("/s/i", "instructions", "r4", "k4")}) \
        == pretrained.metrics


def test_perplexity_is_kept_per_model_and_segments(tmp_path):
    assert kept_perplexity(str(tmp_path), "k1", "seg") is None
    keep_perplexity(str(tmp_path), "k1", "seg", 75.4, "eval-pretrain")
    assert kept_perplexity(str(tmp_path), "k1", "seg") == {"perplexity": 75.4, "step": "eval-pretrain"}
    assert kept_perplexity(str(tmp_path), "k1", "other segments") is None and kept_perplexity(str(tmp_path), "k2", "seg") is None
    assert [p.name for p in (tmp_path / "scores" / "k1").iterdir()] == ["perplexity-seg.json"]  # no partial file left
    keep_perplexity("s3://bucket/run", "k1", "seg", 75.4, "eval-pretrain")  # an object store keeps none, and says nothing
    assert kept_perplexity("s3://bucket/run", "k1", "seg") is None


def test_evaluate_config_errors_name_the_field():
    with pytest.raises(ValueError, match="unknown benchmark 'glue'"):
        EvaluateConfig(benchmarks=["glue"])
    with pytest.raises(ValueError, match="extra"):
        GateConfig(minimum={"x": 1})
    with pytest.raises(ValueError, match="benchmark_paths.rte': no bundled copy"):
        check(EvaluateConfig(benchmarks=["rte"]))
    with pytest.raises(ValueError, match="benchmark_paths.sst2': /nowhere/dev.tsv does not exist"):
        check(EvaluateConfig(benchmark_paths={"sst2": "/nowhere/dev.tsv"}))


def test_optional_needs():
    want = ("model", "instructions?", "dataset?")
    assert needs_match(want, ["model"]) and needs_match(want, ["dataset", "instructions", "model"])
    assert not needs_match(want, ["dataset"]) and not needs_match(want, ["model", "model"])
    assert not needs_match(want, ["model", "dataset", "dataset"]) and not needs_match(("model",), ["model", "tokenizer"])
