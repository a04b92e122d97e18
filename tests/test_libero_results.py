"""Run directory: durable append, resume after a kill, config guard, summaries, Wilson intervals, video names."""

import csv
import json
import math

import pytest
from scipy.stats import binomtest

from textlatent.libero.results import (
    CSV_COLUMNS,
    ConfigMismatchError,
    EpisodeKey,
    EpisodeRecord,
    RunDirectory,
    wilson_interval,
)


def closed_form_wilson(k, n, z=1.959964):
    p = k / n
    centre = (2 * k + z**2) / (2 * (n + z**2))
    half = z * math.sqrt(n * p * (1 - p) + z**2 / 4) / (n + z**2)
    return centre - half, centre + half


@pytest.mark.parametrize(
    ("k", "n", "low", "high"),
    [
        # Reference values rounded to 4 decimals; 0/10, 5/10, 10/10 are the commonly quoted ones, 83/100 was
        # worked by hand (centre 0.81779, half-width 0.07327). scipy's implementation is checked below.
        (0, 10, 0.0, 0.2775),
        (5, 10, 0.2366, 0.7634),
        (10, 10, 0.7225, 1.0),
        (83, 100, 0.7445, 0.8911),
    ],
)
def test_wilson_known_values(k, n, low, high):
    got = wilson_interval(k, n)
    assert got == pytest.approx((low, high), abs=6e-5)


@pytest.mark.parametrize(("k", "n"), [(0, 1), (1, 1), (3, 7), (0, 10), (5, 10), (10, 10), (83, 100), (499, 500)])
def test_wilson_matches_closed_form_and_scipy(k, n):
    got = wilson_interval(k, n)
    assert got == pytest.approx(closed_form_wilson(k, n), abs=1e-12)
    scipy_ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert got == pytest.approx((scipy_ci.low, scipy_ci.high), abs=1e-6)


def test_wilson_rejects_bad_counts():
    with pytest.raises(ValueError, match="at least one trial"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match="in \\[0, n\\]"):
        wilson_interval(11, 10)


def record(episode, success=True, task_index=0, label="baseline", suite="libero_goal_ood", task=None):
    return EpisodeRecord(
        label=label,
        suite=suite,
        task=task if task is not None else f"put the bowl, number {task_index}, on the plate",
        task_index=task_index,
        episode_index=episode,
        seed=7,
        success=success,
        steps=123,
        wall_seconds=4.5,
        video_paths=(f"videos/ep{episode}.mp4",),
        error="" if success else "RuntimeError: boom",
    )


