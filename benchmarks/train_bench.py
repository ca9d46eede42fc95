"""Training benchmark: the pretrain component on Ray Train against a plain PyTorch loop, and the
hardware efficiency of both, side by side in one run.

    .venv/bin/python benchmarks/train_bench.py [--steps 40] [--log-every 10] [--strategies ddp,fsdp,deepspeed] [--plain ddp,fsdp]

1. The same model (the tiny workflow's ~1M-parameter GPT-2, built by components.core.models), the
   same token blocks (the bundled corpus, the workflow's tokenizer), the same micro-batch (16 x 128
   tokens per worker), the same number of optimizer steps, the same 2 CPUs, trained:
   - by the real pretrain step, `components.pretrain.step.run`: its TorchTrainer with 2 workers x
     1 CPU running `components.pretrain.loop.train_loop` unchanged, reports going to MLflow, once
     per strategy (ddp, fsdp, deepspeed);
   - by a plain loop: 2 processes x 1 thread (torch.multiprocessing), gloo, DDP or FSDP2 (sharded
     per block, as components.core.parallel does), AdamW with the same schedule and clipping,
     batches sliced from one tensor. Each plain loop runs before Ray starts and again after Ray
     stops (bracketing the component's runs; their mean is the baseline, their difference shows the
     drift). The component's ddp and fsdp runs are compared with the plain loop of the same
     strategy; deepspeed (ZeRO-3, nothing plain to match) with plain ddp. 2 processes of 1 thread,
     not 1 process of 2, because that is the layout the component runs (2 workers of 1 CPU each):
     the ratio is then the component's overhead, not a different parallelisation
     (`--single-process` adds the 1 x 2-thread loop as an extra row).
   Both report steady-state tokens/s over the same windows of `--log-every` steps (the loop's own
   `tokens_per_s`, from the first window after the first one: the first holds the warm-up step), and
   tokens/s end to end (all tokens over the whole wall time). The component's wall time is then
   split: preparation in the step (tokenizing, logging inputs), Ray Train start (controller,
   worker processes, process group), the loop's setup (model build, initial perplexity, wrapping),
   training windows, reports and the end of the loop (validation, checkpoint, export, final
   perplexity), Ray Train shutdown, and the step's work after training (copy, plot).
2. Hardware efficiency: training FLOP/s = (6 x parameters + 12 x n_layer x n_embd x seq) per token x
   tokens/s, as a fraction of the machine's float32 matmul peak (the best of repeated 2048^3
   torch.mm at the same total thread count, 2, measured in this run before the training runs).

Prints a Markdown table; writes benchmarks/results/train_bench.json and .md (see report.py).
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

import numpy as np  # noqa: E402
import torch  # noqa: E402
from report import private_ray_env, start_private_ray, table, write_result  # noqa: E402

from components.deploy.ingress import free_port  # noqa: E402

SEQ = 128  # the tiny model's context: ModelConfig().n_positions
# Helpers of components/pretrain/loop.py timed inside the workers (any that no longer exist are skipped):
# model build, initial and final perplexity, the strategy's wrapping, data, validation, the final
# gather + export + perplexity, checkpoint save + report, and the loss all-reduce of every report.
TIMED = ("build_causal_lm", "perplexity", "wrap", "batch_rows", "_validation_loss", "_finish", "_report", "mean_over_workers")


# --- the data: what the workflow's data and tokenizer steps make ------------------------------------


def prepare(workdir: Path) -> dict:
    """The bundled corpus split as the data step splits it, and the tokenizer step's tokenizer."""
    from components.data.config import DataConfig, TokenizerConfig
    from components.data.corpus import load_documents, split_by_hash, write_jsonl
    from components.data.tokenizer import train_bpe

    data = DataConfig()
    train, val = split_by_hash(load_documents(data), data.validation_fraction, data.seed)
    (workdir / "corpus").mkdir(parents=True)
    write_jsonl(workdir / "corpus" / "train.jsonl", train)
    write_jsonl(workdir / "corpus" / "validation.jsonl", val)
    tokenizer = train_bpe(train, TokenizerConfig())
    tokenizer.save_pretrained(workdir / "tokenizer")
    return {"train": train, "val": val, "tokenizer": tokenizer}


