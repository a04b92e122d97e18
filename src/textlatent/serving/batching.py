"""Dynamic batching: requests from any number of connections are grouped into one jitted π0 call.

One worker thread owns the accelerator. It takes the oldest waiting request, waits up to ``max_wait_ms`` for more (up
to ``max_batch``), groups them by edit signature (plain requests together; steered requests with the same edit layout
together) and pads each group to a bucket size, so at most ``len(buckets)`` programs are compiled per signature.
Each row's noise and edit travel with it, so a row's result does not depend on what else shares its batch.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from textlatent.latents.interventions import ResolvedEdit, stack_edits
from textlatent.policy import Policy

logger = logging.getLogger("textlatent.serving")


def bucket_sizes(max_batch: int) -> tuple[int, ...]:
    """Powers of two below ``max_batch``, then ``max_batch`` itself."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    sizes, b = [], 1
    while b < max_batch:
        sizes.append(b)
        b *= 2
    return (*sizes, max_batch)


@dataclasses.dataclass
class Job:
    """One row of work: batch-1 model inputs, optional noise [1, H, D], optional edit, and where the result goes."""

    inputs: dict
    noise: np.ndarray | None
    edit: ResolvedEdit | None
    done: Callable[[Any], None]
    """Called on the worker thread with a dict (``actions`` [H, action_dims], timings) or an exception."""
    enqueued: float = dataclasses.field(default_factory=time.monotonic)
    task: Callable[[], Any] | None = None
    """Work that is not a sampling row (e.g. an inversion): run alone on the worker thread, which owns the
    accelerator; ``done`` gets its return value."""

    @property
    def signature(self) -> tuple | None:
        if self.task is not None:
            return ("task", id(self))
        return None if self.edit is None else self.edit.signature


def task_job(task: Callable[[], Any], done: Callable[[Any], None]) -> Job:
    return Job(inputs={}, noise=None, edit=None, done=done, task=task)


@dataclasses.dataclass
class BatchStats:
    batches: int = 0
    rows: int = 0
    padded_rows: int = 0
    failures: int = 0
    sizes: dict[int, int] = dataclasses.field(default_factory=dict)