def test_append_and_reload_round_trips(tmp_path):
    run = RunDirectory(tmp_path)
    records = [record(0), record(1, success=False), record(0, task_index=1)]
    for r in records:
        run.append(r)
    reopened = RunDirectory(tmp_path)
    assert reopened.records() == records
    assert reopened.completed() == {
        EpisodeKey("baseline", "libero_goal_ood", 0, 0),
        EpisodeKey("baseline", "libero_goal_ood", 0, 1),
        EpisodeKey("baseline", "libero_goal_ood", 1, 0),
    }
    with open(tmp_path / "episodes.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == 4


def test_resume_after_kill_mid_line_loses_nothing_and_duplicates_nothing(tmp_path):
    run = RunDirectory(tmp_path)
    run.append(record(0))
    run.append(record(1))
    episodes = tmp_path / "episodes.csv"
    # Simulate a kill during the third episode's write: half a line, no newline.
    with open(episodes, "a") as f:
        f.write("baseline,libero_goal_ood,put the bo")
    resumed = RunDirectory(tmp_path)
    assert resumed.completed() == {record(0).key, record(1).key}
    resumed.append(record(2))
    lines = episodes.read_text().splitlines()
    assert len(lines) == 4 and not any(line.endswith("put the bo") for line in lines)
    assert [r.episode_index for r in RunDirectory(tmp_path).records()] == [0, 1, 2]
    with pytest.raises(ValueError, match="already recorded"):
        resumed.append(record(2))


def test_task_order_change_is_refused(tmp_path):
    run = RunDirectory(tmp_path)
    run.append(record(0, task="open the drawer"))
    with pytest.raises(ValueError, match="task order changed"):
        run.append(record(1, task="close the drawer"))


def test_multiline_fields_are_refused(tmp_path):
    with pytest.raises(ValueError, match="single-line"):
        RunDirectory(tmp_path).append(record(0, task="two\nlines"))


def test_config_written_once_and_mismatch_names_keys(tmp_path):
    config = {
        "suite": "libero_goal_ood",
        "replan_steps": 5,
        "cameras": ("agentview", "wrist"),
        "steering": {"layers": "all", "alpha": 0.5},
    }
    versions = {"python": "3.11.0", "jax": "0.5.3"}
    assert RunDirectory(tmp_path).start(config, versions) == {}
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved == {"config": {**config, "cameras": ["agentview", "wrist"]}, "versions": versions}
    # Same settings resume fine (tuples vs lists do not count as different); changed versions are reported.
    assert RunDirectory(tmp_path).start(
        {**config, "cameras": ["agentview", "wrist"], "steering": {"alpha": 0.5, "layers": "all"}},
        {**versions, "jax": "0.6"},
    ) == {"jax": ("0.5.3", "0.6")}
    changed = {**config, "replan_steps": 10, "steering": {"layers": "all", "alpha": 0.7}, "extra": 1}
    with pytest.raises(ConfigMismatchError) as excinfo:
        RunDirectory(tmp_path).start(changed, versions)
    message = str(excinfo.value)
    for key in ("replan_steps", "steering.alpha", "extra"):
        assert key in message
    assert "suite" not in message.split("(")[1]
    assert json.loads((tmp_path / "config.json").read_text()) == saved  # not overwritten


def test_results_json_counts_and_intervals(tmp_path):
    run = RunDirectory(tmp_path)
    for episode, success in enumerate([True, True, False, True]):
        run.append(record(episode, success=success))
    for episode in range(3):
        run.append(record(episode, success=False, task_index=1))
    run.append(record(0, success=True, label="tli"))
    summary = json.loads((tmp_path / "results.json").read_text())
    suite = summary["labels"]["baseline"]["suites"]["libero_goal_ood"]
    assert suite["tasks"]["0"]["successes"] == 3 and suite["tasks"]["0"]["episodes"] == 4
    assert suite["tasks"]["0"]["success_rate"] == 0.75
    assert suite["tasks"]["0"]["wilson_95"] == pytest.approx(list(closed_form_wilson(3, 4)))
    assert suite["tasks"]["1"]["successes"] == 0
    assert suite["overall"]["episodes"] == 7 and suite["overall"]["successes"] == 3
    assert suite["overall"]["wilson_95"] == pytest.approx(list(closed_form_wilson(3, 7)))
    assert summary["labels"]["tli"]["overall"]["successes"] == 1


def test_results_markdown_table(tmp_path):
    run = RunDirectory(tmp_path)
    for episode, success in enumerate([True, False]):
        run.append(record(episode, success=success))
    run.append(record(0, success=True, suite="libero_spatial_ood", task="pick | place"))
    markdown = (tmp_path / "results.md").read_text()
    assert "## libero_goal_ood" in markdown and "## libero_spatial_ood" in markdown
    low, high = closed_form_wilson(1, 2)
    task_row = (
        f"| baseline | 0 | put the bowl, number 0, on the plate | 1/2 | 50.0% | [{100 * low:.1f}%, {100 * high:.1f}%] |"
    )
    assert task_row in markdown
    assert f"| baseline |  | **overall** | 1/2 | 50.0% | [{100 * low:.1f}%, {100 * high:.1f}%] |" in markdown
    assert "pick \\| place" in markdown  # a pipe in a task must not split the table


def test_video_paths_are_episode_unique_and_never_overwrite(tmp_path):
    run = RunDirectory(tmp_path)
    task = "put the bowl on the plate"
    first = run.video_path("baseline", "libero_goal_ood", 3, task, 0, success=True)
    second = run.video_path("baseline", "libero_goal_ood", 3, task, 1, success=True)
    wrist = run.video_path("baseline", "libero_goal_ood", 3, task, 0, success=True, camera="wrist")
    other_label = run.video_path("tli", "libero_goal_ood", 3, task, 0, success=True)
    assert len({first, second, wrist, other_label}) == 4
    assert first.parent.is_dir() and "put_the_bowl_on_the_plate" in str(first)
    first.write_bytes(b"video")
    retry = run.video_path("baseline", "libero_goal_ood", 3, task, 0, success=True)
    assert retry != first and not retry.exists() and retry.name.endswith("_retry1.mp4")
    assert first.read_bytes() == b"video"
