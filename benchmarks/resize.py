"""Two cameras' frames resized to 224×224 as the policy takes them: by PIL on the host (the transforms' thread pool)
and on the accelerator (``textlatent.policy.resize``: both cameras in one program, host arrays in, waited for), at
several batch sizes; with a check that both give the same bytes on this backend.

    PYTHONPATH=src python benchmarks/resize.py --out benchmarks/results/resize_h100.md
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from common import emit, environment, median_ms

from textlatent.policy.resize import resize_all_on_device
from textlatent.policy.transforms import resize_all_with_pad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--size", type=int, nargs=2, default=[256, 256], metavar=("H", "W"))
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=pathlib.Path)
    args = parser.parse_args()

    rows = []
    for batch in args.batch:
        rng = np.random.default_rng(batch)
        cameras = [rng.integers(0, 256, (batch, *args.size, 3), dtype=np.uint8) for _ in range(2)]
        host = resize_all_with_pad(cameras, 224, 224)
        device = [np.asarray(a) for a in resize_all_on_device(cameras, 224, 224)]
        same = all(np.array_equal(h, d) for h, d in zip(host, device, strict=True))
        pil_ms = median_ms(lambda c=cameras: resize_all_with_pad(c, 224, 224), args.repeats)
        device_ms = median_ms(lambda c=cameras: resize_all_on_device(c, 224, 224), args.repeats)
        rows.append(f"| {batch} | {pil_ms:.2f} | {device_ms:.2f} | {same} |")
        print(rows[-1], flush=True)
    lines = [
        f"# Two cameras' {args.size[0]}×{args.size[1]} frames resized to 224×224: PIL on the host vs the accelerator",
        "",
        f"{environment()}; median of {args.repeats} after warm-up",
        "",
        "| frames per camera | PIL on the host (ms) | on the device, host arrays in, waited for (ms) | same bytes |",
        "|---|---|---|---|",
        *rows,
    ]
    emit("\n".join(lines), args.out)


if __name__ == "__main__":
    main()
