"""Serving benchmark: Serve's added latency, dynamic batching's throughput gain, and a bounded load test.

    .venv/bin/python benchmarks/serve_bench.py [--model DIR] [--requests 2000] [--concurrency 32]
    .venv/bin/python benchmarks/serve_bench.py --logprobs [--model DIR]

Everything runs in one go on a local Ray, side by side, and prints a Markdown table (paste
it into docs/benchmarks.md):

1. latency: p50 of one short greedy request (8 new tokens) through HTTP + Serve, against the same
   `generate` call in this process, 100 of each in 5 alternating turns; the difference is what
   Serve adds.
2. throughput: 1, 4, 16 and 32 concurrent clients, the same requests (32 new tokens each), with
   `max_batch_size` 16 against 1 (batching off); requests per second, their ratio and the
   requests' p50 / p95 / p99 latency (the main table quotes 16 clients). This one
   uses an 11M-parameter model (6 layers, width 384): with the 1M tiny model, HTTP handling,
   not generation, is most of a request's cost on 2 cores and batching has little to win.
3. load: REQUESTS requests at CONCURRENCY clients against a small queue; every status code is
   counted (only 200 and the backpressure codes 429/503 are acceptable) and the replica must
   still be the same one afterwards (none lost or restarted).

--logprobs measures only the cost of log-probabilities: requests per second of /v1/completions
(32 new tokens, greedy) with `logprobs: 5` against without, at 1 and 16 concurrent clients, in
alternating turns, on the tiny GPT-2 (batching on).

Without --model, untrained GPT-2s are built from config: the tiny workflow's shape (1M parameters)
for latency and load, 6 x 384 (11M) for throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "token")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402
import torch  # noqa: E402

CLIENTS = (1, 4, 16, 32)
PROMPT = "### Instruction:\nReverse the words: cat dog sun\n\n### Response:\n"


def tiny_model(directory: Path, **shape) -> Path:
    from components.core.models import ModelConfig, build_causal_lm
    from components.data.config import TokenizerConfig
    from components.data.instructions import generate_tasks
    from components.data.tokenizer import train_bpe

    tok = train_bpe([e.prompt + e.response for e in generate_tasks(200, seed=0)], TokenizerConfig(vocab_size=2048))
    model = build_causal_lm(ModelConfig(**shape), len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def direct_generate(model_dir: Path):
    """A function that runs one greedy 8-token `generate` in this process and returns its seconds."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from components.deploy.generation import Params, generate

    torch.set_num_threads(1)  # as a replica runs
    model, tok = AutoModelForCausalLM.from_pretrained(model_dir).eval(), AutoTokenizer.from_pretrained(model_dir)
    params = Params(max_tokens=8, temperature=0)
    generate(model, tok, [PROMPT], params)  # warm-up

    def timed() -> float:
        start = time.perf_counter()
        generate(model, tok, [PROMPT], params)
        return time.perf_counter() - start

    return timed


async def _fire(url: str, n: int, concurrency: int, max_tokens: int = 8, **fields) -> tuple[float, Counter, list[float]]:
    """n completion requests (with extra body `fields`) from `concurrency` clients; (seconds, status counts,
    latencies of the 200s)."""
    codes: Counter = Counter()
    latencies: list[float] = []
    queue = iter(range(n))
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=concurrency)) as client:
        async def worker():
            for _ in queue:
                start = time.perf_counter()
                r = await client.post(f"{url}/completions", json={"model": "bench", "prompt": PROMPT, "max_tokens": max_tokens,
                                                                  "temperature": 0, **fields})
                codes[r.status_code] += 1
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - start, codes, latencies


def deploy(model_dir: Path, port: int, **settings) -> str:
    from components.deploy.config import DeployConfig
    from components.deploy.step import start

    cfg = DeployConfig(port=port, app_name="bench", **settings)
    return start(cfg, {"id": "bench", "path": str(model_dir), "metadata": {}}, {})