class BatchingEngine:
    def __init__(
        self,
        policy: Policy,
        *,
        max_batch: int = 8,
        max_wait_ms: float = 5.0,
        expected_rows: Callable[[], int] | None = None,
        batch_invariant: bool = False,
    ):
        """``expected_rows``: how many rows could arrive for the next batch (e.g. the number of connected clients);
        once a batch holds that many, it runs without waiting out ``max_wait_ms``. None: always wait.

        ``batch_invariant``: run every call at ``max_batch`` rows. XLA picks its matmul blocking by shape, so rows
        computed at different batch sizes agree only to float rounding (which bf16 and 10 flow steps can amplify);
        with one shape a row's result never depends on how many requests shared its call."""
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.policy = policy
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.buckets = (max_batch,) if batch_invariant else bucket_sizes(max_batch)
        self.expected_rows = expected_rows
        self.stats = BatchStats()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()

    # ------------------------------------------------------------------------------------------------ lifecycle
    def start(self) -> BatchingEngine:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="textlatent-batcher", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float | None = 30.0) -> None:
        """Finish every submitted job, then stop the worker."""
        if self._thread is None:
            return
        self._queue.put(None)
        self._thread.join(timeout)
        self._thread = None

    def submit(self, job: Job) -> None:
        if self._stopped.is_set():
            raise RuntimeError("the batching engine is stopped")
        self._queue.put(job)

    def warmup(self, sizes=None) -> dict[int, float]:
        """Compile the plain program for each bucket (seconds per bucket): first clients then never wait on XLA."""
        times = {}
        for size in sizes or self.buckets:
            start = time.perf_counter()
            self._run_rows(
                [_dummy_inputs(self.policy)] * size, np.zeros((size, *self._noise_shape()), np.float32), None
            )
            times[size] = time.perf_counter() - start
        return times

    # ------------------------------------------------------------------------------------------------ worker
    def _noise_shape(self) -> tuple[int, int]:
        config = self.policy.model.config
        return config.action_horizon, config.action_dim

    def _collect(self, first: Job) -> tuple[list[Job], bool]:
        jobs, stop = [first], False
        deadline = time.monotonic() + self.max_wait
        while len(jobs) < self.max_batch:
            remaining = deadline - time.monotonic()
            if self.expected_rows is not None and len(jobs) >= self.expected_rows():
                remaining = 0  # nobody else can be on the way: take what is queued and go
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                stop = True
                break
            jobs.append(job)
        return jobs, stop

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                break
            jobs, stop = self._collect(first)
            groups: dict[Any, list[Job]] = {}
            for job in jobs:
                groups.setdefault(job.signature, []).append(job)
            for group in groups.values():
                self._run_group(group)
            if stop:
                break
        self._stopped.set()
        # Anything submitted after the stop marker still gets an answer.
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.done(RuntimeError("the server is shutting down"))

    def _run_group(self, jobs: list[Job]) -> None:
        if jobs[0].task is not None:
            try:
                result = jobs[0].task()
            except Exception as exc:  # reported to its request; the server goes on
                result = exc
            jobs[0].done(result)
            return
        start = time.monotonic()
        try:
            # Rows without noise take the policy's next draws in arrival order, as consecutive infer calls would.
            drawn = iter(self.policy.draw_noises(sum(job.noise is None for job in jobs)))
            noise = np.stack([job.noise[0] if job.noise is not None else next(drawn) for job in jobs])
            actions, size, model_ms = self._run_rows([job.inputs for job in jobs], noise, [job.edit for job in jobs])
            outputs = self.policy.transforms.outputs(actions, np.concatenate([job.inputs["state"] for job in jobs]))
        except Exception as exc:  # one bad batch must not stop the server; every row hears why
            logger.exception("batch of %d failed", len(jobs))
            self.stats.failures += 1
            for job in jobs:
                job.done(exc)
            return
        self.stats.batches += 1
        self.stats.rows += len(jobs)
        self.stats.padded_rows += size - len(jobs)
        self.stats.sizes[size] = self.stats.sizes.get(size, 0) + 1
        for i, job in enumerate(jobs):
            job.done(
                {
                    "actions": outputs[i],
                    "policy_timing": {
                        "infer_ms": model_ms,
                        "queue_ms": (start - job.enqueued) * 1000,
                        "batch_size": len(jobs),
                        "bucket": size,
                    },
                }
            )

    def _run_rows(self, inputs: list[dict], noise: np.ndarray, edits: list[ResolvedEdit | None] | None):
        """Stack rows, pad to the bucket by repeating the last row, run the model, return (actions [n, H, D], bucket,
        model ms)."""
        n = len(inputs)
        size = next(b for b in self.buckets if b >= n)
        rows = list(range(n)) + [n - 1] * (size - n)
        stacked = _stack([inputs[i] for i in rows])
        edit = None
        if edits is not None and edits[0] is not None:
            edit = stack_edits([edits[i] for i in rows], self.policy.model.config.text_start)
        start = time.monotonic()
        actions = self.policy.run_model(stacked, noise[rows], edit)
        return actions[:n], size, (time.monotonic() - start) * 1000


def _stack(rows: list[dict]) -> dict:
    first = rows[0]
    out = {}
    for key, value in first.items():
        if isinstance(value, dict):
            out[key] = {k: np.concatenate([r[key][k] for r in rows]) for k in value}
        elif isinstance(value, np.ndarray):
            out[key] = np.concatenate([r[key] for r in rows])
    return out


def _dummy_inputs(policy: Policy) -> dict:
    """A request's model inputs as the transforms make them (same cameras masked, a short prompt), so warm-up
    compiles the programs real requests use."""
    h, w = policy.model.config.image_resolution
    request = {
        "observation/image": np.zeros((h, w, 3), np.uint8),
        "observation/wrist_image": np.zeros((h, w, 3), np.uint8),
        "observation/state": np.zeros(policy.config.state_dims, np.float32),
        "prompt": "warm up",
    }
    inputs = policy.transforms.inputs(request)
    inputs.pop("batched")
    return inputs
