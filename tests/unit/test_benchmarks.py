"""Benchmark suites: bundled sets, loaders for each public file format, bad input, perturbations."""

import json
import re
from collections import Counter

import pytest

from components.data.benchmarks import (
    BUNDLED_DIR,
    FORMATS,
    Item,
    bundled_path,
    load_benchmark,
    perturb,
    write_bundled,
)
from components.data.corpus import DataError

BUNDLED = {"sst2": 2, "mnli": 3, "boolq": 2, "mmlu": 4}  # task -> number of options


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --- bundled sets -------------------------------------------------------------------------------


@pytest.mark.parametrize("task", sorted(BUNDLED))
def test_bundled_sets_load_as_specified(task):
    items = load_benchmark(task)
    assert len(items) == 40 and len({i.context for i in items}) == 40
    assert all(isinstance(i, Item) and i.task == task for i in items)
    assert all(i.context.endswith("\nAnswer:") for i in items)
    assert all(len(i.options) == BUNDLED[task] and all(o.startswith(" ") for o in i.options) for i in items)
    # Every class is the answer somewhere, so always picking one option cannot score 100%.
    assert set(Counter(i.label for i in items)) == set(range(BUNDLED[task]))
    assert load_benchmark(task, limit=5) == items[:5]
    assert load_benchmark(task, bundled_path(task)) == items


def test_bundled_options_and_subjects():
    assert load_benchmark("sst2")[0].options == (" negative", " positive")
    assert load_benchmark("mnli")[0].options == (" True", " Neither", " False")
    assert load_benchmark("boolq")[0].options == (" no", " yes")
    mmlu = load_benchmark("mmlu")
    assert mmlu[0].options == (" A", " B", " C", " D")
    assert Counter(i.subject for i in mmlu) == {"elementary_math": 20, "high_school_geography": 20}
    assert mmlu[0].context.startswith("The following are multiple choice questions about elementary math.\n\n")


def test_bundled_answers_are_right():
    # The generators must label correctly, or a perfect model would score below 100%.
    for item in load_benchmark("mmlu"):
        m = re.search(r"What is (\d+) (\+|-|times) (\d+)\?", item.context)
        if m:
            a, op, b = int(m[1]), m[2], int(m[3])
            expected = {"+": a + b, "-": a - b, "times": a * b}[op]
            letter = item.options[item.label].strip()
            assert re.search(rf"^{letter}\. {expected}$", item.context, re.M), item.context
    for item in load_benchmark("sst2"):
        positive = any(w in item.context for w in ("wonderful", "brilliant", "charming", "delightful"))
        negative = any(w in item.context for w in ("dull", "boring", "tedious", "awful"))
        assert not (positive and item.label == 0) and not (negative and item.label == 1)


def test_write_bundled_is_deterministic_and_matches_shipped_files(tmp_path):
    a = write_bundled(tmp_path / "a")
    write_bundled(tmp_path / "b")  # a second time: the same bytes
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    shipped = sorted(p.relative_to(BUNDLED_DIR) for p in BUNDLED_DIR.rglob("*") if p.is_file())
    assert [str(f) for f in files] == [
        "boolq/val.jsonl", "mmlu/elementary_math_test.csv", "mmlu/high_school_geography_test.csv",
        "mnli/validation_matched.jsonl", "sst2/dev.tsv",
    ] == [str(f) for f in shipped]
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() == (BUNDLED_DIR / f).read_bytes()
    assert {t: p.relative_to(tmp_path / "a") for t, p in a.items()} == {
        t: bundled_path(t).relative_to(BUNDLED_DIR) for t in BUNDLED}
    assert load_benchmark("mmlu", a["mmlu"], split="test") == load_benchmark("mmlu")
    other = write_bundled(tmp_path / "c", n_per_task=7, seed=1)
    assert len(load_benchmark("boolq", other["boolq"])) == 7
    assert load_benchmark("sst2", other["sst2"]) != load_benchmark("sst2")[:7]
    with pytest.raises(ValueError, match="n_per_task"):
        write_bundled(tmp_path / "d", n_per_task=0)


# --- public formats, hand-written -----------------------------------------------------------------


def test_sst2_glue_tsv(tmp_path):
    # GLUE's dev.tsv: header, lower-cased tokenized text, bare quotes (never CSV-quoted).
    path = _write(tmp_path / "dev.tsv", "sentence\tlabel\nit 's a charming journey . \t1\n"
                  "\"bad\" and dull . \t0\nunflinchingly bleak \t0\n")
    items = load_benchmark("sst2", path)
    assert [i.label for i in items] == [1, 0, 0]
    assert items[1] == Item("sst2", "\"bad\" and dull . \nQuestion: Is this sentence positive or negative?\nAnswer:",
                            (" negative", " positive"), 0)


