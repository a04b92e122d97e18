"""LIBERO evaluation throughput: env steps/s and episodes/hour against the number of env worker processes.

Each setting runs the same episodes (LIBERO-OOD tasks, seeded resets, a fixed step budget) through
`textlatent.libero.evaluation.evaluate`, wall time from the call to the last record, env creation and the first
step's compile included, as a user's run pays them. The policy is a server that answers every request at once with
the settle action, so the figures are the simulator side's capacity; a π0 server adds its own latency per request
(`benchmarks/serving.py`). Two cameras at 256×256, as openpi's client.

    uv run python benchmarks/libero_eval.py --workers 1 2 --tasks 2 --trials 3 --max-steps 100 \
        --out benchmarks/results/libero_eval_cpu.md
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from common import emit, environment

from textlatent.libero.evaluation import Condition, EvalSettings, Output, evaluate
from textlatent.libero.protocol import LIBERO_DUMMY_ACTION
from textlatent.serving.function_server import FunctionServer


def settle_policy(obs):
    return {"actions": np.tile(np.asarray(LIBERO_DUMMY_ACTION, np.float32), (50, 1))}


def measure(workers: int, tasks: int, trials: int, max_steps: int, video: str, root: pathlib.Path) -> dict:
    with FunctionServer(settle_policy, metadata={"policy": "settle"}) as server:
        start = time.perf_counter()
        report = evaluate(
            [Condition("libero_goal_ood")],
            EvalSettings(trials=trials, tasks=tuple(range(tasks)), max_steps=max_steps),
            address=server.url,
            run_dir=root / f"workers{workers}",
            workers=workers,
            output=Output(video=video),
            progress=False,
        )
        wall = time.perf_counter() - start
    return {
        "workers": workers,
        "episodes": report.finished,
        "env_steps": report.env_steps,
        "wall_s": wall,
        "steps_per_s": report.env_steps / wall,
        "episodes_per_hour": report.finished / wall * 3600,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--tasks", type=int, default=2, help="tasks 0..N-1 of libero_goal_ood")
    parser.add_argument("--trials", type=int, default=3, help="episodes per task (a worker reuses its env)")
    parser.add_argument("--max-steps", type=int, default=100, help="policy steps per episode (+10 settle steps)")
    parser.add_argument(
        "--video",
        choices=("all", "none"),
        nargs="+",
        default=["none", "all"],
        help="none renders only what the policy sees",
    )
    parser.add_argument("--out", type=pathlib.Path)
    args = parser.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="libero-bench-") as tmp:
        for video in args.video:
            for workers in args.workers:
                result = measure(workers, args.tasks, args.trials, args.max_steps, video, pathlib.Path(tmp) / video)
                rows.append({**result, "video": video})
                print(rows[-1], flush=True)
    lines = [
        "# LIBERO evaluation throughput against env workers",
        "",
        environment(),
        "",
        f"libero_goal_ood, {args.tasks} tasks × {args.trials} episodes per setting, {args.max_steps} + 10 env steps each, "
        "seeded resets, "
        "two 256×256 cameras; policy: a server answering at once (simulator capacity). Wall time includes worker "
        "start-up, env creation and resets. videos none: the cameras are drawn only for the observations the policy "
        "sees (one step in 5); all: every step, for the episode video.",
        "",
        "| videos | workers | episodes | env steps | wall s | env steps/s | episodes/hour | vs 1 worker |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        base = next(b for b in rows if b["video"] == r["video"])["episodes_per_hour"]
        lines.append(
            f"| {r['video']} | {r['workers']} | {r['episodes']} | {r['env_steps']} | {r['wall_s']:.1f} | "
            f"{r['steps_per_s']:.2f} | {r['episodes_per_hour']:.0f} | {r['episodes_per_hour'] / base:.2f}× |"
        )
    emit("\n".join(lines) + "\n", args.out)


if __name__ == "__main__":
    main()