# --- machine peak -----------------------------------------------------------------------------------


def matmul_peak(threads: int, n: int = 2048, repeats: int = 8) -> float:
    """Best float32 FLOP/s of an n x n x n torch.mm with `threads` threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    torch.set_num_threads(before)
    return 2 * n**3 / best


# --- the plain loop ---------------------------------------------------------------------------------


def _plain_worker(rank: int, world: int, port: int, threads: int, strategy: str, blocks: np.ndarray, cfg: dict, ids: tuple,
                  steps: int, log_every: int, out: str) -> None:
    """One process of the plain loop: gloo DDP or FSDP2 (world > 1), AdamW, cosine schedule, clipping."""
    started = time.time()
    torch.set_num_threads(threads)
    from transformers import get_cosine_schedule_with_warmup

    from components.core.models import build_causal_lm
    from components.pretrain.config import PretrainConfig

    c = PretrainConfig.model_validate(cfg)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    model = build_causal_lm(c.model, *ids, c.seed)
    if world > 1 and strategy == "fsdp":  # as components.core.parallel shards: each block, then the whole
        from torch.distributed.fsdp import fully_shard

        from components.core.models import transformer_blocks

        for block in transformer_blocks(model):
            fully_shard(block)
        fully_shard(model)
    params = list(model.parameters())
    if world > 1 and strategy == "ddp":
        model = torch.nn.parallel.DistributedDataParallel(model)
    optimizer = torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay, betas=(0.9, 0.95))
    scheduler = get_cosine_schedule_with_warmup(optimizer, c.warmup_steps, c.max_steps)
    data = torch.from_numpy(blocks.astype(np.int64))
    per_rank = len(data) // world
    per_epoch = max(1, per_rank // c.micro_batch_size)
    windows, window_start, loop_start, order, epoch_seen = [], time.perf_counter(), time.time(), None, -1
    for step in range(steps):
        epoch, position = divmod(step, per_epoch)
        if epoch != epoch_seen:  # one shuffle per epoch, each rank its own stride
            order = torch.randperm(len(data), generator=torch.Generator().manual_seed(c.seed + epoch))[rank::world][:per_rank]
            epoch_seen = epoch
        batch = data[order[position * c.micro_batch_size : (position + 1) * c.micro_batch_size]]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, c.grad_clip)
        float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)  # the grad norm, as the loop reports it
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
        if (step + 1) % log_every == 0 or step + 1 == steps:
            now = time.perf_counter()
            windows.append({"steps": step + 1, "seconds": now - window_start})
            window_start = now
    ended = time.time()
    if world > 1:
        torch.distributed.destroy_process_group()
    if rank == 0:
        Path(out).write_text(json.dumps({"started": started, "loop_start": loop_start, "ended": ended, "windows": windows,
                                         "threads": torch.get_num_threads()}))


def run_plain(blocks: np.ndarray, cfg: dict, ids: tuple, steps: int, log_every: int, world: int, threads: int, strategy: str) -> dict:
    import torch.multiprocessing as mp

    fd, out = tempfile.mkstemp(prefix="plain-", suffix=".json")
    os.close(fd)
    start = time.time()
    mp.spawn(_plain_worker, args=(world, free_port(), threads, strategy, blocks, cfg, ids, steps, log_every, out), nprocs=world, join=True)
    wall = time.time() - start
    r = json.loads(Path(out).read_text())
    os.unlink(out)
    return {"wall_s": wall, "startup_s": r["loop_start"] - start, "windows": r["windows"], "threads": r["threads"]}


# --- the component ----------------------------------------------------------------------------------


def _timed(loop, events_path: str):
    """The real per-worker loop, with timestamps: its start and end, and each ray.train.report call
    (entry and return, i.e. including a checkpoint's upload) with the metrics the loop reported."""

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

        ray.train.report = timed_report  # the loop calls ray.train.report at call time: this one
        # The loop's own helpers, timed in place (the loop looks them up in its module at call time).
        module = sys.modules[loop.__module__]
        originals = {name: getattr(module, name) for name in TIMED if callable(getattr(module, name, None))}
        calls = events["calls"] = {name: [] for name in originals}  # seconds of each call

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


def run_component(strategy: str, cfg_kwargs: dict, workdir: Path, tracking: tuple[str, str]) -> dict:
    """components.pretrain.step.run with the loop timed; returns the timings and the loop's reports."""
    import components.pretrain.step as step_module
    from components import tracking as mlflow_tracking
    from components import training
    from components.artifact import Artifact, StepContext
    from components.pretrain.config import PretrainConfig
    from components.pretrain.loop import train_loop

    cfg = PretrainConfig(strategy=strategy, **cfg_kwargs)
    uri, parent = tracking
    key = uuid.uuid4().hex  # a fresh Ray Train run name: never resume an earlier run's checkpoint
    run_id = mlflow_tracking.start_step_run(uri, parent, f"pretrain-{strategy}", "pretrain", key, [], "bench", cfg.model_dump())
    out = workdir / f"out-{strategy}-{key[:8]}"
    out.mkdir()
    ctx = StepContext(step="pretrain", phase="pretrain", workdir=workdir, output_dir=out, storage_path=str(workdir / "ray_storage"),
                      tracking_uri=uri, run_id=run_id, cache_key=key)
    inputs = {"corpus": Artifact(str(workdir / "corpus"), "dataset", "", "bench"),
              "tokenizer": Artifact(str(workdir / "tokenizer"), "tokenizer", "", "bench")}
    events_path = str(workdir / f"events-{key[:8]}.json")
    marks: dict = {}

    # Time TorchTrainer.fit wherever the step builds its trainer (in the step, or in components.training).
    patched = []
    for module in (step_module, training):
        trainer_cls = getattr(module, "TorchTrainer", None)
        if trainer_cls is None:
            continue

        class Timed(trainer_cls):
            def fit(self):
                marks["fit_start"] = time.time()
                try:
                    return super().fit()
                finally:
                    marks["fit_end"] = time.time()

        patched.append((module, "TorchTrainer", trainer_cls))
        module.TorchTrainer = Timed
    patched.append((step_module, "train_loop", step_module.train_loop))
    step_module.train_loop = _timed(train_loop, events_path)
    start = time.time()
    try:
        artifact = step_module.run(cfg, inputs, ctx)
    finally:
        for module, name, value in patched:
            setattr(module, name, value)
    end = time.time()
    mlflow_tracking.finish_step(uri, run_id, artifact)
    ev = json.loads(Path(events_path).read_text())
    return {"start": start, "end": end, **marks, **ev, "tokens_per_s_reported": artifact.metrics.get("tokens_per_s")}


# --- analysis ---------------------------------------------------------------------------------------


def windows_of_component(ev: dict, tokens_per_step: int) -> list[dict]:
    """The loop's report windows: steps and seconds, from its own tokens_per_s."""
    windows, last = [], 0
    for r in ev["reports"]:
        m = r["metrics"]
        steps = int(m["step"]) - last
        windows.append({"steps": int(m["step"]), "seconds": tokens_per_step * steps / m["tokens_per_s"]})
        last = int(m["step"])
    return windows


def steady(windows: list[dict], tokens_per_step: int) -> float:
    """tokens/s over every window after the first (the first holds the warm-up step)."""
    rest = windows[1:] or windows
    steps = rest[-1]["steps"] - (windows[0]["steps"] if len(windows) > 1 else 0)
    return tokens_per_step * steps / sum(w["seconds"] for w in rest)


def breakdown(ev: dict, tokens_per_step: int) -> dict:
    """Where the component's wall time went, in seconds (see the module docstring)."""
    windows = windows_of_component(ev, tokens_per_step)
    training = sum(w["seconds"] for w in windows)
    first = ev["reports"][0]["entered"] - windows[0]["seconds"]  # when the first training step started (about)
    calls = ev.get("calls", {})
    total = lambda name: sum(calls.get(name, []))  # noqa: E731
    ppl = calls.get("perplexity", [])
    end = ev["loop_end"] - first - training
    checkpoint = total("_report")
    return {
        "prepare_s": ev["fit_start"] - ev["start"],
        "ray_train_start_s": ev["loop_start"] - ev["fit_start"],
        "loop_setup_s": first - ev["loop_start"],
        "initial_perplexity_s": ppl[0] if len(ppl) > 1 else 0.0,
        "training_s": training,
        "data_s": total("batch_rows"),
        "end_of_loop_s": end,
        "validation_s": total("_validation_loss"),
        "export_s": total("_finish"),
        "checkpoint_s": checkpoint,
        "reports_s": sum(r["returned"] - r["entered"] for r in ev["reports"]) - (ev["reports"][-1]["returned"] - ev["reports"][-1]["entered"]
                                                                                  if checkpoint else 0.0),
        "ray_train_stop_s": ev["fit_end"] - ev["loop_end"],
        "after_s": ev["end"] - ev["fit_end"],
        "wall_s": ev["end"] - ev["start"],
        "windows": windows,
    }


def data_cost(blocks: np.ndarray, micro: int, steps: int, seed: int) -> tuple[float, float]:
    """Seconds per step of the loop's batch function, and of the plain loop's slicing, single-threaded."""
    from components.train_loop import batch_rows

    start = time.perf_counter()
    for i in range(steps):
        torch.from_numpy(blocks[batch_rows(len(blocks), i, micro, 0, 2, seed, wrap=False)].astype(np.int64))
    loop = (time.perf_counter() - start) / steps
    data = torch.from_numpy(blocks.astype(np.int64))
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[0::2]
    start = time.perf_counter()
    for i in range(steps):
        data[order[(i * micro) % (len(order) - micro) :][:micro]]
    plain = (time.perf_counter() - start) / steps
    return loop, plain


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps of every run")
    parser.add_argument("--log-every", type=int, default=10, help="steps per report window (the loop's log_every)")
    parser.add_argument("--micro-batch", type=int, default=16, help="sequences of 128 tokens per worker per step")
    parser.add_argument("--strategies", default="ddp,fsdp,deepspeed")
    parser.add_argument("--plain", default="ddp,fsdp", help="plain loops to run (ddp, fsdp), each before and after the component's")
    parser.add_argument("--single-process", action="store_true", help="also the plain loop as 1 process of 2 threads")
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a new temporary one, removed at the end)")
    parser.add_argument("--results", type=Path, default=Path(__file__).resolve().parent / "results")
    args = parser.parse_args()
    strategies = [s for s in args.strategies.split(",") if s]
    plain_strategies = [s for s in args.plain.split(",") if s]
    if not plain_strategies or set(plain_strategies) - {"ddp", "fsdp"}:
        parser.error("--plain: one or both of ddp, fsdp")

    own_tmp = private_ray_env("rb-")  # this run's Ray never meets another local Ray on the machine
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="train-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)

    from components import tracking
    from components.core.models import build_causal_lm, count_parameters
    from components.data.tokenizer import tokenize_and_pack
    from components.pretrain.config import PretrainConfig

    t0 = time.time()
    data = prepare(workdir)
    tok = data["tokenizer"]
    blocks = tokenize_and_pack(data["train"], tok, SEQ)
    ids = (len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    steps = args.steps
    cfg_kwargs = {"max_steps": steps, "warmup_steps": min(30, steps // 4), "micro_batch_size": args.micro_batch,
                  "log_every": args.log_every, "eval_every": steps, "checkpoint_every": steps}
    cfg = PretrainConfig(**cfg_kwargs)
    model = build_causal_lm(cfg.model, *ids)
    n_params = count_parameters(model)
    flops_per_token = 6 * n_params + 12 * cfg.model.n_layer * cfg.model.n_embd * SEQ
    tokens_per_step = args.micro_batch * SEQ * 2  # 2 workers
    print(f"data ready in {time.time() - t0:.0f}s: {len(blocks)} blocks of {SEQ}; model {n_params:,} parameters; "
          f"{flops_per_token / 1e6:.2f} MFLOP per token", file=sys.stderr)
    peak2, peak1 = matmul_peak(2), matmul_peak(1)
    print(f"matmul peak: {peak2 / 1e9:.1f} GFLOP/s (2 threads), {peak1 / 1e9:.1f} GFLOP/s (1 thread)", file=sys.stderr)
    data_loop, data_plain = data_cost(blocks, args.micro_batch, 200, cfg.seed)

    rows: list[dict] = []

    def plain(label: str, world: int, threads: int, strategy: str) -> dict:
        r = run_plain(blocks, cfg.model_dump(), ids, steps, args.log_every, world, threads, strategy)
        per_step = args.micro_batch * SEQ * world
        r.update(label=label, plain=strategy, world=world, steady_tokens_per_s=steady(r["windows"], per_step),
                 end_to_end_tokens_per_s=per_step * steps / r["wall_s"])
        print(f"{label}: {r['steady_tokens_per_s']:.0f} tok/s steady, {r['wall_s']:.1f}s wall", file=sys.stderr)
        return r

    # The plain loops bracket the component's runs: before Ray starts, and again after it stops.
    before = [plain(f"plain {s}, before Ray", 2, 1, s) for s in plain_strategies]
    if args.single_process:
        rows.append(plain("plain, 1 process x 2 threads", 1, 2, "none"))

    import ray

    start_private_ray()
    try:
        uri = tracking.tracking_uri_for(workdir)
        parent = tracking.start_workflow_run(uri, workdir, "train-bench", "bench", {}, None)
        for strategy in strategies:
            ev = run_component(strategy, cfg_kwargs, workdir, (uri, parent))
            b = breakdown(ev, tokens_per_step)
            r = {"label": f"component {strategy}", "strategy": strategy, "world": 2, "threads": ev["threads"], **b,
                 "steady_tokens_per_s": steady(b["windows"], tokens_per_step), "end_to_end_tokens_per_s": tokens_per_step * steps / b["wall_s"]}
            rows.append(r)
            print(f"{r['label']}: {r['steady_tokens_per_s']:.0f} tok/s steady, {r['wall_s']:.1f}s wall "
                  f"({', '.join(f'{k} {v:.1f}' for k, v in b.items() if k.endswith('_s'))})", file=sys.stderr)
            r["calls"] = {k: [len(v), sum(v)] for k, v in ev.get("calls", {}).items()}  # count, seconds
        tracking.end_run(uri, parent)
    finally:
        ray.shutdown()
    after = [plain(f"plain {s}, after Ray", 2, 1, s) for s in reversed(plain_strategies)][::-1]
    plain_runs = before + after

    # Each row against the plain loop of its strategy (the mean of its two runs); deepspeed, and a
    # strategy without a plain loop, against plain ddp.
    base = {}
    for strategy, pair in zip(plain_strategies, zip(before, after)):
        base[strategy] = {k: statistics.mean(r[k] for r in pair) for k in ("steady_tokens_per_s", "end_to_end_tokens_per_s")}
        base[strategy]["spread"] = abs(pair[0]["steady_tokens_per_s"] - pair[1]["steady_tokens_per_s"]) / base[strategy]["steady_tokens_per_s"]
    rows = before + rows + after
    for r in rows:
        key = r.get("plain") or r.get("strategy")
        ref = base.get(key) or base.get("ddp") or next(iter(base.values()))
        r["against"] = key if key in base else ("ddp" if "ddp" in base else next(iter(base)))
        r["steady_ratio"] = r["steady_tokens_per_s"] / ref["steady_tokens_per_s"]
        r["end_to_end_ratio"] = r["end_to_end_tokens_per_s"] / ref["end_to_end_tokens_per_s"]
        r["flops_per_s"] = flops_per_token * r["steady_tokens_per_s"]
        r["mfu"] = r["flops_per_s"] / peak2

    header = ["run", "processes x threads", "steady tok/s", "vs plain", "end-to-end tok/s", "vs plain", "against", "wall s",
              "GFLOP/s", "of peak"]
    body = [[r["label"], f"{r['world']} x {r['threads']}",
             f"{r['steady_tokens_per_s']:.0f}", f"x{r['steady_ratio']:.2f}", f"{r['end_to_end_tokens_per_s']:.0f}",
             f"x{r['end_to_end_ratio']:.2f}", f"plain {r['against']}", f"{r['wall_s']:.1f}", f"{r['flops_per_s'] / 1e9:.2f}",
             f"{r['mfu']:.1%}"] for r in rows]
    main_table = table(header, body, "lrrrrrlrrr")
    split_header = ["component", "prepare", "Ray Train start", "loop setup", "(initial ppl)", "training", "(data)",
                    "end of loop", "(validation)", "(export + final ppl)", "(checkpoint + report)", "Ray Train stop", "after", "wall"]
    keys = ("prepare_s", "ray_train_start_s", "loop_setup_s", "initial_perplexity_s", "training_s", "data_s", "end_of_loop_s",
            "validation_s", "export_s", "checkpoint_s", "ray_train_stop_s", "after_s", "wall_s")
    split = [[r["strategy"], *(f"{r[k]:.1f}" for k in keys)] for r in rows if "strategy" in r]
    split_table = table(split_header, split, "l" + "r" * len(keys))
    plain_split = "; ".join(f"{r['label']}: process start to first step {r['startup_s']:.1f} s, training "
                            f"{sum(w['seconds'] for w in r['windows']):.1f} s" for r in plain_runs)
    spreads = ", ".join(f"{b['spread']:.1%} for {k}" for k, b in base.items())
    caption = (f"{n_params:,}-parameter GPT-2 (4 x 128), {steps} steps of {args.micro_batch} x {SEQ} tokens per worker, "
               f"2 workers x 1 CPU; steady = windows of {args.log_every} steps after the first; vs plain = against the mean "
               f"of that plain loop's runs before and after the component's (they differ by "
               f"{spreads}). Matmul peak (float32, 2048^3): "
               f"{peak2 / 1e9:.1f} GFLOP/s at 2 threads, {peak1 / 1e9:.1f} at 1; {flops_per_token / 1e6:.2f} MFLOP per token.")
    fixed = "; ".join(f"{r['label']} {r['wall_s'] - sum(w['seconds'] for w in r['windows']):.1f} s" for r in rows)
    notes = (f"Seconds of each component run (`components.pretrain.step.run`; a column in brackets is part of the nearest plain column to its left):\n\n"
             f"{split_table}\n\n{plain_split}. Fixed cost of a run (wall time less the training windows): {fixed}. "
             f"Data per step, measured apart: the loop's `_batch` {data_loop * 1e3:.2f} ms, the plain loop's slicing "
             f"{data_plain * 1e3:.2f} ms.")
    write_result("train_bench", {"settings": vars(args) | {"results": str(args.results), "workdir": str(workdir)},
                                 "parameters": n_params, "flops_per_token": flops_per_token, "peak_flops_2_threads": peak2,
                                 "peak_flops_1_thread": peak1, "data_s_per_step_loop": data_loop, "data_s_per_step_plain": data_plain,
                                 "plain_baselines": base, "runs": rows},
                 caption + "\n\n" + main_table, notes, args.results)
    if own_tmp:
        shutil.rmtree(os.environ["RAY_TMPDIR"], ignore_errors=True)
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