def test_mnli_jsonl_tsv_and_string_labels(tmp_path):
    lines = [{"premise": "A man sleeps.", "hypothesis": "A man is asleep", "label": 0, "idx": 0},
             {"premise": "A man sleeps.", "hypothesis": "The man is tall.", "label": "neutral"},
             {"sentence1": "A dog runs.", "sentence2": "A dog sits.", "gold_label": "contradiction"},
             {"sentence1": "A dog runs.", "sentence2": "No agreement.", "gold_label": "-"}]  # skipped, as GLUE
    path = _write(tmp_path / "dev.jsonl", "".join(json.dumps(r) + "\n" for r in lines))
    items = load_benchmark("mnli", path)
    assert [i.label for i in items] == [0, 1, 2]
    # lm-eval's mnli template: the hypothesis gets a full stop if it lacks one.
    assert items[0].context == "A man sleeps.\nQuestion: A man is asleep. True, False or Neither?\nAnswer:"
    # GLUE's MNLI dev_matched.tsv: many columns, sentence1/sentence2/gold_label among them.
    tsv = _write(tmp_path / "dev_matched.tsv", "index\tgenre\tsentence1\tsentence2\tlabel1\tgold_label\n"
                 "0\tfiction\tA man sleeps.\tA man is asleep.\tentailment\tentailment\n")
    assert load_benchmark("mnli", tsv) == items[:1]
    rte = _write(tmp_path / "rte.tsv",
                 "index\tsentence1\tsentence2\tlabel\n0\tA cat naps.\tA cat moves.\tnot_entailment\n")
    assert load_benchmark("rte", rte) == [
        Item("rte", "A cat naps.\nQuestion: A cat moves. True or False?\nAnswer:", (" True", " False"), 1)]


def test_boolq_superglue_jsonl(tmp_path):
    path = _write(tmp_path / "val.jsonl",
                  '{"question": "is the sky blue", "passage": "The sky is blue.", "idx": 0, "label": true}\n\n'
                  '{"question": "is grass red", "passage": "Grass is green.", "idx": 1, "label": false}\n')
    assert load_benchmark("boolq", path) == [
        Item("boolq", "The sky is blue.\nQuestion: is the sky blue?\nAnswer:", (" no", " yes"), 1),
        Item("boolq", "Grass is green.\nQuestion: is grass red?\nAnswer:", (" no", " yes"), 0),
    ]


