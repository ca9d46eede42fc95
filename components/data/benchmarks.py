"""Benchmark suites in their public file formats, each item reduced to a log-likelihood choice.

Every task becomes `Item`s the way EleutherAI's lm-evaluation-harness scores multiple-choice
tasks: a `context` that ends with the answer cue ("Answer:") and a tuple of `options`, each a
continuation starting with a space; the model's pick is the option with the highest
log-likelihood given the context. Contexts and options follow lm-eval's task templates (GLUE
sst2/mnli/rte, SuperGLUE boolq, MMLU), so scores are comparable in kind.

Files are read in the formats their distributions use, so a downloaded file loads unchanged:
GLUE TSVs with a header row (SST-2 `dev.tsv`, MNLI `dev_matched.tsv`, RTE `dev.tsv`), jsonl
exports (MNLI `premise`/`hypothesis`/`label`, SuperGLUE BoolQ `val.jsonl`), and the original
headerless MMLU CSVs (`<subject>_test.csv`, or a directory of them). Small bundled sets,
generated from a seed by `write_bundled`, ship under `bundled/benchmarks/` for offline runs.
Malformed input raises `DataError` naming `file:line` and the field.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import random
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from components.data.corpus import DataError, jsonl_records, read_utf8

BUNDLED_DIR = Path(__file__).parent / "bundled" / "benchmarks"


@dataclass(frozen=True)
class Item:
    task: str  # e.g. "sst2", "mnli", "boolq", "mmlu"
    context: str  # prompt text the options continue; ends with the answer cue ("Answer:")
    options: tuple[str, ...]  # continuations, each starting with a space
    label: int  # index of the correct option
    subject: str = ""  # MMLU subject / GLUE config, "" if none


# --- reading one record ---------------------------------------------------------------------
# A record is a dict of column -> value, whatever the file type; `where` is "file:line".


def _value(record: dict, names: tuple[str, ...], where: str):
    """The first of `names` (aliases across distributions) present in the record."""
    for name in names:
        if name in record:
            return name, record[name]
    aliases = f" (or {', '.join(map(repr, names[1:]))})" if len(names) > 1 else ""
    raise DataError(f"{where}: missing field {names[0]!r}{aliases} (fields: {sorted(record)})")


def _text(record: dict, *names: str, where: str, allow_empty: bool = False) -> str:
    name, value = _value(record, names, where)
    if not isinstance(value, str):
        raise DataError(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise DataError(f"{where}: field {name!r} is empty")
    return value


def _label(record: dict, *names: str, classes: tuple[str, ...], where: str) -> int:
    """An index into `classes`, from an int, a digit string (TSV) or a class name (any case)."""
    name, value = _value(record, names, where)
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        value = int(value)
    if isinstance(value, str):
        lowered = [c.lower() for c in classes]
        if value.strip().lower() in lowered:
            return lowered.index(value.strip().lower())
        raise DataError(f"{where}: field {name!r} is {value!r}, expected one of {list(classes)} "
                        f"or 0..{len(classes) - 1}")
    if isinstance(value, bool):  # BoolQ's true/false; bool is an int, so test it first
        value = int(value)
    if not isinstance(value, int):
        raise DataError(f"{where}: field {name!r} must be an integer or a class name, got {type(value).__name__}")
    if not 0 <= value < len(classes):
        raise DataError(f"{where}: field {name!r} is {value}, out of range 0..{len(classes) - 1} "
                        f"({', '.join(classes)})")
    return value


# --- building an Item per task (lm-eval's templates) ----------------------------------------


def _sst2(record: dict, where: str, subject: str) -> Item:
    sentence = _text(record, "sentence", where=where)
    label = _label(record, "label", classes=("negative", "positive"), where=where)
    context = f"{sentence}\nQuestion: Is this sentence positive or negative?\nAnswer:"
    return Item("sst2", context, (" negative", " positive"), label, subject)


def _mnli(record: dict, where: str, subject: str) -> Item | None:
    # MultiNLI's own jsonl/TSV say sentence1/sentence2/gold_label; GLUE's jsonl premise/hypothesis/label.
    premise = _text(record, "premise", "sentence1", where=where)
    hypothesis = _text(record, "hypothesis", "sentence2", where=where).strip()
    if record.get("gold_label", record.get("label")) == "-":
        return None  # annotators did not agree: no gold label, GLUE drops these pairs too
    label = _label(record, "label", "gold_label", classes=("entailment", "neutral", "contradiction"), where=where)
    hypothesis += "" if hypothesis.endswith(".") else "."
    context = f"{premise}\nQuestion: {hypothesis} True, False or Neither?\nAnswer:"
    return Item("mnli", context, (" True", " Neither", " False"), label, subject)


def _rte(record: dict, where: str, subject: str) -> Item:
    premise = _text(record, "sentence1", "premise", where=where)
    hypothesis = _text(record, "sentence2", "hypothesis", where=where)
    label = _label(record, "label", classes=("entailment", "not_entailment"), where=where)
    context = f"{premise}\nQuestion: {hypothesis} True or False?\nAnswer:"
    return Item("rte", context, (" True", " False"), label, subject)


def _boolq(record: dict, where: str, subject: str) -> Item:
    passage = _text(record, "passage", where=where)
    question = _text(record, "question", where=where)
    # SuperGLUE's val.jsonl says "label": true/false; google/boolq says "answer".
    label = _label(record, "label", "answer", classes=("false", "true"), where=where)
    context = f"{passage}\nQuestion: {question}?\nAnswer:"
    return Item("boolq", context, (" no", " yes"), label, subject)


_LETTERS = "ABCD"


def _mmlu(record: dict, where: str, subject: str) -> Item:
    question = _text(record, "question", where=where)
    if "choices" in record:  # the Hugging Face layout (cais/mmlu): a list and an int answer
        choices = record["choices"]
        if not isinstance(choices, list) or len(choices) != 4 or not all(isinstance(c, str) for c in choices):
            raise DataError(f"{where}: field 'choices' must be a list of 4 strings")
    else:  # the original CSV layout: one column per letter
        choices = [_text(record, letter, where=where, allow_empty=True) for letter in _LETTERS]
    label = _label(record, "answer", classes=tuple(_LETTERS), where=where)
    subject = record.get("subject") or subject
    if not subject:
        raise DataError(f"{where}: no MMLU subject (name the file <subject>_test.csv)")
    lines = [f"The following are multiple choice questions about {subject.replace('_', ' ')}.", "", question.strip()]
    lines += [f"{letter}. {choice}" for letter, choice in zip(_LETTERS, choices)]
    return Item("mmlu", "\n".join(lines) + "\nAnswer:", tuple(f" {x}" for x in _LETTERS), label, subject)


# --- reading records from files ---------------------------------------------------------------


def _read(path: Path) -> str:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    return read_utf8(path)


def _tsv_records(path: Path) -> Iterator[tuple[str, dict]]:
    """GLUE TSV: a header row, then one row per line, tab-separated and never quoted.

    GLUE sentences contain bare quote characters, so a csv reader with quoting would merge rows;
    the GLUE loaders read these files with quoting off, as this does.
    """
    lines = _read(path).split("\n")
    if not lines[0].strip():
        raise DataError(f"{path}:1: expected a header row of tab-separated column names")
    header = lines[0].rstrip("\r").split("\t")
    for lineno, line in enumerate(lines[1:], start=2):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        values = line.split("\t")
        if len(values) != len(header):
            raise DataError(f"{path}:{lineno}: expected {len(header)} tab-separated fields "
                            f"({', '.join(header)}), got {len(values)}")
        yield f"{path}:{lineno}", dict(zip(header, values))


_MMLU_NAME = re.compile(r"(.+)_(dev|val|test)\.csv")


def _mmlu_csv_records(path: Path) -> Iterator[tuple[str, dict]]:
    """An original MMLU CSV: no header; question, A, B, C, D, answer letter; subject from the file name."""
    m = _MMLU_NAME.fullmatch(path.name)
    if not m:
        raise DataError(f"{path}: cannot tell the MMLU subject; name the file <subject>_dev|val|test.csv")
    reader = csv.reader(io.StringIO(_read(path), newline=""))
    start = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise DataError(f"{path}:{start}: malformed CSV row: {e}") from e
        # A quoted field may span lines, so a row starts one line after the previous one ended.
        where, start = f"{path}:{start}", reader.line_num + 1
        if not row or not "".join(row).strip():
            continue
        if len(row) != 6:
            raise DataError(f"{where}: expected 6 columns (question, A, B, C, D, answer), got {len(row)}")
        yield where, dict(zip(("question", *_LETTERS, "answer"), row)) | {"subject": m.group(1)}


_READERS: dict[str, Callable[[Path], Iterator[tuple[str, dict]]]] = {
    ".tsv": _tsv_records, ".jsonl": jsonl_records, ".csv": _mmlu_csv_records,
}


@dataclass(frozen=True)
class Format:
    build: Callable[[dict, str, str], Item | None]  # (record, "file:line", subject) -> Item, None = skip
    suffixes: tuple[str, ...]  # file types the public distribution comes in
    bundled: str | None  # the shipped copy, relative to BUNDLED_DIR (None: bring your own file)
    hf_splits: tuple[tuple[str, str], ...] = ()  # split renames on the hub, e.g. validation -> validation_matched


FORMATS: dict[str, Format] = {
    "sst2": Format(_sst2, (".tsv", ".jsonl"), "sst2/dev.tsv"),
    "mnli": Format(_mnli, (".tsv", ".jsonl"), "mnli/validation_matched.jsonl",
                   (("validation", "validation_matched"),)),  # GLUE's mnli has no plain "validation"
    "rte": Format(_rte, (".tsv", ".jsonl"), None),
    "boolq": Format(_boolq, (".jsonl",), "boolq/val.jsonl"),
    "mmlu": Format(_mmlu, (".csv",), "mmlu"),  # a directory of <subject>_test.csv files
}

# load_benchmark's split names -> the suffix of MMLU's file names.
_MMLU_SPLITS = {"validation": "val", "val": "val", "test": "test", "dev": "dev", "train": "dev"}


def _format(task: str) -> Format:
    if task not in FORMATS:
        raise DataError(f"unknown benchmark task {task!r} (known: {sorted(FORMATS)})")
    return FORMATS[task]


def bundled_path(task: str) -> Path:
    """The shipped copy of `task` under components/data/bundled/benchmarks/ (a directory for mmlu)."""
    fmt = _format(task)
    if fmt.bundled is None:
        raise DataError(f"no bundled copy of {task!r}; pass the path of a downloaded file")
    return BUNDLED_DIR / fmt.bundled


def _file_records(task: str, path: Path, split: str | None) -> Iterator[tuple[str, dict]]:
    fmt = _format(task)
    if path.is_dir():
        if task != "mmlu":
            raise DataError(f"{path}: {task} reads a single file ({', '.join(fmt.suffixes)}), not a directory")
        # The MMLU tarball holds dev/, val/ and test/; split picks the files (None: all, the bundled set).
        pattern = "*.csv" if split is None else f"*_{_MMLU_SPLITS.get(split, split)}.csv"
        files = sorted(p for p in path.rglob(pattern) if p.is_file())
        if not files:
            raise DataError(f"{path}: no MMLU files named <subject>{pattern[1:]}")
        for f in files:
            yield from _mmlu_csv_records(f)
        return
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.suffix not in fmt.suffixes:
        raise DataError(f"{path}: {task} files are {' or '.join(fmt.suffixes)}, got {path.suffix or 'no suffix'!r}")
    yield from _READERS[path.suffix](path)


def _hf_spec(spec: str) -> tuple[str, str]:
    """(name, config) of "NAME[/CONFIG]" or "NAME:CONFIG"; NAME may be owner/name ("nyu-mll/glue/sst2")."""
    if ":" in spec:
        name, _, config = spec.partition(":")
    else:
        name, _, config = spec.rpartition("/") if "/" in spec else (spec, "", "")
    if not name:
        raise DataError(f'hf:{spec}: must look like "hf:NAME[/CONFIG]" or "hf:NAME:CONFIG"')
    return name, config


def _hf_records(spec: str, split: str) -> Iterator[tuple[str, dict]]:
    """Rows of a Hugging Face dataset through `datasets.load_dataset` (needs the hub or its cache)."""
    name, config = _hf_spec(spec)
    import datasets  # deferred: datasets is heavy, and only an hf: benchmark needs it

    try:
        ds = datasets.load_dataset(name, config or None, split=split)
    except Exception as e:  # offline, unknown name/config/split: datasets raises many types
        raise DataError(f"hf:{spec}: cannot load dataset {name!r} config {config or None!r} split {split!r} "
                        f"(hub unreachable or unknown name?): {e}") from e
    for i, row in enumerate(ds):
        yield f"hf:{spec}[{split}]:row {i}", dict(row)


def load_benchmark(
    task: str, path: str | os.PathLike | None = None, split: str = "validation", limit: int | None = None
) -> list[Item]:
    """The items of `task` from `path`, in file order, the first `limit` of them if given.

    `path` is None or `bundled_path(task)` for the bundled copy (one fixed set: `split` is
    ignored), a file in the task's public format, an MMLU directory (files `*_<split>.csv`,
    validation = `_val`), or "hf:NAME[/CONFIG]" to load split `split` through
    `datasets.load_dataset` (needs the hub or its cache). Records GLUE marks as having no gold
    label ("-") are skipped.
    """
    fmt = _format(task)
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}")
    source, subject = (str(path) if path is not None else None), ""
    if source is None or (fmt.bundled and Path(source).expanduser().resolve() == bundled_path(task).resolve()):
        records, source = _file_records(task, bundled_path(task), None), str(bundled_path(task))
    elif source.startswith("hf:"):
        subject = _hf_spec(source[3:])[1]  # the GLUE config; MMLU rows name their own subject
        records = _hf_records(source[3:], dict(fmt.hf_splits).get(split, split))
    else:
        records = _file_records(task, Path(source).expanduser(), split)
    built = (fmt.build(r, where, subject) for where, r in records)
    # Lazily, so a limit reads only the head of a large file.
    items = list(itertools.islice((item for item in built if item is not None), limit))
    if not items:
        raise DataError(f"{source}: no {task} items")
    return items


# --- bundled sets, generated from a seed ---------------------------------------------------------

_NAMES = "Ada Bob Cleo Dan Eve Finn Gus Hana Ivan Jo Kim Leo Mia Nora Omar Pia".split()
_CITIES = "Rome Paris Oslo Lima Cairo Tokyo Delhi Quito Berlin Madrid Dublin Seoul".split()
_JOBS = "teacher doctor baker pilot farmer nurse lawyer painter singer cook".split()  # all take "a"
_PETS = "cat dog fish bird frog horse rabbit goat".split()
_COLORS = "red blue green black white gray brown".split()

# GLUE's SST-2 text is lower-cased and tokenized (" 's", " ."); the bundled sentences are too.
_SST_SUBJECTS = ("the film", "this movie", "the story", "the acting", "the soundtrack", "the ending",
                 "the script", "the director 's work", "the cast", "the plot")
_SST_WORDS = (("dull", "boring", "clumsy", "tedious", "awful", "bland", "messy", "forgettable"),
              ("wonderful", "moving", "brilliant", "charming", "delightful", "funny", "gripping", "beautiful"))
_SST_TEMPLATES = ("{s} is {i}{w} .", "{s} feels {i}{w} from start to finish .", "all in all , {s} is {i}{w} .")
_INTENSIFIERS = ("", "truly ", "rather ", "utterly ", "quite ")


def _gen_sst2(rng: random.Random) -> dict:
    label = rng.randrange(2)  # the one sentiment word decides the label
    sentence = rng.choice(_SST_TEMPLATES).format(
        s=rng.choice(_SST_SUBJECTS), i=rng.choice(_INTENSIFIERS), w=rng.choice(_SST_WORDS[label]))
    return {"sentence": sentence, "label": label}


def _other(rng: random.Random, pool: list[str], value: str) -> str:
    return rng.choice([x for x in pool if x != value])


def _gen_mnli(rng: random.Random) -> dict:
    name, city, job = rng.choice(_NAMES), rng.choice(_CITIES), rng.choice(_JOBS)
    premise = f"{name} lives in {city} and works as a {job}."
    label = rng.randrange(3)
    hypothesis = rng.choice([  # entailment: restates a fact; neutral: adds one; contradiction: denies one
        (f"{name} lives in {city}.", f"{name} works as a {job}."),
        (f"{name} has a {rng.choice(_PETS)}.", f"{name} was born in {_other(rng, _CITIES, city)}."),
        (f"{name} lives in {_other(rng, _CITIES, city)}.", f"{name} does not work as a {job}."),
    ][label])
    return {"premise": premise, "hypothesis": hypothesis, "label": label}


def _gen_boolq(rng: random.Random) -> dict:
    name, city, job = rng.choice(_NAMES), rng.choice(_CITIES), rng.choice(_JOBS)
    color, pet = rng.choice(_COLORS), rng.choice(_PETS)
    passage = (f"{name} is a {job} who lives in {city}. Every morning {name} walks a {color} {pet} "
               f"along the river before work.")
    answer = rng.random() < 0.5
    # A "no" question swaps one fact for another value. BoolQ questions are lower case, without "?".
    kind = rng.randrange(3)
    if kind == 0:
        question = f"does {name} live in {city if answer else _other(rng, _CITIES, city)}"
    elif kind == 1:
        question = f"is {name} a {job if answer else _other(rng, _JOBS, job)}"
    else:
        question = f"does {name} walk a {color if answer else _other(rng, _COLORS, color)} {pet}"
    return {"question": question.lower(), "passage": passage, "label": answer}


def _choices(rng: random.Random, answer: str, distractors: list[str]) -> tuple[list[str], str]:
    """Four options: the answer and three distinct distractors, shuffled; and the answer's letter."""
    options = [answer, *rng.sample(sorted(set(distractors) - {answer}), 3)]
    rng.shuffle(options)
    return options, _LETTERS[options.index(answer)]


