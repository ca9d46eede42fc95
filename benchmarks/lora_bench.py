"""LoRA fine-tuning benchmark: the finetune component on Ray Train against a plain peft + torch loop of
the same model, data and cores.

    .venv/bin/python benchmarks/lora_bench.py [--steps 30] [--log-every 10] [--strategies fsdp[,ddp]] [--size 100m]
    .venv/bin/python benchmarks/lora_bench.py --size tiny --steps 4 --log-every 2 --no-write   # a toy run

1. The base, as a user brings one: a Llama-architecture model built from config with transformers
   (`--size 100m`: hidden 768, 12 layers, 12 heads, MLP 2048, untied embeddings: about 95M parameters
   with the ~6.6k vocabulary the BPE reaches; `--size tiny`: a ~2.5M toy), random weights, written with `save_pretrained`
   (safetensors) into a folder with the project's byte-level BPE (`train_bpe`, vocab up to 8192, trained
   on the bundled corpus and the instruction texts). That folder is what both sides load.
2. The data: the data and instructions steps' outputs (`run_data`, `run_instructions`, default
   configs, called in-process), the train split encoded as the component encodes it
   (`components.core.sft.encode_split`, the prompt masked out of the labels), each worker's batch
   of `--micro-batch` examples (the component's micro_batch_size) picked by `batch_rows` exactly as
   the loop picks it, so both sides see the very same batches, step by step.
3. Trained for the same `--steps` optimizer steps on the same 2 CPUs:
   - by the real finetune step, `components.finetune.step.run(FinetuneConfig(method="lora", ...))`,
     in-process with a real StepContext (temp workdir, SQLite MLflow, 2 workers x 1 CPU) on a
     private local Ray of 2 CPUs: it builds and checks the model, scores the base model's exact
     match and corpus perplexity, runs its TorchTrainer (`components.finetune.loop.train_loop`
     unchanged, reports to MLflow), exports and merges the adapter, and scores the result again.
     Once per strategy in `--strategies` (fsdp, the component's default, and/or ddp). Validation
     and the checkpoint happen only at the last step (eval_every = checkpoint_every = steps).
   - by a plain loop: 2 processes x 1 thread (torch.multiprocessing, gloo),
     `AutoModelForCausalLM.from_pretrained(folder)`, `peft.get_peft_model` with the LoraConfig
     the component builds (same rank, alpha, dropout, peft's default targets q_proj/v_proj, same
     seed: the trainable-parameter counts are checked equal), wrapped as components.core.parallel
     does (DDP; or FSDP2 `fully_shard` on each decoder layer, then the whole), AdamW (betas
     0.9/0.95) on the trainable parameters, the same warmup + cosine schedule and clipping, the
     same batches (padded before the clock starts), no scoring, no export. Run before Ray starts
     and again after it stops (bracketing the component's runs: their mean is the baseline, their
     difference shows the drift of the machine).
   Tokens are the non-padding tokens of the batches (prompt + response + eos; the padding share is
   printed), known exactly for every step since the batches are known, so both sides count the
   same tokens. Steady-state tokens/s: over the windows of `--log-every` steps after the first (the
   first holds the warm-up step). The finetune loop reports `examples_per_s` per window (its own
   clock, from the window's first step to its last, reports outside); a window's seconds are its
   examples / examples_per_s, its tokens those of its steps. The plain loop times the same windows
   with the same clock. End to end: all tokens / wall time (the component: the whole step.run call;
   the plain loop: process start to join).
4. Where the component's time goes: the step's own parts (`ctx.seconds` of StepContext.timed:
   score_before, ray_train, export, score_after) and, inside ray_train, timestamps from a wrapper
   of the loop (its start and end, every ray.train.report) and of TorchTrainer.fit: Ray Train start
   (controller, worker processes, process group), loop setup (model load + LoRA, wrapping), the
   training windows, the end of the loop (reports, final validation, gathering and exporting the
   merged model, the checkpoint upload), Ray Train stop, and the step's work after training (copy,
   metrics, plot). The end-to-end ratio without the scoring (which the plain loop does not do) is
   given too.

Prints a Markdown table; writes benchmarks/results/lora_bench.json and .md (see report.py) unless
`--no-write` (a run with `--size tiny` writes only where `--results` says).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from report import private_ray_env, start_private_ray, table, write_result  # noqa: E402

from components.deploy.ingress import free_port  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
# Llama shapes: hidden, layers, heads, MLP width. 100m: the ~100M-parameter base the issue asks for.
SIZES = {"100m": (768, 12, 12, 2048), "tiny": (128, 2, 4, 256)}
VOCAB = 8192  # the BPE's target size; what it reaches on the bundled text is what the model gets
CONTEXT = 1024
# Helpers of components/finetune/loop.py timed inside the workers (looked up in its module at call
# time; any that no longer exist are skipped): model load + LoRA, the strategy's wrapping, the
# final validation, the gather + merge + export.
TIMED = ("build_model", "wrap", "validation_loss", "export_model")


# --- the inputs: data and instructions steps' outputs, and a user's checkpoint ----------------------


def run_upstream(fn, cfg, name: str, workdir: Path, tracking_run: tuple[str, str]):
    """One upstream step (run_data, run_instructions) in-process, with its own MLflow run: its Artifact."""
    from components import tracking
    from components.artifact import StepContext

    uri, parent = tracking_run
    key = uuid.uuid4().hex
    run_id = tracking.start_step_run(uri, parent, name, name, key, [], "bench", cfg.model_dump())
    out = workdir / name
    out.mkdir()
    ctx = StepContext(step=name, phase=name, workdir=workdir, output_dir=out, storage_path=str(workdir / "ray_storage"),
                      tracking_uri=uri, run_id=run_id, cache_key=key)
    artifact = fn(cfg, {}, ctx)
    tracking.finish_step(uri, run_id, artifact)
    return artifact


def make_base(folder: Path, size: str, docs: list[str]) -> int:
    """A random Llama of `size` with the project's BPE, saved as a user's checkpoint; returns its parameter count."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from components.data.config import TokenizerConfig
    from components.data.tokenizer import train_bpe

    tokenizer = train_bpe(docs, TokenizerConfig(vocab_size=VOCAB, model_max_length=CONTEXT))
    hidden, layers, heads, mlp = SIZES[size]
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=CONTEXT,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def plan_batches(train: list, steps: int, micro: int, world: int, seed: int) -> list[list[list]]:
    """batches[step][rank]: the (input_ids, labels) pairs the finetune loop trains on at that step and rank
    (its `batch_rows`, no replay)."""
    from components.train_loop import batch_rows

    return [[[train[i] for i in batch_rows(len(train), step, micro, rank, world, seed)] for rank in range(world)]
            for step in range(steps)]


