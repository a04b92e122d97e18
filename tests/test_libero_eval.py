"""`textlatent eval`'s planning, client, servers and runner; the simulator tests run real LIBERO episodes (slow)."""

from __future__ import annotations

import csv
import importlib.util
import json

import numpy as np
import pytest

from textlatent.libero.client import PolicyClient, PolicyConnectionError, PolicyServerError, policy_url
from textlatent.libero.evaluation import (
    Condition,
    EvalSettings,
    EvaluationError,
    _next_job,
    _Worker,
    check_server,
    episode_seed,
    obscure_token_ids,
    plan_jobs,
)
from textlatent.libero.protocol import LIBERO_DUMMY_ACTION
from textlatent.libero.sim import suite_tasks
from textlatent.serving.function_server import FunctionServer

# ---------------------------------------------------------------------------------------------------------------
# Conditions and planning (no simulator)


def test_condition_labels_and_errors():
    assert Condition("libero_goal_ood").label == "pi0"
    assert Condition("libero_goal_ood", "tli").label == "tli"
    assert Condition("libero_goal", "obscure", obscure_layer=2).label == "obscure_layer2"
    with pytest.raises(ValueError, match="unknown suite 'libero_goals'"):
        Condition("libero_goals")
    with pytest.raises(ValueError, match="OOD suites"):
        Condition("libero_goal", "tli")  # TLI's base-task triples exist only for the OOD suites
    with pytest.raises(ValueError, match="--obscure-layer"):
        Condition("libero_goal", "obscure")
    with pytest.raises(ValueError, match="unknown steering 'tlx'"):
        Condition("libero_goal_ood", "tlx")


def test_settings_validate_and_pick_step_budgets():
    assert EvalSettings().steps_for("libero_spatial") == 220  # openpi
    assert EvalSettings(paper_max_steps=True).steps_for("libero_spatial") == 300  # the paper's runner
    assert EvalSettings().steps_for("libero_goal_ood") == 300
    assert EvalSettings(max_steps=12).steps_for("libero_10") == 12
    for bad, match in (
        (dict(trials=0), "trials"),
        (dict(success_check="loose"), "success check"),
        (dict(initial_states="random"), "initial states"),
        (dict(max_steps=0), "max steps"),
    ):
        with pytest.raises(ValueError, match=match):
            EvalSettings(**bad)


def test_plan_covers_tasks_and_trials_with_independent_seeds():
    jobs = plan_jobs([Condition("libero_goal_ood", "tli")], EvalSettings(trials=3, tasks=(6, 7), seed=7))
    assert [(j.task.task_id, j.trial) for j in jobs] == [(6, 0), (6, 1), (6, 2), (7, 0), (7, 1), (7, 2)]
    assert len({j.seed for j in jobs}) == 6
    assert jobs[3].seed == episode_seed(7, 7, 0)
    # TLI steering is the paper's triple for the task (task 6: wine bottle in the bowl, N = 12)
    assert jobs[0].steering == {
        "mode": "tli",
        "latents": ["put_the_wine_bottle_on_top_of_the_cabinet", "put_the_cream_cheese_in_the_bowl"],
        "schedule": {"kind": "linear", "steps": 12},
    }
    assert all(j.initial_states == "seeded" for j in jobs)  # OOD suites have no fixed states
    assert all(j.max_steps == 300 for j in jobs)


def test_plan_errors_name_the_fix():
    with pytest.raises(ValueError, match=r"tasks 0\.\.9; --tasks asked for 10"):
        plan_jobs([Condition("libero_goal_ood")], EvalSettings(tasks=(10,)))
    with pytest.raises(ValueError, match="--initial-states seeded"):
        plan_jobs([Condition("libero_goal_ood")], EvalSettings(initial_states="fixed"))
    with pytest.raises(ValueError, match="--decodings"):
        plan_jobs([Condition("libero_goal_ood", "obscure", obscure_layer=1)], EvalSettings(tasks=(0,)))