def _gen_elementary_math(rng: random.Random) -> list[str]:
    a, b = rng.randint(13, 40), rng.randint(2, 12)  # a > b: no negative answers
    question, answer = rng.choice([
        (f"What is {a} + {b}?", a + b),
        (f"What is {a} - {b}?", a - b),
        (f"What is {a} times {b}?", a * b),
        # A comma inside a question: the CSV quotes it, as MMLU's own files do.
        (f"If Ada has {a} apples and eats {b}, how many apples are left?", a - b),
    ])
    near = [str(answer + d) for d in (-10, -2, -1, 1, 2, 10) if answer + d >= 0]
    options, letter = _choices(rng, str(answer), near)
    return [question, *options, letter]


_COUNTRIES = [  # country, capital, continent
    tuple(row.split(":")) for row in (
        "France:Paris:Europe, Germany:Berlin:Europe, Italy:Rome:Europe, Spain:Madrid:Europe, "
        "Portugal:Lisbon:Europe, Norway:Oslo:Europe, Ireland:Dublin:Europe, Greece:Athens:Europe, "
        "Poland:Warsaw:Europe, Japan:Tokyo:Asia, India:New Delhi:Asia, China:Beijing:Asia, "
        "South Korea:Seoul:Asia, Thailand:Bangkok:Asia, Vietnam:Hanoi:Asia, Egypt:Cairo:Africa, "
        "Kenya:Nairobi:Africa, Nigeria:Abuja:Africa, Ghana:Accra:Africa, Morocco:Rabat:Africa, "
        "Peru:Lima:South America, Ecuador:Quito:South America, Chile:Santiago:South America, "
        "Argentina:Buenos Aires:South America, Colombia:Bogota:South America, Canada:Ottawa:North America, "
        "Mexico:Mexico City:North America, Cuba:Havana:North America, Australia:Canberra:Oceania, "
        "New Zealand:Wellington:Oceania"
    ).split(", ")
]