def test_mmlu_csv_with_quoted_commas_and_a_directory(tmp_path):
    text = ('"Which is larger, 2 or 3?",2,3,"both, equally",neither,B\n'
            '"A line\nbreak?",a,b,c,d,D\n')
    path = _write(tmp_path / "test" / "abstract_algebra_test.csv", text)
    items = load_benchmark("mmlu", path)
    assert items[0] == Item(
        "mmlu",
        "The following are multiple choice questions about abstract algebra.\n\n"
        "Which is larger, 2 or 3?\nA. 2\nB. 3\nC. both, equally\nD. neither\nAnswer:",
        (" A", " B", " C", " D"), 1, "abstract_algebra")
    assert items[1].label == 3 and "A line\nbreak?\nA. a" in items[1].context
    # The MMLU tarball's layout: split picks <subject>_<split>.csv files, in name order.
    _write(tmp_path / "test" / "anatomy_test.csv", "Q?,a,b,c,d,A\n")
    _write(tmp_path / "val" / "anatomy_val.csv", "V?,a,b,c,d,C\n")
    assert [i.subject for i in load_benchmark("mmlu", tmp_path, split="test")] == [
        "abstract_algebra", "abstract_algebra", "anatomy"]
    assert [i.label for i in load_benchmark("mmlu", tmp_path)] == [2]  # validation -> _val.csv
    with pytest.raises(DataError, match="_dev.csv"):
        load_benchmark("mmlu", tmp_path, split="dev")


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("task, name, text, message", [
    ("sst2", "dev.tsv", "sentence\tlabel\ngood .\t1\ntoo\tmany\tfields\n", r"dev\.tsv:3: expected 2 tab-separated"),
    ("sst2", "dev.tsv", "sentence\tlabel\ngood .\t1\nbad .\t2\n", r"dev\.tsv:3: field 'label' is 2, out of range"),
    ("sst2", "dev.tsv", "text\tlabel\ngood .\t1\n", r"dev\.tsv:2: missing field 'sentence'"),
    ("sst2", "dev.tsv", "sentence\tlabel\ngood .\tmeh\n", r"dev\.tsv:2: field 'label' is 'meh'"),
    ("sst2", "dev.tsv", "sentence\tlabel\nbad .\t-1\n", r"dev\.tsv:2: field .label. is -1, out of range"),
    ("sst2", "dev.tsv", "", r"dev\.tsv:1: expected a header"),
    ("mnli", "d.jsonl", '{"premise": "a", "hypothesis": "b", "label": 0}\n{"premise": "a"\n',
     r"d\.jsonl:2: invalid JSON"),
    ("mnli", "d.jsonl", '{"premise": "a", "label": 0}\n', r"d\.jsonl:1: missing field 'hypothesis'"),
    ("mnli", "d.jsonl", '\n{"premise": "a", "hypothesis": "b", "label": 3}\n', r"d\.jsonl:2: field 'label' is 3"),
    ("mnli", "d.jsonl", '{"premise": "a", "hypothesis": "b", "label": "maybe"}\n',
     r"d\.jsonl:1: field 'label' is 'maybe'"),
    ("boolq", "val.jsonl", '{"question": "q", "passage": "", "label": true}\n',
     r"val\.jsonl:1: field 'passage' is empty"),
    ("boolq", "val.jsonl", '{"question": "q", "passage": "p", "label": 1.5}\n',
     r"val\.jsonl:1: field 'label' must be"),
    ("boolq", "val.jsonl", '{"question": "q", "passage": "p"}\n', r"val\.jsonl:1: missing field 'label'"),
    ("mmlu", "x_test.csv", "q,a,b,c,d,A\nq2,a,b,c,D\n", r"x_test\.csv:2: expected 6 columns"),
    ("mmlu", "x_test.csv", '"multi\nline",a,b,c,d,A\nq,a,b,c,d,E\n', r"x_test\.csv:3: field 'answer' is 'E'"),
    ("mmlu", "x_test.csv", "q,a,b,c,d,4\n", r"x_test\.csv:1: field 'answer' is 4, out of range"),
    ("mmlu", "questions.csv", "q,a,b,c,d,A\n", r"questions\.csv: cannot tell the MMLU subject"),
    ("mmlu", "x_test.tsv", "q\ta\n", r"x_test\.tsv: mmlu files are \.csv"),
    ("boolq", "val.jsonl", "", r"val\.jsonl: no boolq items"),
])
def test_bad_input_names_file_line_and_field(tmp_path, task, name, text, message):
    path = _write(tmp_path / name, text)
    with pytest.raises(DataError, match=message):
        load_benchmark(task, path)


def test_bad_task_path_and_limit(tmp_path):
    with pytest.raises(DataError, match="unknown benchmark task 'squad'"):
        load_benchmark("squad")
    with pytest.raises(DataError, match="unknown benchmark task"):
        bundled_path("squad")
    with pytest.raises(DataError, match="no bundled copy of 'rte'"):
        load_benchmark("rte")
    with pytest.raises(DataError, match="missing.tsv: no such file"):
        load_benchmark("sst2", tmp_path / "missing.tsv")
    with pytest.raises(DataError, match="reads a single file"):
        load_benchmark("sst2", tmp_path)
    with pytest.raises(ValueError, match="limit"):
        load_benchmark("sst2", limit=0)
    assert set(BUNDLED) < set(FORMATS)


# --- perturbations ------------------------------------------------------------------------------


TEXT = "The quick brown fox jumps over the lazy dog near the river bank today"


@pytest.mark.parametrize("kind", ["typo", "case", "whitespace"])
def test_perturb_is_deterministic_and_changes_text(kind):
    out = perturb(TEXT, kind, seed=0)
    assert out != TEXT and out == perturb(TEXT, kind, seed=0)
    assert perturb("ok", kind, seed=0) == perturb("ok", kind, seed=0)


def test_perturb_kinds():
    typo = perturb(TEXT, "typo", seed=0)
    words, changed = TEXT.split(), [(a, b) for a, b in zip(TEXT.split(), typo.split()) if a != b]
    assert len(typo.split()) == len(words) and 1 <= len(changed) <= 2  # ~10% of 14 words
    assert all(sorted(a) == sorted(b) and len(a) == len(b) for a, b in changed)  # letters swapped, not lost
    assert {perturb(TEXT, "typo", seed=s) for s in range(5)} != {typo}  # the seed matters
    assert perturb(TEXT, "case", seed=3) == TEXT.upper()
    spaced = perturb(TEXT, "whitespace", seed=0)
    assert spaced.split() == words and len(spaced) > len(TEXT) and "\n" not in spaced
    assert perturb("", "typo", seed=0) == "" and perturb("aa", "typo", seed=0) == "aa"  # nothing to swap
    with pytest.raises(ValueError, match="unknown perturbation"):
        perturb(TEXT, "reverse", seed=0)