def replica_ids() -> set[str]:
    import ray
    from ray.util.state import list_actors

    alive = list_actors(address=ray.get_runtime_context().gcs_address,
                        filters=[("class_name", "=", "ServeReplica:bench:OpenAIServer"), ("state", "=", "ALIVE")])
    return {a.actor_id for a in alive}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="a Hugging Face model directory (default: tiny GPT-2 from config)")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--logprobs", action="store_true", help="only the cost of logprobs: 5 (1 and 16 clients)")
    args = parser.parse_args()

    import ray
    from ray import serve

    os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
    from components.deploy.ingress import local_ingress_env

    os.environ.update(local_ingress_env(dict(os.environ)))  # Serve's ingress as `lifecycle run` starts it: HAProxy
    model_dir = args.model or tiny_model(Path(tempfile.mkdtemp(prefix="bench-model-")))
    ray.init(address="local", num_cpus=2, log_to_driver=False, configure_logging=False)
    if args.logprobs:
        try:
            return logprobs_cost(model_dir, args.port)
        finally:
            serve.shutdown()
            ray.shutdown()
    rows = []
    try:
        timed = direct_generate(model_dir)
        url = deploy(model_dir, args.port, max_batch_size=16, max_ongoing_requests=32)
        asyncio.run(_fire(url, 20, 1))  # warm-up
        # In turns, so that the machine's load drifting over the run weighs on both alike.
        in_process, one = [], []
        for _ in range(5):
            in_process += [timed() for _ in range(20)]
            one += asyncio.run(_fire(url, 20, 1))[2]
        direct, served = statistics.median(in_process), statistics.median(one)
        rows.append(("latency p50, one request, 8 tokens", f"{direct * 1000:.1f} ms in-process", f"{served * 1000:.1f} ms via Serve",
                     f"+{(served - direct) * 1000:.1f} ms"))

        wide = args.model or tiny_model(Path(tempfile.mkdtemp(prefix="bench-model-")), n_layer=6, n_embd=384, n_head=6)
        sweep = {}  # (batch size, clients) -> (requests per second, latencies of the 200s)
        for batch in (16, 1):
            url = deploy(wide, args.port, max_batch_size=batch, max_ongoing_requests=32)
            asyncio.run(_fire(url, 4, 1))
            for clients in CLIENTS:
                n = max(12, 3 * clients)
                seconds, codes, latencies = asyncio.run(_fire(url, n, clients, max_tokens=32))
                assert codes == Counter({200: n}), (batch, clients, codes)
                sweep[batch, clients] = (n / seconds, latencies)
        batched, single = sweep[16, 16][0], sweep[1, 16][0]
        rows.append(("throughput, 16 clients, 32 tokens, 11M model", f"{single:.2f} req/s unbatched", f"{batched:.2f} req/s batched",
                     f"x{batched / single:.2f}"))

        url = deploy(model_dir, args.port, max_batch_size=16, max_ongoing_requests=16, max_queued_requests=16)
        asyncio.run(_fire(url, 10, 1))
        before = replica_ids()
        seconds, codes, latencies = asyncio.run(_fire(url, args.requests, args.concurrency))
        after = replica_ids()
        bad = {c: n for c, n in codes.items() if c not in (200, 429, 503)}
        rows.append((f"load, {args.requests} requests at {args.concurrency} clients", f"{dict(sorted(codes.items()))} in {seconds:.0f}s",
                     f"p50 {statistics.median(latencies) * 1000:.0f} ms of the 200s",
                     f"other codes {bad or 'none'}, replicas {'unchanged' if before == after and before else 'CHANGED'}"))
    finally:
        serve.shutdown()
        ray.shutdown()
    print("| measure | baseline | measured | result |\n|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print("\nBy concurrency (11M model, 32 new tokens, max(12, 3 x clients) requests a cell; latency of each request, ms):\n")
    print("| clients | unbatched req/s | batched req/s | batched vs unbatched | unbatched p50 / p95 / p99 | batched p50 / p95 / p99 |")
    print("|---:|---:|---:|---:|---:|---:|")
    for clients in CLIENTS:
        (single, lat_s), (batched, lat_b) = sweep[1, clients], sweep[16, clients]
        print(f"| {clients} | {single:.2f} | {batched:.2f} | x{batched / single:.2f} | {_percentiles(lat_s)} | {_percentiles(lat_b)} |")
    return 0


def logprobs_cost(model_dir: Path, port: int, turns: int = 3) -> int:
    """Print requests per second with and without `logprobs: 5` at 1 and 16 clients (32 new tokens)."""
    url = deploy(model_dir, port, max_batch_size=16, max_ongoing_requests=32)
    asyncio.run(_fire(url, 20, 1, logprobs=5))  # warm-up
    rates: dict[tuple[int, bool], list[float]] = {}
    for clients in (1, 16):
        n = max(24, 3 * clients)
        for _ in range(turns):  # in turns: the machine's drifting load weighs on both alike
            for logprobs in (False, True):
                seconds, codes, _ = asyncio.run(_fire(url, n, clients, max_tokens=32, **({"logprobs": 5} if logprobs else {})))
                assert codes == Counter({200: n}), (clients, logprobs, codes)
                rates.setdefault((clients, logprobs), []).append(n / seconds)
    print("| clients | req/s without logprobs | req/s with logprobs: 5 | with / without |\n|---:|---:|---:|---:|")
    for clients in (1, 16):
        without, with_ = (statistics.median(rates[clients, lp]) for lp in (False, True))
        print(f"| {clients} | {without:.2f} | {with_:.2f} | x{with_ / without:.2f} |")
    print(f"\n(tiny GPT-2, 32 new tokens, greedy; median of {turns} alternating turns of max(24, 3 x clients) requests)")
    return 0


def _percentiles(latencies: list[float]) -> str:
    """p50 / p95 / p99 in milliseconds."""
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return " / ".join(f"{v * 1000:.0f}" for v in (statistics.median(latencies), q[94], q[98]))


if __name__ == "__main__":
    sys.exit(main())