def _gen_geography(rng: random.Random) -> list[str]:
    country, capital, continent = rng.choice(_COUNTRIES)
    if rng.random() < 0.5:
        question, answer, pool = f"What is the capital of {country}?", capital, [c[1] for c in _COUNTRIES]
    else:
        question, answer, pool = f"On which continent is {country}?", continent, [c[2] for c in _COUNTRIES]
    options, letter = _choices(rng, answer, pool)
    return [question, *options, letter]


_MMLU_SUBJECTS: dict[str, Callable[[random.Random], list[str]]] = {
    "elementary_math": _gen_elementary_math,
    "high_school_geography": _gen_geography,
}


def _distinct(gen: Callable[[random.Random], dict | list], key: Callable, n: int, rng_name: str) -> list:
    """`n` records of `gen` with distinct keys, from `random.Random(rng_name)`; ValueError if it cannot."""
    rng, seen = random.Random(rng_name), {}
    for _ in range(50 * n):  # duplicates are re-drawn; bounded for small template spaces
        record = gen(rng)
        seen.setdefault(key(record), record)
        if len(seen) == n:
            return list(seen.values())
    raise ValueError(f"{rng_name}: only {len(seen)} distinct records, asked {n}")


def _write_atomic(path: Path, text: str) -> None:
    """Whole file or nothing: a temp file in the same directory, then os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; these are shipped, readable data files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def write_bundled(directory: str | os.PathLike, n_per_task: int = 40, seed: int = 0) -> dict[str, Path]:
    """Write each bundled set under `directory` in its public format; returns task -> path to load.

    Same seed, same bytes. Each task draws from its own `random.Random(f"{seed}:{task}")`. MMLU's
    `n_per_task` questions are shared out over its subjects, one `<subject>_test.csv` each, and its
    returned path is the directory. The shipped copy is `write_bundled(BUNDLED_DIR)`.
    """
    if n_per_task < 1:
        raise ValueError(f"n_per_task must be >= 1, got {n_per_task}")
    root, out = Path(directory), {}
    sst2 = _distinct(_gen_sst2, lambda r: r["sentence"], n_per_task, f"{seed}:sst2")
    out["sst2"] = root / FORMATS["sst2"].bundled
    _write_atomic(out["sst2"], "sentence\tlabel\n" + "".join(f"{r['sentence']}\t{r['label']}\n" for r in sst2))

    mnli = _distinct(_gen_mnli, lambda r: (r["premise"], r["hypothesis"]), n_per_task, f"{seed}:mnli")
    out["mnli"] = root / FORMATS["mnli"].bundled
    _write_atomic(out["mnli"], _jsonl([r | {"idx": i} for i, r in enumerate(mnli)]))  # GLUE's export has idx

    boolq = _distinct(_gen_boolq, lambda r: (r["passage"], r["question"]), n_per_task, f"{seed}:boolq")
    out["boolq"] = root / FORMATS["boolq"].bundled
    _write_atomic(out["boolq"], _jsonl([{"question": r["question"], "passage": r["passage"], "idx": i,
                                         "label": r["label"]} for i, r in enumerate(boolq)]))

    out["mmlu"] = root / FORMATS["mmlu"].bundled
    base, extra = divmod(n_per_task, len(_MMLU_SUBJECTS))
    for i, (subject, gen) in enumerate(_MMLU_SUBJECTS.items()):
        n = base + (i < extra)
        rows = _distinct(gen, lambda r: r[0], n, f"{seed}:mmlu:{subject}") if n else []
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)  # minimal quoting, like MMLU's pandas export
        _write_atomic(out["mmlu"] / f"{subject}_test.csv", buf.getvalue())
    return out


# --- classifier data (the encoder family's classify phase) ---------------------------------------

_TRAINABLE = {"sst2": (_gen_sst2, lambda r: r["sentence"]), "mnli": (_gen_mnli, lambda r: (r["premise"], r["hypothesis"]))}


def generated_records(task: str, n: int, seed: int) -> list[dict]:
    """`n` distinct generated sst2 or mnli records (the bundled files' fields), for TRAINING a classifier.

    Drawn from `random.Random(f"{seed}:{task}:train")`, another stream than write_bundled's, so
    the bundled dev files stay a held-out test set (drop any chance overlap by text).
    """
    if task not in _TRAINABLE:
        raise DataError(f"no generator of {task!r} training records (have: {sorted(_TRAINABLE)})")
    gen, key = _TRAINABLE[task]
    return _distinct(gen, key, n, f"{seed}:{task}:train")


def dev_records(task: str, n: int, seed: int = 0) -> list[dict]:
    """The first `n` distinct sst2 or mnli records of write_bundled's stream `random.Random(f"{seed}:{task}")`:
    with seed 0, the bundled dev file's 40 first, then more of the same kind, for a held-out set
    larger than the bundled one (load_examples drops training records that overlap it by text)."""
    if task not in _TRAINABLE:
        raise DataError(f"no generator of {task!r} dev records (have: {sorted(_TRAINABLE)})")
    gen, key = _TRAINABLE[task]
    return _distinct(gen, key, n, f"{seed}:{task}")


def labelled_texts(task: str, records: list[tuple[str, dict]]) -> list[tuple[str, str, str | None, int]]:
    """("file:line", text, text_pair or None, label) of sst2 / mnli records given as ("file:line", record), with
    the same field aliases, label names and errors as load_benchmark."""
    out = []
    for where, record in records:
        if task == "sst2":
            out.append((where, _text(record, "sentence", where=where), None,
                        _label(record, "label", classes=("negative", "positive"), where=where)))
        elif record.get("gold_label", record.get("label")) != "-":  # mnli: no gold label, skipped as GLUE does
            out.append((where, _text(record, "premise", "sentence1", where=where), _text(record, "hypothesis", "sentence2", where=where),
                        _label(record, "label", "gold_label", classes=("entailment", "neutral", "contradiction"), where=where)))
    return out


def file_records(task: str, path: str | os.PathLike | None = None) -> list[tuple[str, dict]]:
    """("file:line", record) of a GLUE TSV / jsonl file of `task`; the bundled copy when path is None."""
    return list(_file_records(task, Path(path).expanduser() if path is not None else bundled_path(task), None))


# --- perturbations for robustness checks -------------------------------------------------------

PERTURBATIONS = ("typo", "case", "whitespace")
_WORD = re.compile(r"[A-Za-z]{2,}")


def perturb(text: str, kind: str, seed: int) -> str:
    """`text` with a surface change of `kind`, the same for the same (text, kind, seed).

    "typo" swaps two adjacent, different letters in ~10% of the words (at least one);
    "case" upper-cases everything; "whitespace" widens ~30% of the spaces (at least one) by
    one or two. Apply it to the content (question, passage), not to a template's answer cue.
    """
    if kind not in PERTURBATIONS:
        raise ValueError(f"unknown perturbation {kind!r} (known: {list(PERTURBATIONS)})")
    if kind == "case":
        return text.upper()
    # Seeded by the text too, so different items get different edits under one seed.
    rng = random.Random(f"{seed}:{kind}:{text}")
    chars = list(text)
    if kind == "typo":
        # Only words with two different adjacent letters: swapping "ll" would change nothing.
        spans = [m.span() for m in _WORD.finditer(text) if any(a != b for a, b in zip(m[0], m[0][1:]))]
        for start, end in rng.sample(spans, min(len(spans), max(1, round(0.1 * len(spans))))):
            i = rng.choice([j for j in range(start, end - 1) if chars[j] != chars[j + 1]])
            chars[i], chars[i + 1] = chars[i + 1], chars[i]
    else:
        spaces = [i for i, c in enumerate(text) if c == " "]
        for i in rng.sample(spaces, min(len(spaces), max(1, round(0.3 * len(spaces))))):
            chars[i] = " " * rng.randint(2, 3)
    return "".join(chars)