def test_reconstruction_and_prompt_baselines_steering():
    settings = EvalSettings(trials=1, tasks=(7,))
    (job,) = plan_jobs([Condition("libero_goal_ood", "reconstruction")], settings)
    assert job.steering == {"mode": "reconstruction", "latents": ["put_the_cream_cheese_on_the_plate"]}
    (job,) = plan_jobs([Condition("libero_goal_ood", "mask")], settings)
    assert job.steering == {"mode": "mask"}
    (job,) = plan_jobs([Condition("libero_goal_ood")], settings)
    assert job.steering is None


def test_obscure_prompts_come_from_decodings_json():
    decodings = {
        "put the cream cheese on the plate": [
            {"layer": 1, "nearest": [5, 6], "token_ids": [2, 9, 108], "text": "x"},
            {"layer": 2, "nearest": [5, 6], "token_ids": [2, 7, 108], "text": "y"},
        ]
    }
    (job,) = plan_jobs(
        [Condition("libero_goal_ood", "obscure", obscure_layer=2)], EvalSettings(trials=1, tasks=(7,)), decodings
    )
    assert job.steering == {"mode": "obscure", "token_ids": [2, 7, 108]}
    with pytest.raises(ValueError, match=r"no decoded prompt of layer 3 .* decoded layers: \[1, 2\]"):
        obscure_token_ids(decodings, "put the cream cheese on the plate", 3)
    with pytest.raises(ValueError, match="no entry for 'put the bowl on the plate'"):
        obscure_token_ids(decodings, "put the bowl on the plate", 1)


def test_workers_keep_their_task_when_they_can():
    jobs = plan_jobs([Condition("libero_goal_ood")], EvalSettings(trials=2, tasks=(1, 2, 3)))
    worker = _Worker(0, None, None, env_key=("libero_goal_ood", 2))
    pending = list(jobs)
    assert _next_job(pending, worker, busy_keys=set()).task.task_id == 2  # no env rebuild
    fresh = _Worker(1, None, None)
    # a worker without an env avoids tasks other workers are on
    assert _next_job(pending, fresh, busy_keys={("libero_goal_ood", 1)}).task.task_id == 2
    assert _next_job(pending, fresh, busy_keys={("libero_goal_ood", 1), ("libero_goal_ood", 2)}).task.task_id == 3


# ---------------------------------------------------------------------------------------------------------------
# Client and servers (no simulator)


def test_policy_url_forms():
    assert policy_url("localhost:8000") == "ws://localhost:8000"
    assert policy_url("wss://host:1") == "wss://host:1"
    with pytest.raises(ValueError, match="ws://HOST:PORT"):
        policy_url("http://host:8000")
    with pytest.raises(ValueError, match="empty"):
        policy_url("  ")


def test_function_server_speaks_openpi_protocol_to_our_client_and_the_stock_one():
    seen = []

    def policy(obs):
        seen.append(obs)
        if obs.get("prompt") == "fail":
            raise ValueError("no such task")
        return {"actions": np.full((50, 7), float(obs["observation/state"][0]), np.float32)}

    with FunctionServer(policy, metadata={"policy": "constant"}) as server:
        with PolicyClient(server.url) as client:
            assert client.metadata == {"policy": "constant"}
            reply = client.infer({"observation/state": np.array([0.5] * 8), "prompt": "go"})
            np.testing.assert_array_equal(reply["actions"], np.full((50, 7), 0.5, np.float32))
            with pytest.raises(PolicyServerError, match="ValueError: no such task"):
                client.infer({"observation/state": np.zeros(8), "prompt": "fail"})
            # the connection survives an error reply
            assert client.infer({"observation/state": np.ones(8), "prompt": "go"})["actions"][0, 0] == 1.0
        openpi_client = pytest.importorskip("openpi_client.websocket_client_policy")
        host, port = server.url.removeprefix("ws://").split(":")
        stock = openpi_client.WebsocketClientPolicy(host=host, port=int(port))
        assert stock.get_server_metadata() == {"policy": "constant"}
        assert stock.infer({"observation/state": np.full(8, 2.0), "prompt": "go"})["actions"].shape == (50, 7)
    assert seen[0]["prompt"] == "go"


