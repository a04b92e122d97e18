"""What every benchmark script shares: a median timer that waits for the device, a per-kernel GPU profile, and the
line that says where and on what a table was measured."""

from __future__ import annotations

import collections
import datetime
import glob
import os
import platform
import statistics
import subprocess
import tempfile
import time

import jax

TINY_MODEL = {
    "paligemma_variant": "tiny",
    "action_expert_variant": "tiny_expert",
    "siglip_variant": "tiny/14",
    "image_resolution": (56, 56),
    "vocab_size": 256,
    "max_token_len": 12,
    "action_horizon": 6,
}
"""The tests' tiny π0 (3 Gemma layers, 56×56 images) with LIBERO's 32 action dims: a quick check of a benchmark, or
a model whose cost is all overhead."""


def median_ms(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` in ms after one warm-up call; the result is waited for (JAX is asynchronous)."""
    jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


_NOT_KERNELS = ("xla ops", "xla modules", "steps", "source", "tf ops", "launch stats")
"""Lines of a GPU plane that summarise kernels rather than list them."""


def _traced(fn, calls: int) -> tuple[float, list, list]:
    """``calls`` calls of ``fn`` under the profiler (after one warm-up): (wall ms per call, GPU kernel events, host
    events), each event (start ns, end ns, name); no events when no trace was written."""
    jax.block_until_ready(fn())
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir)
        start = time.perf_counter()
        for _ in range(calls):
            jax.block_until_ready(fn())
        wall = (time.perf_counter() - start) * 1000 / calls
        jax.profiler.stop_trace()
        files = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
        if not files:
            return wall, [], []
        data = jax.profiler.ProfileData.from_file(files[0])
    kernels, host = [], []
    for plane in data.planes:
        on_gpu = "gpu" in plane.name.lower()
        for line in plane.lines:
            if on_gpu and line.name.lower() in _NOT_KERNELS:
                continue
            (kernels if on_gpu else host).extend((e.start_ns, e.start_ns + e.duration_ns, e.name) for e in line.events)
    return wall, kernels, host


def kernel_times(fn, calls: int) -> tuple[float, dict[str, list]]:
    """Profile ``calls`` calls of ``fn`` (after one warm-up): (wall ms per call, {kernel name: [GPU ms per call,
    launches per call]}); empty when no trace was written. Kernels of XLA's fusions carry the fusion's name
    (``gemm_fusion_dot_785`` is ``gemm_fusion_dot.785`` in the HLO)."""
    wall, kernels, _ = _traced(fn, calls)
    table: dict[str, list] = {}
    for start, stop, name in kernels:
        row = table.setdefault(name, [0.0, 0])
        row[0] += (stop - start) / 1e6 / calls
        row[1] += 1
    for row in table.values():
        row[1] //= calls
    return wall, table


def gpu_timeline(fn, top: int = 12) -> dict:
    """One profiled call of ``fn`` (after one warm-up) as a GPU timeline: its span from the first kernel's start to
    the last one's end, the time some kernel ran (overlaps counted once), the idle time in between, and the longest
    idle gaps with the kernels on either side and where in the span they fall (0 = start, 1 = end)."""
    _, events, host = _traced(fn, 1)
    if not events:
        return {}
    events.sort()
    busy, gaps, end, last = 0.0, [], events[0][0], events[0][2]
    for start, stop, name in events:
        if start > end:
            gaps.append((start - end, end, last, name))
        if stop > end:
            busy += stop - max(start, end)
            end, last = stop, name
    first = events[0][0]
    span = end - first
    gaps.sort(reverse=True)
    # What the host was doing during the longest gap: the host events overlapping it, by name.
    during = collections.Counter()
    if gaps:
        length, gap_start = gaps[0][0], gaps[0][1]
        for start, stop, name in host:
            overlap = min(stop, gap_start + length) - max(start, gap_start)
            if overlap > 0:
                during[name[:90]] += overlap / 1e3
    return {
        "span_ms": span / 1e6,
        "busy_ms": busy / 1e6,
        "idle_ms": sum(g[0] for g in gaps) / 1e6,
        "gaps_over_5us": sum(g[0] > 5000 for g in gaps),
        "idle_in_gaps_over_5us_ms": sum(g[0] for g in gaps if g[0] > 5000) / 1e6,
        "host_during_longest_gap_us": dict(during.most_common(2 * top)),
        "longest_gaps": [
            {"us": g / 1e3, "at": (at - first) / span, "after": before[:80], "before": after[:80]}
            for g, at, before, after in gaps[:top]
        ],
    }


def environment() -> str:
    """``device: …; jax …; python …; N CPU cores; date …; commit …`` for the head of a results table."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
        commit = (commit or "?") + (" (uncommitted changes)" if dirty.stdout.strip() else "")
    except OSError:
        commit = "?"
    device = jax.devices()[0]
    return (
        f"device: {getattr(device, 'device_kind', device.platform)} ({device.platform}); jax {jax.__version__}; "
        f"python {platform.python_version()}; {os.cpu_count()} CPU cores; date {datetime.date.today()}; commit {commit}"
    )


def emit(text: str, out=None) -> None:
    """Print a results table and, with ``out`` (a path), write it there as markdown."""
    print(text)
    if out is not None:
        import pathlib

        out = pathlib.Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
