"""Policy-server throughput and latency vs number of concurrent clients (stock openpi-client, closed loop: each
client sends its next request when the previous reply arrives). The server runs in its own process with random
weights; each configuration is compared with the same server at --max-batch 1 (one request per model call, the way
openpi's server works). Prints one table; with --out, writes it as markdown with device and versions.

    uv run python benchmarks/serving.py --model tiny --clients 1 2 4 8 16
    PYTHONPATH=src python benchmarks/serving.py --model small --clients 1 8 16   # on a GPU machine
"""

from __future__ import annotations

import argparse
import multiprocessing
import pathlib
import sys
import tempfile
import time

import numpy as np

from textlatent.checkpoint.random import SMALL_RANDOM

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from common import TINY_MODEL, emit, environment

MODELS = {
    # The tests' tiny π0 (3 Gemma layers, 56×56 images): serving overhead dominates, as for any small model.
    "tiny": TINY_MODEL,
    # `textlatent serve --random`: dummy Gemma streams, SigLIP mu/14 at 224×224.
    "small": SMALL_RANDOM,
}


def _serve(checkpoint, tokenizer, overrides, max_batch, max_wait_ms, port_queue, stop_event):
    import textlatent
    from textlatent.serving import PolicyServer, ServerConfig, ServerThread

    policy = textlatent.load_policy("pi0_libero", checkpoint, tokenizer=str(tokenizer), **overrides)
    server = PolicyServer(policy, ServerConfig(port=0, max_batch=max_batch, max_wait_ms=max_wait_ms, summary_every_s=0))
    server.engine.warmup()  # every bucket compiled before the clock starts
    with ServerThread(server) as thread:
        port_queue.put(thread.port)
        stop_event.wait()


class Server:
    def __init__(self, checkpoint, tokenizer, overrides, max_batch, max_wait_ms):
        ctx = multiprocessing.get_context("spawn")
        self._ports, self._stop = ctx.Queue(), ctx.Event()
        self._process = ctx.Process(
            target=_serve,
            args=(checkpoint, tokenizer, overrides, max_batch, max_wait_ms, self._ports, self._stop),
            daemon=True,
        )

    def __enter__(self):
        self._process.start()
        self.port = self._ports.get(timeout=900)
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._process.join(60)


def observation(resolution, seed):
    rng = np.random.default_rng(seed)
    h, w = resolution
    return {
        "observation/image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
        "observation/wrist_image": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
        "observation/state": rng.normal(size=8),
        "prompt": "put the bowl on the plate",
    }


def _client(port, seed, resolution, barrier, deadline, results):
    """One closed-loop client in its own process, as each LIBERO environment worker is."""
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    latencies, batches, model_ms = [], [], []
    try:
        policy = WebsocketClientPolicy("127.0.0.1", port)
        obs = observation(resolution, seed)
        policy.infer(obs)  # connection warm
        barrier.wait()
        while time.time() < deadline.value:
            start = time.perf_counter()
            reply = policy.infer(obs)
            latencies.append((time.perf_counter() - start) * 1000)
            batches.append(reply["policy_timing"]["batch_size"])
            model_ms.append(reply["policy_timing"]["infer_ms"])
    except Exception as exc:  # reported by the parent
        results.put(repr(exc))
        barrier.abort()
        return
    results.put((latencies, batches, model_ms))


def run_clients(port, clients, seconds, resolution):
    """``clients`` closed-loop client processes for ``seconds``: (requests/s, latencies ms, mean batch size, mean
    model ms per call)."""
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(clients + 1), ctx.Queue()
    deadline = ctx.Value("d", time.time() + 3600)
    processes = [
        ctx.Process(target=_client, args=(port, i, resolution, barrier, deadline, results), daemon=True)
        for i in range(clients)
    ]
    for p in processes:
        p.start()
    barrier.wait(timeout=600)
    start = time.perf_counter()
    deadline.value = time.time() + seconds
    outcomes = [results.get(timeout=seconds + 600) for _ in processes]
    elapsed = time.perf_counter() - start
    for p in processes:
        p.join(30)
    failures = [o for o in outcomes if isinstance(o, str)]
    if failures:
        raise RuntimeError(f"{len(failures)} client(s) failed: {failures[0]}")
    latencies = np.concatenate([o[0] for o in outcomes])
    batches = np.concatenate([o[1] for o in outcomes])
    model_ms = np.concatenate([o[2] for o in outcomes])
    return len(latencies) / elapsed, latencies, float(np.mean(batches)), float(np.mean(model_ms))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--seconds", type=float, default=10.0, help="measured time per row")
    parser.add_argument("--no-baseline", action="store_true", help="skip the --max-batch 1 comparison")
    parser.add_argument("--out", type=pathlib.Path, help="write the table as markdown here")
    args = parser.parse_args()

    from textlatent.checkpoint.random import write_random_setup
    from textlatent.policy import get_config

    overrides = MODELS[args.model]
    config = get_config("pi0_libero", **overrides)
    resolution = config.model.image_resolution
    root = pathlib.Path(tempfile.mkdtemp(prefix="textlatent-bench-"))
    checkpoint, tokenizer = write_random_setup(root, config.model, config.asset_id)

    setups = [("batched", args.max_batch)] + ([] if args.no_baseline else [("one per call", 1)])
    results = {}
    for name, max_batch in setups:
        with Server(checkpoint, tokenizer, overrides, max_batch, args.max_wait_ms) as server:
            for clients in args.clients:
                rate, lat, batch, model = run_clients(server.port, clients, args.seconds, resolution)
                results[(name, clients)] = (rate, lat, batch, model)
                print(
                    f"{name:>12} clients {clients:3d}: {rate:7.1f} req/s  p50 {np.percentile(lat, 50):7.1f} ms  "
                    f"p99 {np.percentile(lat, 99):7.1f} ms  mean batch {batch:.2f}  model {model:.1f} ms/call",
                    flush=True,
                )

    base = results[("batched", args.clients[0])][0]
    lines = [
        f"# Policy server, {args.model} model (random weights), stock openpi-client, closed loop",
        "",
        f"{environment()}; server --max-batch {args.max_batch} --max-wait-ms {args.max_wait_ms}; "
        f"{args.seconds:.0f} s per row; clients are separate processes on the same machine",
        "",
        "| clients | req/s | × 1 client | p50 ms | p99 ms | mean batch | model ms per call | req/s at --max-batch 1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for clients in args.clients:
        rate, lat, batch, model = results[("batched", clients)]
        single = results.get(("one per call", clients))
        lines.append(
            f"| {clients} | {rate:.1f} | {rate / base:.2f} | {np.percentile(lat, 50):.1f} | "
            f"{np.percentile(lat, 99):.1f} | {batch:.2f} | {model:.1f} | {'' if single is None else f'{single[0]:.1f}'} |"
        )
    print()
    emit("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