def test_client_reports_an_unreachable_server_with_a_hint():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(
        PolicyConnectionError, match=r"no policy server answers at ws://127\.0\.0\.1:\d+.*textlatent serve"
    ):
        PolicyClient(f"127.0.0.1:{port}", connect_timeout=0.5)


def test_check_server_requires_steering_support_and_every_latent():
    jobs = plan_jobs([Condition("libero_goal_ood", "tli")], EvalSettings(trials=1, tasks=(7,)))
    with (
        FunctionServer(lambda obs: {}, metadata={"policy": "openpi"}) as server,
        pytest.raises(EvaluationError, match="does not take steering"),
    ):
        check_server(server.url, None, jobs)
    with (
        FunctionServer(lambda obs: {}, metadata={"latents": ["put_the_bowl_on_the_plate"]}) as server,
        pytest.raises(EvaluationError, match=r"lacks latents \['put_the_cream_cheese_in_the_bowl'\]"),
    ):
        check_server(server.url, None, jobs)
    served = {"latents": ["put_the_bowl_on_the_plate", "put_the_cream_cheese_in_the_bowl"]}
    with FunctionServer(lambda obs: {}, metadata=served) as server:
        assert check_server(server.url, None, jobs) == served


def test_eval_cli_refuses_contradictory_arguments(capsys):
    from textlatent.cli import main

    with pytest.raises(SystemExit, match="exactly one of --policy"):
        main(["eval", "--suite", "libero_goal_ood"])
    with pytest.raises(SystemExit, match="leave out --suite"):
        main(["eval", "--experiment", "extrapolation", "--suite", "libero_goal", "--random"])
    with pytest.raises(SystemExit, match="--decodings FILE"):
        main(["eval", "--experiment", "reconstruction", "--random"])
    with pytest.raises(SystemExit, match="OOD suites"):
        main(["eval", "--suite", "libero_goal", "--steering", "tli", "--random"])
    with pytest.raises(SystemExit, match="give --suite"):
        main(["eval", "--policy", "ws://127.0.0.1:1"])


def test_experiment_grids_are_the_papers():
    from textlatent.cli import experiment_conditions

    grid = experiment_conditions("extrapolation", decodings_given=False)
    assert [(c.suite, c.label) for c in grid] == [
        (suite, label)
        for suite in ("libero_goal_ood", "libero_spatial_ood")
        for label in ("pi0", "tli", "tei", "tei_tli")
    ]
    grid = experiment_conditions("reconstruction", decodings_given=True)
    goal = [c.label for c in grid if c.suite == "libero_goal"]
    assert goal == ["reconstruction", "obscure_layer1", "obscure_layer2", "blank", "mask"]
    spatial = [c.label for c in grid if c.suite == "libero_spatial"]
    assert spatial == ["reconstruction", "obscure_layer1", "obscure_layer2", "obscure_layer3", "blank", "mask"]


# ---------------------------------------------------------------------------------------------------------------
# Real episodes (LIBERO on CPU, a few env steps each)

needs_libero = pytest.mark.skipif(
    importlib.util.find_spec("libero") is None, reason="the LIBERO simulator group is not installed"
)


def _run(tmp_path, policy, *, name="run", resume=False, trials=1, max_steps=8, **kwargs):
    from textlatent.libero.evaluation import Output, evaluate

    with FunctionServer(policy, metadata={"policy": "test"}) as server:
        return evaluate(
            kwargs.pop("conditions", [Condition("libero_goal_ood")]),
            EvalSettings(trials=trials, tasks=(7,), max_steps=max_steps),
            address=server.url,
            run_dir=tmp_path / name,
            workers=kwargs.pop("workers", 1),
            output=kwargs.pop("output", Output(video="all")),
            resume=resume,
            progress=False,
            **kwargs,
        )


def _dummy_chunk(obs):
    return {"actions": np.tile(np.asarray(LIBERO_DUMMY_ACTION, np.float32), (50, 1))}