# --- the plain loop ---------------------------------------------------------------------------------


def _plain_worker(rank: int, world: int, port: int, strategy: str, base_dir: str, cfg: dict, pad_id: int, batches: list,
                  log_every: int, out: str) -> None:
    """One process of the plain loop: from_pretrained, peft LoRA, gloo DDP or FSDP2, AdamW, cosine schedule, clipping."""
    started = time.time()
    torch.set_num_threads(1)
    import peft
    from transformers import AutoModelForCausalLM, get_cosine_schedule_with_warmup

    from components.core.sft import pad_batch
    from components.finetune.config import FinetuneConfig

    c = FinetuneConfig.model_validate(cfg)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    torch.manual_seed(c.seed)  # the LoRA A matrices' init, as the component seeds it
    # target_modules None: peft's default for llama (q_proj, v_proj), what the component resolves None to.
    lora = peft.LoraConfig(r=c.lora.r, lora_alpha=c.lora.alpha, lora_dropout=c.lora.dropout,
                           target_modules=c.lora.target_modules, task_type="CAUSAL_LM")
    model = peft.get_peft_model(model, lora)
    model.train()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)  # before sharding: whole tensors
    if strategy == "fsdp":  # as components.core.parallel shards: each decoder layer, then the whole
        from torch.distributed.fsdp import fully_shard

        for layer in model.base_model.model.model.layers:
            fully_shard(layer)
        fully_shard(model)
    params = [p for p in model.parameters() if p.requires_grad]
    if strategy == "ddp":
        model = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay, betas=(0.9, 0.95))
    scheduler = get_cosine_schedule_with_warmup(optimizer, c.warmup_steps, c.max_steps)
    mine = [pad_batch(step[rank], pad_id) for step in batches]  # padded before the clock starts
    steps = len(mine)
    windows, loop_start = [], time.time()
    window_start = time.perf_counter()
    for step, batch in enumerate(mine):
        loss = model(**batch).loss
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, c.grad_clip)
        float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # the grad norm, as the loop records it
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            now = time.perf_counter()
            windows.append({"steps": step + 1, "seconds": now - window_start})
            window_start = now
    ended = time.time()
    torch.distributed.destroy_process_group()
    if rank == 0:
        Path(out).write_text(json.dumps({"started": started, "loop_start": loop_start, "ended": ended, "windows": windows,
                                         "threads": torch.get_num_threads(), "trainable": trainable}))


