"""A LIBERO evaluation run on disk: one record per episode, resumable, with summaries and Wilson intervals.

Layout of a run directory:
  config.json    the run's settings and package versions, written once; a resume with other settings is refused
  episodes.csv   one line per finished episode, appended with a single write + fsync, so a killed run loses at most
                 the episode in flight (a half-written last line is dropped when the directory is opened again)
  results.json   counts, success rate and Wilson 95% interval per label / suite / task, rewritten after each episode
  results.md     the same as one markdown table per suite
  videos/        episode-unique video files (openpi's example reused one name per task and outcome, so later
                 episodes overwrote earlier ones)
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.metadata
import io
import json
import math
import os
import platform
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

Z_95 = 1.959964  # two-sided 95% standard normal quantile

CONFIG_FILE = "config.json"
EPISODES_FILE = "episodes.csv"
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
VIDEOS_DIR = "videos"
DEFAULT_VERSION_PACKAGES = ("textlatent", "numpy", "jax", "jaxlib", "flax", "pillow")


def wilson_interval(successes: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; unlike p ± z·se it stays inside [0, 1] and is not
    degenerate at 0/n or n/n, which is where LIBERO success rates often sit."""
    if n <= 0:
        raise ValueError(f"the Wilson interval needs at least one trial, got n={n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, n], got {successes} of {n}")
    p = successes / n
    z2 = z * z
    denominator = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half_width = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denominator
    # Clamp float noise (e.g. -1e-17 at 0/n) so the bounds are proper probabilities.
    return max(0.0, centre - half_width), min(1.0, centre + half_width)


class EpisodeKey(NamedTuple):
    """What identifies an episode across resumes."""

    label: str
    suite: str
    task_index: int
    episode_index: int


@dataclass(frozen=True)
class EpisodeRecord:
    label: str  # steering / experiment label, e.g. "baseline" or "tli"
    suite: str
    task: str  # the task's language instruction
    task_index: int
    episode_index: int
    seed: int
    success: bool
    steps: int  # env steps taken, settle steps included
    wall_seconds: float
    video_paths: tuple[str, ...] = ()
    error: str = ""  # why the episode ended early, if it did (an exception counts as failure, as in openpi)

    @property
    def key(self) -> EpisodeKey:
        return EpisodeKey(self.label, self.suite, self.task_index, self.episode_index)

    def to_row(self) -> list[str]:
        return [
            self.label,
            self.suite,
            self.task,
            str(self.task_index),
            str(self.episode_index),
            str(self.seed),
            "1" if self.success else "0",
            str(self.steps),
            repr(float(self.wall_seconds)),
            json.dumps(list(self.video_paths)),
            self.error,
        ]

    @classmethod
    def from_row(cls, row: list[str]) -> EpisodeRecord:
        if len(row) != len(CSV_COLUMNS):
            raise ValueError(f"expected {len(CSV_COLUMNS)} fields, got {len(row)}: {row!r}")
        label, suite, task, task_index, episode_index, seed, success, steps, wall, videos, error = row
        if success not in ("0", "1"):
            raise ValueError(f"success must be 0 or 1, got {success!r}")
        return cls(
            label=label,
            suite=suite,
            task=task,
            task_index=int(task_index),
            episode_index=int(episode_index),
            seed=int(seed),
            success=success == "1",
            steps=int(steps),
            wall_seconds=float(wall),
            video_paths=tuple(json.loads(videos)),
            error=error,
        )


CSV_COLUMNS = tuple(f.name for f in dataclasses.fields(EpisodeRecord))


class ConfigMismatchError(ValueError):
    """A resumed run was given settings that differ from the ones it started with."""


def collect_versions(packages: Iterable[str] = DEFAULT_VERSION_PACKAGES) -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in packages:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