@pytest.mark.slow
@needs_libero
def test_do_nothing_policy_fails_and_the_run_directory_is_complete(tmp_path):
    calls = []

    def policy(obs):
        calls.append(obs)
        assert obs["observation/image"].shape == (224, 224, 3) and obs["observation/image"].dtype == np.uint8
        assert obs["observation/state"].shape == (8,)
        assert obs["prompt"] == "put the cream cheese on the plate"
        return _dummy_chunk(obs)

    report = _run(tmp_path, policy, max_steps=8)
    assert (report.finished, report.successes) == (1, 0)
    assert len(calls) == 2  # 8 steps, replanning every 5
    run = tmp_path / "run"
    (row,) = list(csv.DictReader((run / "episodes.csv").open()))
    assert row["success"] == "0" and row["steps"] == "18"  # 10 settle steps + the budget
    video = run / json.loads(row["video_paths"])[0]
    assert video.name == "ep000_failure_agentview_wrist.mp4"
    import imageio.v2 as imageio

    reader = imageio.get_reader(video)
    assert reader.count_frames() == 18
    assert reader.get_data(0).shape == (256, 512, 3)  # agent view | wrist
    results = json.loads((run / "results.json").read_text())
    assert results["labels"]["pi0"]["overall"]["episodes"] == 1
    assert "| pi0 | 7 | put the cream cheese on the plate | 0/1 | 0.0% |" in (run / "results.md").read_text()
    config = json.loads((run / "config.json").read_text())
    assert config["config"]["settings"]["success_check"] == "paper"
    assert config["versions"]["hf-libero"] == "0.1.4"
    assert not list((run / "videos" / ".partial").iterdir())


@pytest.mark.slow
@needs_libero
def test_a_killed_run_resumes_without_losing_or_repeating_episodes(tmp_path):
    served = []

    def breaks_on_the_second_episode(obs):
        served.append(obs)
        if len(served) > 2:  # the first episode takes two calls
            raise RuntimeError("server went away")
        return _dummy_chunk(obs)

    with pytest.raises(EvaluationError, match="server went away"):
        _run(tmp_path, breaks_on_the_second_episode, trials=2, max_steps=6)
    run = tmp_path / "run"
    assert [r["episode_index"] for r in csv.DictReader((run / "episodes.csv").open())] == ["0"]

    with pytest.raises(EvaluationError, match="--resume"):
        _run(tmp_path, _dummy_chunk, trials=2, max_steps=6)  # not without --resume
    from textlatent.libero.results import ConfigMismatchError

    with pytest.raises(ConfigMismatchError, match="max_steps"):
        _run(tmp_path, _dummy_chunk, trials=2, max_steps=7, resume=True)

    second = []
    report = _run(tmp_path, lambda obs: second.append(obs) or _dummy_chunk(obs), trials=2, max_steps=6, resume=True)
    assert (report.finished, report.skipped) == (1, 1)
    assert len(second) == 2  # only episode 1 ran
    rows = list(csv.DictReader((run / "episodes.csv").open()))
    assert sorted(r["episode_index"] for r in rows) == ["0", "1"]
    assert len({r["video_paths"] for r in rows}) == 2


@pytest.mark.slow
@needs_libero
def test_a_scripted_policy_that_solves_the_task_is_scored_success(tmp_path):
    """Through the server and an env worker, as any policy: the scripted controller only sees the request's state."""
    from textlatent.libero.evaluation import Output
    from textlatent.libero.scripted import ScriptedPickPlace, pick_place_targets
    from textlatent.libero.sim import LiberoEnv, prepare

    # The scene the worker will see: the same task, the same episode seed, after the same settle steps.
    prepare()
    task = suite_tasks("libero_goal_ood")[7]
    env = LiberoEnv(task, workdir=tmp_path / "probe", resolution=64)
    try:
        obs = env.reset(0, episode_seed(7, 7, 0))
        for _ in range(10):
            obs, *_ = env.step(list(LIBERO_DUMMY_ACTION))
    finally:
        env.close()
    controller = ScriptedPickPlace(*pick_place_targets(obs, "cream_cheese_1", "plate_1"))
    report = _run(
        tmp_path,
        lambda request: {"actions": controller(request["observation/state"])},
        max_steps=200,
        output=Output(video="failures"),
    )
    assert (report.finished, report.successes) == (1, 1)
    (row,) = list(csv.DictReader((tmp_path / "run" / "episodes.csv").open()))
    assert row["success"] == "1" and int(row["steps"]) < 210  # ended on success, before the budget
    assert row["video_paths"] == "[]"  # --video failures keeps none for a success