def run_plain(strategy: str, base_dir: Path, cfg: dict, pad_id: int, batches: list, log_every: int, world: int) -> dict:
    import torch.multiprocessing as mp

    fd, out = tempfile.mkstemp(prefix="plain-lora-", suffix=".json")
    os.close(fd)
    start = time.time()
    mp.spawn(_plain_worker, args=(world, free_port(), strategy, str(base_dir), cfg, pad_id, batches, log_every, out), nprocs=world, join=True)
    wall = time.time() - start
    r = json.loads(Path(out).read_text())
    os.unlink(out)
    return {"wall_s": wall, "startup_s": r["loop_start"] - start, "windows": r["windows"], "threads": r["threads"],
            "trainable": r["trainable"]}


# --- the component ----------------------------------------------------------------------------------


def _timed(loop, events_path: str):
    """The real per-worker loop, with timestamps: its start and end, each ray.train.report call (entry
    and return, i.e. including a checkpoint's upload) with the metrics reported, and the seconds of
    the loop's TIMED helpers."""

    def timed_loop(config: dict) -> None:
        import ray.train

        rank = ray.train.get_context().get_world_rank()
        events = {"loop_start": time.time(), "threads": torch.get_num_threads(), "reports": []}
        report = ray.train.report

        def timed_report(metrics, *args, **kwargs):
            entered = time.time()
            report(metrics, *args, **kwargs)
            events["reports"].append({"entered": entered, "returned": time.time(),
                                      "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))}})

        ray.train.report = timed_report  # the training kit calls ray.train.report at call time: this one
        module = sys.modules[loop.__module__]
        originals = {name: getattr(module, name) for name in TIMED if callable(getattr(module, name, None))}
        calls = events["calls"] = {name: [] for name in originals}

        def timer(name, fn):
            def timed(*args, **kwargs):
                start = time.perf_counter()
                try:
                    return fn(*args, **kwargs)
                finally:
                    calls[name].append(time.perf_counter() - start)
            return timed

        for name, fn in originals.items():
            setattr(module, name, timer(name, fn))
        try:
            loop(config)
        finally:
            ray.train.report = report
            for name, fn in originals.items():
                setattr(module, name, fn)
        events["loop_end"] = time.time()
        if rank == 0:
            Path(events_path).write_text(json.dumps(events))

    return timed_loop


def run_component(strategy: str, cfg_kwargs: dict, upstream: dict, workdir: Path, tracking_run: tuple[str, str]) -> dict:
    """components.finetune.step.run with the loop timed; returns the timings, the loop's reports, ctx.seconds."""
    import components.finetune.step as step_module
    from components import tracking, training
    from components.artifact import Artifact, StepContext
    from components.finetune.config import FinetuneConfig
    from components.finetune.loop import train_loop

    cfg = FinetuneConfig(strategy=strategy, **cfg_kwargs)
    uri, parent = tracking_run
    key = uuid.uuid4().hex  # a fresh Ray Train run name: never resume an earlier run's checkpoint
    run_id = tracking.start_step_run(uri, parent, f"finetune-{strategy}", "finetune", key, list(upstream), "bench", cfg.model_dump())
    out = workdir / f"out-{strategy}-{key[:8]}"
    out.mkdir()
    ctx = StepContext(step="finetune", phase="finetune", workdir=workdir, output_dir=out, storage_path=str(workdir / "ray_storage"),
                      tracking_uri=uri, run_id=run_id, cache_key=key, workers=2, cpus_per_worker=1.0)
    # A fresh cache key for the base on every run: the step keeps each model's test answers (AnswerMemo,
    # keyed by the model's cache key), and a second run must score the base again, not reuse the first's.
    inputs = {**upstream, "base": Artifact(str(workdir / "base"), "model", "", uuid.uuid4().hex)}
    events_path = str(workdir / f"events-{key[:8]}.json")
    marks: dict = {}
    trainer_cls = training.TorchTrainer

    class Timed(trainer_cls):
        def fit(self):
            marks["fit_start"] = time.time()
            try:
                return super().fit()
            finally:
                marks["fit_end"] = time.time()

    training.TorchTrainer = Timed  # components.training builds its trainer from this module global
    step_module.train_loop = _timed(train_loop, events_path)
    start = time.time()
    try:
        artifact = step_module.run(cfg, inputs, ctx)
    finally:
        training.TorchTrainer = trainer_cls
        step_module.train_loop = train_loop
    end = time.time()
    tracking.finish_step(uri, run_id, artifact)
    ev = json.loads(Path(events_path).read_text())
    return {"start": start, "end": end, **marks, **ev, "seconds": dict(ctx.seconds), "metrics": artifact.metrics}


# --- analysis ---------------------------------------------------------------------------------------


def component_windows(ev: dict, examples_per_step: int, step_tokens: list[int]) -> list[dict]:
    """The loop's report windows: last step, seconds (from its own examples_per_s) and tokens."""
    windows, last = [], 0
    for r in ev["reports"]:
        m = r["metrics"]
        if "examples_per_s" not in m:
            continue
        step = int(m["step"])
        windows.append({"steps": step, "seconds": examples_per_step * (step - last) / m["examples_per_s"]})
        last = step
    return with_tokens(windows, step_tokens)


def with_tokens(windows: list[dict], step_tokens: list[int]) -> list[dict]:
    last = 0
    for w in windows:
        w["tokens"] = sum(step_tokens[last : w["steps"]])
        last = w["steps"]
    return windows


def steady(windows: list[dict]) -> float:
    """tokens/s over every window after the first (the first holds the warm-up step)."""
    rest = windows[1:] or windows
    return sum(w["tokens"] for w in rest) / sum(w["seconds"] for w in rest)


def breakdown(ev: dict, windows: list[dict]) -> dict:
    """Where the component's wall time went, in seconds (see the module docstring, part 4)."""
    s = ev["seconds"]
    calls = ev.get("calls", {})
    total = lambda name: sum(calls.get(name, []))  # noqa: E731
    training = sum(w["seconds"] for w in windows)
    first_report = next(r for r in ev["reports"] if "examples_per_s" in r["metrics"])
    first_step = first_report["entered"] - windows[0]["seconds"]  # when the first step started (its window's clock)
    score_before, score_after, export = s.get("score_before", 0.0), s.get("score_after", 0.0), s.get("export", 0.0)
    return {
        "prepare_s": ev["fit_start"] - ev["start"] - score_before,  # load + check the model, encode, log inputs
        "score_before_s": score_before,
        "ray_train_start_s": ev["loop_start"] - ev["fit_start"],
        "loop_setup_s": first_step - ev["loop_start"],
        "model_load_s": total("build_model"),
        "wrap_s": total("wrap"),
        "training_s": training,
        "end_of_loop_s": ev["loop_end"] - first_step - training,
        "validation_s": total("validation_loss"),
        "export_model_s": total("export_model"),
        "reports_s": sum(r["returned"] - r["entered"] for r in ev["reports"]),
        "ray_train_stop_s": ev["fit_end"] - ev["loop_end"],
        "copy_export_s": export,
        "score_after_s": score_after,
        "after_s": ev["end"] - ev["fit_end"] - export - score_after,
        "wall_s": ev["end"] - ev["start"],
        "ray_train_s": s.get("ray_train", 0.0),
    }


def main() -> int:
    from components.finetune.config import FinetuneConfig

    defaults = FinetuneConfig()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="optimizer steps of every run")
    parser.add_argument("--log-every", type=int, default=10, help="steps per report window (the loop's log_every)")
    parser.add_argument("--micro-batch", type=int, default=defaults.micro_batch_size, help="examples per worker per step")
    parser.add_argument("--strategies", default="fsdp", help="component strategies, each with its plain loop: fsdp, ddp")
    parser.add_argument("--size", choices=sorted(SIZES), default="100m", help="the base: 100m (~95M parameters) or tiny (a toy)")
    parser.add_argument("--test-examples", type=int, default=40, help="test prompts the step scores before and after")
    parser.add_argument("--eval-tokens", type=int, default=2000, help="corpus tokens of the step's perplexity before and after")
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a new temporary one, removed at the end)")
    parser.add_argument("--results", type=Path, help=f"where to write lora_bench.json/.md (default {RESULTS}; not for --size tiny)")
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args()
    strategies = [s for s in args.strategies.split(",") if s]
    if not strategies or set(strategies) - {"fsdp", "ddp"}:
        parser.error("--strategies: one or both of fsdp, ddp")
    if args.steps < 2 or args.log_every < 1:
        parser.error("--steps must be at least 2, --log-every at least 1")
    results = args.results or (RESULTS if args.size == "100m" else None)  # a toy run never lands in the results table
    write = results is not None and not args.no_write

    own_tmp = private_ray_env("rl-")  # this run's Ray never meets another local Ray on the machine
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="lora-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)

    from transformers import AutoTokenizer

    from components import tracking
    from components.core.sft import encode_split
    from components.data.config import DataConfig
    from components.data.corpus import read_jsonl
    from components.data.instructions import InstructionDataConfig, read_examples_jsonl
    from components.data.step import run_data, run_instructions
    from components.finetune.loop import build_model

    t0 = time.time()
    uri = tracking.tracking_uri_for(workdir)
    parent = tracking.start_workflow_run(uri, workdir, "lora-bench", "bench", {}, None)
    corpus = run_upstream(run_data, DataConfig(), "corpus", workdir, (uri, parent))
    instructions = run_upstream(run_instructions, InstructionDataConfig(), "instructions", workdir, (uri, parent))
    train_examples = read_examples_jsonl(instructions.path / "train.jsonl")
    docs = read_jsonl(corpus.path / "train.jsonl") + [e.prompt + e.response for e in train_examples]
    n_params = make_base(workdir / "base", args.size, docs)

    steps = args.steps
    cfg_kwargs = {"method": "lora", "max_steps": steps, "warmup_steps": min(defaults.warmup_steps, steps // 4),
                  "micro_batch_size": args.micro_batch, "log_every": args.log_every, "eval_every": steps,
                  "checkpoint_every": steps, "test_examples": args.test_examples, "eval_tokens": args.eval_tokens}
    cfg = FinetuneConfig(**cfg_kwargs)
    # The train split encoded as the step encodes it: the base's own tokenizer, the model's context.
    tokenizer = AutoTokenizer.from_pretrained(workdir / "base")
    train = encode_split(instructions.path / "train.jsonl", train_examples, tokenizer, CONTEXT)
    world = 2
    batches = plan_batches(train, steps, args.micro_batch, world, cfg.seed)
    step_tokens = [sum(len(ids) for rank in step for ids, _ in rank) for step in batches]  # non-padding tokens
    step_padded = [sum(len(rank) * max(len(ids) for ids, _ in rank) for rank in step) for step in batches]
    pad_share = 1 - sum(step_tokens) / sum(step_padded)
    peft_model = build_model(str(workdir / "base"), cfg)[0]  # the component's own model builder: what it will train
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    targets = "/".join(sorted(peft_model.peft_config["default"].target_modules))
    del peft_model
    print(f"inputs ready in {time.time() - t0:.0f}s: base {n_params:,} parameters (Llama {SIZES[args.size]}, vocab "
          f"{len(tokenizer)}), LoRA {trainable:,} trainable; {len(train)} train examples, {sum(step_tokens) / steps:.0f} tokens "
          f"per step over {world} workers ({pad_share:.0%} more as padding)", file=sys.stderr)

    rows: list[dict] = []

    def plain(strategy: str, label: str) -> dict:
        r = run_plain(strategy, workdir / "base", cfg.model_dump(), tokenizer.pad_token_id, batches, args.log_every, world)
        if r["trainable"] != trainable:
            raise RuntimeError(f"plain loop trains {r['trainable']:,} parameters, the component {trainable:,}: not the same LoRA")
        with_tokens(r["windows"], step_tokens)
        r.update(label=label, plain=strategy, world=world, steady_tokens_per_s=steady(r["windows"]),
                 end_to_end_tokens_per_s=sum(step_tokens) / r["wall_s"])
        print(f"{label}: {r['steady_tokens_per_s']:.0f} tok/s steady, {r['wall_s']:.1f}s wall", file=sys.stderr)
        return r

    # The plain loops bracket the component's runs: before Ray starts, and again after it stops.
    before = [plain(s, f"plain {s}, before Ray") for s in strategies]
    import ray

    start_private_ray()
    try:
        upstream = {"instructions": instructions, "corpus": corpus}
        for strategy in strategies:
            ev = run_component(strategy, cfg_kwargs, upstream, workdir, (uri, parent))
            windows = component_windows(ev, args.micro_batch * world, step_tokens)
            b = breakdown(ev, windows)
            r = {"label": f"component {strategy}", "strategy": strategy, "world": world, "threads": ev["threads"], **b,
                 "windows": windows, "steady_tokens_per_s": steady(windows), "end_to_end_tokens_per_s": sum(step_tokens) / b["wall_s"],
                 "no_scoring_tokens_per_s": sum(step_tokens) / (b["wall_s"] - b["score_before_s"] - b["score_after_s"]),
                 "calls": {k: [len(v), sum(v)] for k, v in ev.get("calls", {}).items()},  # count, seconds
                 "step_metrics": {k: v for k, v in ev["metrics"].items() if isinstance(v, (int, float))}}
            rows.append(r)
            print(f"{r['label']}: {r['steady_tokens_per_s']:.0f} tok/s steady, {r['wall_s']:.1f}s wall "
                  f"({', '.join(f'{k} {v:.1f}' for k, v in b.items() if k.endswith('_s'))})", file=sys.stderr)
        tracking.end_run(uri, parent)
    finally:
        ray.shutdown()
    after = [plain(s, f"plain {s}, after Ray") for s in strategies]

    # Each component run against the mean of its strategy's two plain runs.
    base = {}
    for strategy, pair in zip(strategies, zip(before, after)):
        base[strategy] = {k: statistics.mean(r[k] for r in pair) for k in ("steady_tokens_per_s", "end_to_end_tokens_per_s")}
        base[strategy]["spread"] = abs(pair[0]["steady_tokens_per_s"] - pair[1]["steady_tokens_per_s"]) / base[strategy]["steady_tokens_per_s"]
    rows = before + rows + after
    for r in rows:
        ref = base[r.get("plain") or r["strategy"]]
        r["steady_ratio"] = r["steady_tokens_per_s"] / ref["steady_tokens_per_s"]
        r["end_to_end_ratio"] = r["end_to_end_tokens_per_s"] / ref["end_to_end_tokens_per_s"]
        if "no_scoring_tokens_per_s" in r:
            r["no_scoring_ratio"] = r["no_scoring_tokens_per_s"] / ref["end_to_end_tokens_per_s"]

    header = ["run", "processes x threads", "steady tok/s", "vs plain", "end-to-end tok/s", "vs plain", "wall s"]
    body = [[r["label"], f"{r['world']} x {r['threads']}", f"{r['steady_tokens_per_s']:.0f}", f"x{r['steady_ratio']:.2f}",
             f"{r['end_to_end_tokens_per_s']:.0f}", f"x{r['end_to_end_ratio']:.2f}", f"{r['wall_s']:.1f}"] for r in rows]
    main_table = table(header, body, "lrrrrrr")
    components_rows = [r for r in rows if "strategy" in r]
    split_header = ["component", "prepare", "score before", "Ray Train start", "loop setup", "(model + LoRA)", "(wrap)", "training",
                    "end of loop", "(validation)", "(export model)", "(reports)", "Ray Train stop", "copy export", "score after",
                    "after", "wall"]
    keys = ("prepare_s", "score_before_s", "ray_train_start_s", "loop_setup_s", "model_load_s", "wrap_s", "training_s",
            "end_of_loop_s", "validation_s", "export_model_s", "reports_s", "ray_train_stop_s", "copy_export_s", "score_after_s",
            "after_s", "wall_s")
    split_table = table(split_header, [[r["strategy"], *(f"{r[k]:.1f}" for k in keys)] for r in components_rows], "l" + "r" * len(keys))
    plain_split = "; ".join(f"{r['label']}: process start to first step {r['startup_s']:.1f} s, training "
                            f"{sum(w['seconds'] for w in r['windows']):.1f} s, wall {r['wall_s']:.1f} s" for r in before + after)
    spreads = ", ".join(f"{b['spread']:.1%} for {k}" for k, b in base.items())
    no_scoring = "; ".join(f"{r['label']} {r['no_scoring_tokens_per_s']:.0f} tok/s, x{r['no_scoring_ratio']:.2f}"
                           for r in components_rows)
    hidden, layers, heads, mlp = SIZES[args.size]
    caption = (f"LoRA (r {cfg.lora.r}, alpha {cfg.lora.alpha:g}, dropout {cfg.lora.dropout:g}, {targets}: {trainable:,} trainable) on a "
               f"{n_params:,}-parameter random Llama (hidden {hidden}, {layers} layers, {heads} heads, MLP {mlp}, vocab {len(tokenizer)}), "
               f"{steps} steps of {args.micro_batch} bundled instruction examples per worker ({sum(step_tokens) / steps:.0f} "
               f"non-padding tokens per step over both workers; padding adds {pad_share:.0%}), 2 workers x 1 CPU; tokens/s counts "
               f"non-padding tokens; steady = windows of {args.log_every} steps after the first; vs plain = against the mean of "
               f"the plain loop of the same strategy run before and after the component (they differ by {spreads}).")
    notes = (f"Seconds of each component run (`components.finetune.step.run`; a column in brackets is part of the nearest "
             f"plain column to its left; score before/after: exact match on {args.test_examples} test prompts and perplexity "
             f"on {args.eval_tokens} corpus tokens, which the plain loop does not do):\n\n{split_table}\n\n{plain_split}. "
             f"End to end without the scoring before and after: {no_scoring}.")
    data = {"settings": vars(args) | {"workdir": str(workdir), "results": str(results)}, "parameters": n_params,
            "trainable_parameters": trainable, "vocab": len(tokenizer), "train_examples": len(train),
            "tokens_per_step": step_tokens, "padded_tokens_per_step": step_padded, "plain_baselines": base, "runs": rows}
    if write:
        write_result("lora_bench", data, caption + "\n\n" + main_table, notes, results)
    else:
        print(caption + "\n\n" + main_table + "\n\n" + notes)
        print("(not written: --no-write, or a --size tiny run without --results)", file=sys.stderr)
    if own_tmp:
        shutil.rmtree(os.environ["RAY_TMPDIR"], ignore_errors=True)
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