# --- the performance benchmarks' bookkeeping (benchmarks/*.py; the measurements themselves are not tests) ---


def _bench(name):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_report_refresh_replaces_between_markers_and_keeps_the_rest():
    report = _bench("report")
    doc = ("# Benchmarks\n\nhand-written intro\n\n<!-- bench:serve_bench -->\nold table\n<!-- /bench:serve_bench -->\n\n"
           "- a note that stays\n\n<!-- bench:gone -->\nkept: no result\n<!-- /bench:gone -->\n")
    out = report.refresh(doc, {"serve_bench": "| a |\n|---|\n| 1 |", "train_bench": "`cmd` (machine)\n\n| b |"}, "2026-01-01")
    assert "old table" not in out and "<!-- bench:serve_bench -->\n| a |\n|---|\n| 1 |\n<!-- /bench:serve_bench -->" in out
    assert "hand-written intro" in out and "- a note that stays" in out and "kept: no result" in out
    assert out.endswith("## train_bench (2026-01-01)\n\n<!-- bench:train_bench -->\n`cmd` (machine)\n\n| b |\n<!-- /bench:train_bench -->\n")
    assert report.refresh(out, {"train_bench": "`cmd` (machine)\n\n| b |"}, "x") == out  # idempotent: no second section


def test_report_cleans_raw_output_and_formats_tables():
    report = _bench("report")
    raw = "INFO starting\n| m | v |\n|---|---|\n| x | 1 |\nINFO shutdown\n"
    assert report.clean(raw) == "| m | v |\n|---|---|\n| x | 1 |"
    assert report.clean("`cmd` (m)\n\n| t |\n") == "`cmd` (m)\n\n| t |"
    assert report.table(["a", "b"], [[1, "x"]], "lr") == "| a | b |\n|---|---:|\n| 1 | x |"


def test_workflow_bench_union_and_training_loop_seconds():
    from types import SimpleNamespace as NS

    wb = _bench("workflow_bench")
    assert wb.union([(0, 10), (5, 12), (20, 25)]) == 17
    assert wb.union([]) == 0
    history = {"tokens_per_s": [NS(step=20, value=4096.0), NS(step=10, value=2048.0)],
               "generation_s": [NS(step=1, value=1.5), NS(step=2, value=0.5)]}
    client = NS(get_metric_history=lambda run_id, key: history[key])
    run = NS(info=NS(run_id="r"), data=NS(params={"micro_batch_size": "16", "grad_accum": "1", "model.n_positions": "128"},
                                          metrics={"tokens_per_s": 1.0, "generation_s": 1.0}))
    # 10 steps of 16 x 128 tokens x 2 workers at 2048 tok/s, then 10 more at 4096 tok/s; plus PPO's 2 s.
    assert wb.loop_seconds(client, run, workers=2) == 20 + 10 + 2


def test_train_bench_windows_and_breakdown():
    tb = _bench("train_bench")
    per_step = 4096
    ev = {"start": 0.0, "fit_start": 1.0, "loop_start": 11.0, "loop_end": 40.0, "fit_end": 42.0, "end": 43.0,
          "reports": [{"entered": 20.0, "returned": 20.1, "metrics": {"step": 10, "tokens_per_s": per_step * 10 / 5.0}},
                      {"entered": 25.0, "returned": 25.1, "metrics": {"step": 20, "tokens_per_s": per_step * 10 / 4.0}},
                      {"entered": 35.0, "returned": 36.0, "metrics": {"step": 30, "tokens_per_s": per_step * 10 / 4.0}}],
          "calls": {"perplexity": [3.0, 2.0], "_report": [1.5], "_finish": [4.0], "_validation_loss": [0.5], "_batch": [0.01] * 30}}
    b = tb.breakdown(ev, per_step)
    assert [round(w["seconds"], 6) for w in b["windows"]] == [5.0, 4.0, 4.0]
    assert b["ray_train_start_s"] == 10 and b["loop_setup_s"] == 4.0 and b["initial_perplexity_s"] == 3.0
    assert round(b["training_s"], 6) == 13 and round(b["end_of_loop_s"], 6) == 40 - 15 - 13
    assert b["ray_train_stop_s"] == 2 and b["after_s"] == 1 and b["wall_s"] == 43 and b["export_s"] == 4.0
    assert round(tb.steady(b["windows"], per_step), 6) == per_step * 20 / 8  # the first window (warm-up) left out