def test_switch_baseline_sends_a_then_b_from_halfway_through_tlis_schedule():
    from textlatent.latents.registry import lookup

    settings = EvalSettings(trials=1, tasks=(7,))
    (job,) = plan_jobs([Condition("libero_goal_ood", "switch")], settings)
    base = lookup(job.task.prompt)
    assert job.steering is None and job.condition.label == "switch"
    assert job.prompt_switch == (base.a, base.b, base.steps / 2 * 5)
    switch_at = base.steps / 2 * 5  # the paper runner's t < N/2·5, settle steps counted in t
    # openpi's schedule: policy calls at t = 10, 15, 20, ...; the prompt in each is A's until t reaches the switch.
    calls = range(10, 200, 5)
    prompts = [job.prompt_at(t) for t in calls]
    assert prompts == [base.a if t < switch_at else base.b for t in calls] and base.a != base.b
    assert prompts.count(base.a) == sum(t < switch_at for t in calls) > 0
    (plain,) = plan_jobs([Condition("libero_goal_ood")], settings)
    assert plain.prompt_switch is None and {plain.prompt_at(t) for t in calls} == {plain.task.prompt}
    with pytest.raises(ValueError, match="OOD suites"):
        Condition("libero_goal", "switch")


@pytest.mark.slow
@needs_libero
def test_switch_baseline_requests_change_prompt_at_the_switch(tmp_path):
    from textlatent.latents.registry import lookup
    from textlatent.libero.evaluation import Output

    prompts = []

    def policy(obs):
        prompts.append(obs["prompt"])
        return _dummy_chunk(obs)

    base = lookup(suite_tasks("libero_goal_ood")[7].prompt)
    switch_at = base.steps / 2 * 5
    steps = int(switch_at) + 10  # a few calls past the switch
    report = _run(
        tmp_path,
        policy,
        max_steps=steps,
        conditions=[Condition("libero_goal_ood", "switch")],
        output=Output(video="none"),
    )
    assert report.finished == 1
    calls = [10 + 5 * i for i in range(len(prompts))]  # openpi's schedule: settle 10 steps, then every 5
    assert prompts == [base.a if t < switch_at else base.b for t in calls]
    assert base.a in prompts and base.b in prompts


def test_two_prompt_probe_sends_libero_objects_two_prompts_by_task():
    jobs = plan_jobs([Condition("libero_object", "two_prompt")], EvalSettings(trials=1))
    assert len(jobs) == 10 and all(job.steering is None for job in jobs)
    sent = {job.task.task_id: job.prompt_at(10) for job in jobs}
    cheese, soup = (
        "pick up the cream cheese and place it in the basket",
        "pick up the alphabet soup and place it in the basket",
    )
    # The paper runner's split: cream cheese, bbq sauce, orange juice, salad dressing, tomato sauce get the cream
    # cheese's prompt; alphabet soup, ketchup, butter, milk, chocolate pudding the alphabet soup's.
    for job in jobs:
        named = ("cream cheese", "bbq sauce", "orange juice", "salad dressing", "tomato sauce")
        expected = cheese if any(name in job.task.prompt for name in named) else soup
        assert sent[job.task.task_id] == expected, job.task.prompt
    assert sent[1] == jobs[1].task.prompt == cheese and sent[0] == jobs[0].task.prompt == soup
    with pytest.raises(ValueError, match="libero_object"):
        Condition("libero_goal", "two_prompt")