class RunDirectory:
    """One evaluation run's directory; safe to reopen after a kill and continue (`--resume`)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._records: dict[EpisodeKey, EpisodeRecord] = {}
        self._task_names: dict[tuple[str, int], str] = {}
        self._load_episodes()

    # ---- config ----

    def start(self, config: Mapping[str, Any], versions: Mapping[str, Any] | None = None) -> dict[str, tuple[Any, Any]]:
        """Write config.json on the first start; on a resume, refuse settings that differ from it.

        Returns the package versions that changed since the run started ({name: (then, now)}) so the caller can
        log them; versions do not block a resume, settings do.
        """
        config = _json_roundtrip(dict(config))
        versions = _json_roundtrip(dict(versions if versions is not None else collect_versions()))
        config_path = self.path / CONFIG_FILE
        if not config_path.exists():
            _write_atomically(config_path, json.dumps({"config": config, "versions": versions}, indent=2) + "\n")
            return {}
        saved = json.loads(config_path.read_text())
        differing = _differing_keys(saved.get("config", {}), config)
        if differing:
            details = "; ".join(
                f"{key}: run has {_lookup(saved['config'], key)!r}, now {_lookup(config, key)!r}" for key in differing
            )
            raise ConfigMismatchError(
                f"{config_path} was written with other settings ({details}); "
                "use a new run directory or the original settings"
            )
        saved_versions = saved.get("versions", {})
        return {
            name: (saved_versions.get(name), versions.get(name))
            for name in sorted(set(saved_versions) | set(versions))
            if saved_versions.get(name) != versions.get(name)
        }

    @property
    def config(self) -> dict[str, Any] | None:
        config_path = self.path / CONFIG_FILE
        return json.loads(config_path.read_text())["config"] if config_path.exists() else None

    # ---- episodes ----

    def completed(self) -> set[EpisodeKey]:
        return set(self._records)

    def records(self) -> list[EpisodeRecord]:
        return list(self._records.values())

    def append(self, record: EpisodeRecord) -> None:
        """Record a finished episode durably, then refresh results.json and results.md."""
        if record.key in self._records:
            raise ValueError(f"episode {record.key} is already recorded; a resumed run must skip completed()")
        self._check_task_name(record)
        for text in (record.label, record.suite, record.task, record.error, *record.video_paths):
            if "\n" in text or "\r" in text:
                # One line per episode is what makes a half-written tail detectable.
                raise ValueError(f"record fields must be single-line, got {text!r}")
        line = io.StringIO()
        csv.writer(line, lineterminator="\n").writerow(record.to_row())
        _append_durably(self._episodes_path, line.getvalue())
        self._records[record.key] = record
        self.write_summaries()

    # ---- summaries ----

    def summary(self) -> dict[str, Any]:
        labels: dict[str, Any] = {}
        for label in _ordered({r.label for r in self._records.values()}):
            of_label = [r for r in self._records.values() if r.label == label]
            suites: dict[str, Any] = {}
            for suite in _ordered({r.suite for r in of_label}):
                of_suite = [r for r in of_label if r.suite == suite]
                tasks = {}
                for task_index in sorted({r.task_index for r in of_suite}):
                    of_task = [r for r in of_suite if r.task_index == task_index]
                    tasks[str(task_index)] = {"task": of_task[0].task, **_counts(of_task)}
                suites[suite] = {"tasks": tasks, "overall": _counts(of_suite)}
            labels[label] = {"suites": suites, "overall": _counts(of_label)}
        return {"confidence": "Wilson score interval, 95%", "z": Z_95, "labels": labels}

    def markdown(self) -> str:
        summary = self.summary()["labels"]
        lines = ["# LIBERO results", "", "Success rate with Wilson 95% interval.", ""]
        suites = _ordered({suite for of_label in summary.values() for suite in of_label["suites"]})
        for suite in suites:
            lines += [
                f"## {suite}",
                "",
                "| label | # | task | successes | rate | Wilson 95% |",
                "|---|---|---|---|---|---|",
            ]
            for label, of_label in summary.items():
                of_suite = of_label["suites"].get(suite)
                if of_suite is None:
                    continue
                for task_index, task in of_suite["tasks"].items():
                    lines.append(_markdown_row(label, task_index, _markdown_text(task["task"]), task))
                lines.append(_markdown_row(label, "", "**overall**", of_suite["overall"]))
            lines.append("")
        return "\n".join(lines)

    def write_summaries(self) -> None:
        _write_atomically(self.path / RESULTS_JSON, json.dumps(self.summary(), indent=2) + "\n")
        _write_atomically(self.path / RESULTS_MD, self.markdown())

    # ---- videos ----

    def video_path(
        self,
        label: str,
        suite: str,
        task_index: int,
        task: str,
        episode_index: int,
        success: bool,
        camera: str = "agentview",
        extension: str = "mp4",
    ) -> Path:
        """A path for an episode's video that no earlier file occupies; the directories are created.

        The name carries label, suite, task and episode, so two episodes never share it; a retry of an episode
        whose record was lost in a kill gets a `_retryN` suffix instead of overwriting the earlier video.
        """
        folder = self.path / VIDEOS_DIR / _slug(label) / _slug(suite) / f"task{task_index:02d}_{_slug(task)[:80]}"
        folder.mkdir(parents=True, exist_ok=True)
        stem = f"ep{episode_index:03d}_{'success' if success else 'failure'}_{_slug(camera)}"
        candidate = folder / f"{stem}.{extension}"
        retry = 0
        while candidate.exists():
            retry += 1
            candidate = folder / f"{stem}_retry{retry}.{extension}"
        return candidate

    # ---- internals ----

    @property
    def _episodes_path(self) -> Path:
        return self.path / EPISODES_FILE

    def _load_episodes(self) -> None:
        path = self._episodes_path
        header = ",".join(CSV_COLUMNS) + "\n"
        if not path.exists() or path.stat().st_size == 0:
            _write_atomically(path, header)
            return
        data = path.read_bytes()
        complete_end = data.rfind(b"\n") + 1
        if complete_end < len(data):
            # A run killed mid-write leaves a line without its newline: that episode was never recorded.
            with open(path, "r+b") as f:
                f.truncate(complete_end)
                os.fsync(f.fileno())
            data = data[:complete_end]
        text = data.decode("utf-8")
        if not text.startswith(header):
            raise ValueError(f"{path} does not start with the expected header {header.strip()!r}")
        for line_number, row in enumerate(csv.reader(io.StringIO(text[len(header) :])), start=2):
            try:
                record = EpisodeRecord.from_row(row)
            except ValueError as exc:
                raise ValueError(f"{path}:{line_number}: {exc}") from exc
            if record.key in self._records:
                raise ValueError(f"{path}:{line_number}: episode {record.key} is recorded twice")
            self._check_task_name(record)
            self._records[record.key] = record

    def _check_task_name(self, record: EpisodeRecord) -> None:
        known = self._task_names.setdefault((record.suite, record.task_index), record.task)
        if known != record.task:
            raise ValueError(
                f"task {record.task_index} of {record.suite} was recorded as {known!r}, now {record.task!r}; "
                "the suite's task order changed between runs"
            )


def _counts(records: list[EpisodeRecord]) -> dict[str, Any]:
    successes = sum(r.success for r in records)
    low, high = wilson_interval(successes, len(records))
    return {
        "episodes": len(records),
        "successes": successes,
        "success_rate": successes / len(records),
        "wilson_95": [low, high],
    }


def _markdown_row(label: str, task_index: str, task: str, counts: Mapping[str, Any]) -> str:
    low, high = counts["wilson_95"]
    return (
        f"| {_markdown_text(label)} | {task_index} | {task} | {counts['successes']}/{counts['episodes']} | "
        f"{100 * counts['success_rate']:.1f}% | [{100 * low:.1f}%, {100 * high:.1f}%] |"
    )


def _markdown_text(text: str) -> str:
    return text.replace("|", "\\|")


def _ordered(names: set[str]) -> list[str]:
    return sorted(names)


def _slug(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", text.strip()).strip("._")
    return slug or "_"


def _json_roundtrip(value: Any) -> Any:
    # Tuples become lists and keys strings, so a config compares equal to what was read back from config.json.
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _differing_keys(saved: Any, current: Any, prefix: str = "") -> list[str]:
    if isinstance(saved, dict) and isinstance(current, dict):
        keys: list[str] = []
        for key in sorted(set(saved) | set(current)):
            name = f"{prefix}.{key}" if prefix else key
            if key not in saved or key not in current:
                keys.append(name)
            else:
                keys += _differing_keys(saved[key], current[key], name)
        return keys
    return [] if saved == current else [prefix or "<config>"]


_MISSING = "<missing>"


def _lookup(config: Any, dotted: str) -> Any:
    value = config
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _append_durably(path: Path, text: str) -> None:
    # One write() on an O_APPEND descriptor: the line lands whole or (if killed) as a tail without its newline,
    # which the next open drops. fsync so a finished episode survives a machine crash too.
    data = text.encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, data)
        if written != len(data):
            raise OSError(f"short write to {path}: {written} of {len(data)} bytes")
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with open(temporary, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)
