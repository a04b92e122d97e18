"""Where a profiled program's GPU time goes, by how often each kernel runs in one call, from ``gpu_profile.py``'s
output (``profile.json`` and the optimized HLO beside it).

π0's structure shows in the launch counts of a batch-1 chunk: 180 = once per flow layer-step (10 steps × 18 expert
layers), 10 = once per flow step (kernels XLA compiled once per layer, e.g. the norms that read their layer's scale),
27 = once per SigLIP block, 17 and 18 = once per PaliGemma layer of the prefix, 1 = once per chunk. Each kernel is
listed with its result shape and the JAX operation it came from (XLA names a fusion's kernel after the fusion):

    python benchmarks/profile_breakdown.py OUT_DIR [--variant default] [--program chunk_b1] [--top 14]
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import pathlib
import re


def hlo_lines(path: pathlib.Path) -> dict[str, str]:
    """Instruction name → its HLO line, for every instruction of the optimized module."""
    text = gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()
    lines = {}
    for line in text.splitlines():
        match = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (.*)", line)
        if match:
            lines.setdefault(match.group(1), match.group(2))
    return lines


def describe(kernel: str, hlo: dict[str, str]) -> str:
    """``shape ← op`` for an XLA fusion's kernel; library kernels (cuBLAS, cuDNN) are named as they are."""
    line = hlo.get(re.sub(r"_(\d+)$", r".\1", kernel))
    if line is None:
        return ""
    shape = line.split(" ")[0]
    op = re.search(r'op_name="([^"]*)"', line)
    return f"{shape} ← {op.group(1).rsplit('/', 2)[-1] if op else '?'}"


def breakdown(kernels: dict[str, list], hlo: dict[str, str], top: int) -> str:
    groups = collections.defaultdict(list)
    for name, (ms, launches) in kernels.items():
        groups[launches].append((ms, name))
    busy = sum(ms for ms, _ in kernels.values())
    lines = [f"GPU busy {busy:.3f} ms in {sum(n for _, n in kernels.values())} kernels", ""]
    lines += ["| launches per call | kernels | GPU ms | share |", "|---|---|---|---|"]
    order = sorted(groups, key=lambda n: -sum(ms for ms, _ in groups[n]))
    for launches in order:
        total = sum(ms for ms, _ in groups[launches])
        lines.append(f"| {launches} | {len(groups[launches])} | {total:.3f} | {100 * total / busy:.1f} % |")
    for launches in order:
        rows = sorted(groups[launches], reverse=True)
        if sum(ms for ms, _ in rows) < 0.02 * busy:
            continue
        lines += ["", f"Kernels launched {launches}× per call (µs per launch):", ""]
        lines += ["| µs | kernel | result ← operation |", "|---|---|---|"]
        for ms, name in rows[:top]:
            lines.append(f"| {1000 * ms / launches:.2f} | `{name[:60]}` | {describe(name, hlo)} |")
        if len(rows) > top:
            rest = sum(ms for ms, _ in rows[top:])
            lines.append(f"| {1000 * rest / launches / (len(rows) - top):.2f} avg | {len(rows) - top} more | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=pathlib.Path, help="gpu_profile.py's --out directory")
    parser.add_argument("--variant", default="default")
    parser.add_argument("--program", default="chunk_b1", help="chunk_b1, chunk_b8 or capture_b32")
    parser.add_argument("--top", type=int, default=14)
    args = parser.parse_args()
    summary = json.loads((args.out_dir / "profile.json").read_text())
    profile = summary["variants"][args.variant][f"profile {args.program}"]
    hlo = hlo_lines(args.out_dir / f"{args.variant}_{args.program}.hlo.txt.gz")
    print(
        f"{summary['environment']}\n\n{args.variant}, {args.program}: traced {profile['traced_wall_ms']:.2f} ms a call"
    )
    print(breakdown(profile["kernels"], hlo, args.top))


if __name__ == "__main__":
    main()
