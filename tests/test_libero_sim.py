"""The LIBERO simulator set-up (textlatent.libero.sim) and the scripted pick-and-place policy, on the real simulator.

Tests marked slow build envs (about 10 s each, then 0.2–0.5 s per step on CPU); one env per task is shared.
"""

from __future__ import annotations

import os
import pickle
import re
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("libero")

from textlatent.libero import sim
from textlatent.libero.bddl import parse_bddl
from textlatent.libero.protocol import LIBERO_DUMMY_ACTION, NUM_STEPS_WAIT, run_episode
from textlatent.libero.scripted import Phase, ScriptedPickPlace, pick_place_targets
from textlatent.libero.suites import get_suite

GOAL_OOD = "libero_goal_ood"
PLATE_TASK = 7  # put the cream cheese on the plate
STOVE_TASK = 8  # put the cream cheese on the stove
CHEESE, PLATE = "cream_cheese_1", "plate_1"
TEST_RESOLUTION = 64  # small cameras: rendering is most of a step's cost, and nothing here looks at the images


# ---------------------------------------------------------------------------------------------------------------
# Tasks of every suite


@pytest.mark.parametrize(
    "suite, count",
    [("libero_spatial", 10), ("libero_object", 10), ("libero_goal", 10), ("libero_10", 10), ("libero_90", 90)],
)
def test_standard_suite_tasks_take_prompts_from_file_names(suite, count):
    tasks = sim.suite_tasks(suite)
    assert len(tasks) == count
    assert [t.task_id for t in tasks] == list(range(count))
    for task in tasks:
        assert task.suite == suite and task.bddl_text is None
        assert Path(task.bddl_path).name == f"{task.name}.bddl" and Path(task.bddl_path).is_file()
        # LIBERO-10/90 file names start with the scene ("KITCHEN_SCENE3_..."), which is not part of the prompt.
        assert task.prompt == re.sub(r"^[A-Z_]+SCENE\d+_", "", task.name).replace("_", " ")
        assert task.prompt and task.prompt == task.prompt.lower()
    if suite == "libero_goal":
        assert "open the middle drawer of the cabinet" in [t.prompt for t in tasks]


@pytest.mark.parametrize("suite", sim.OOD_SUITES)
def test_ood_suite_tasks_carry_generated_bddl(suite):
    for success_check in sim.SUCCESS_CHECKS:
        tasks = sim.suite_tasks(suite, success_check)
        assert len(tasks) == 10
        for task, spec in zip(tasks, get_suite(suite), strict=True):
            assert task.bddl_path is None and not task.has_fixed_initial_states
            assert (task.name, task.prompt) == (spec.name, spec.language)
            assert parse_bddl(task.bddl_text).goal  # well-formed BDDL with a goal


def test_goal_suite_fixed_initial_states_load_as_float64():
    tasks = sim.suite_tasks("libero_goal")
    assert all(t.has_fixed_initial_states for t in tasks)
    for task in tasks:
        states = sim.load_initial_states(task.init_states_path)
        assert states.dtype == np.float64 and states.ndim == 2 and states.shape[0] == 50
        assert np.all(np.isfinite(states))


def test_unknown_suite_and_success_check_are_refused():
    with pytest.raises(KeyError, match=r"libero_nope.*known:.*libero_spatial.*libero_goal_ood"):
        sim.suite_tasks("libero_nope")
    with pytest.raises(ValueError, match="paper, upstream"):
        sim.suite_tasks("libero_goal", "strict")


# ---------------------------------------------------------------------------------------------------------------
# Initial-state archives


def _torch_like_archive(path: Path, payload: bytes) -> Path:
    # torch.save's layout: a zip whose archive/data.pkl is a protocol-2 pickle (numpy arrays pickle the same way).
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
        archive.writestr("archive/version", "3\n")
    return path


class _RunsShellCommand:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_initial_states_archive_round_trip(tmp_path):
    states = np.arange(12, dtype=np.float32).reshape(3, 4) / 8
    path = _torch_like_archive(tmp_path / "a.pruned_init", pickle.dumps(states, protocol=2))
    loaded = sim.load_initial_states(path)
    assert loaded.dtype == np.float64
    np.testing.assert_array_equal(loaded, states)


def test_initial_states_archive_never_runs_pickled_code(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_RunsShellCommand(f"touch {marker}"), protocol=2)
    assert b"system" in payload
    path = _torch_like_archive(tmp_path / "evil.pruned_init", payload)
    with pytest.raises(pickle.UnpicklingError, match=r"may not reference .*system"):
        sim.load_initial_states(path)
    assert not marker.exists()


def test_initial_states_archive_refuses_object_arrays(tmp_path):
    payload = pickle.dumps(np.array([[1.0, "x"]], dtype=object), protocol=2)
    path = _torch_like_archive(tmp_path / "objects.pruned_init", payload)
    with pytest.raises(pickle.UnpicklingError, match="only hold numbers"):
        sim.load_initial_states(path)


def test_initial_states_archive_refuses_other_files_and_shapes(tmp_path):
    not_zip = tmp_path / "plain.pruned_init"
    not_zip.write_bytes(b"\x80\x02 definitely not a zip archive")
    with pytest.raises(ValueError, match="not a zip file"):
        sim.load_initial_states(not_zip)
    flat = _torch_like_archive(tmp_path / "flat.pruned_init", pickle.dumps(np.zeros(5), protocol=2))
    with pytest.raises(ValueError, match="2-D float array"):
        sim.load_initial_states(flat)


# ---------------------------------------------------------------------------------------------------------------
# The paper's stove site and the upstream stove goals


def _sites_with_parents(xml_text: str) -> list[tuple[ET.Element, int, ET.Element]]:
    root = ET.fromstring(xml_text)
    return [
        (parent, index, child) for parent in root.iter() for index, child in enumerate(parent) if child.tag == "site"
    ]


def test_paper_stove_xml_adds_the_whole_top_site_after_cook_region():
    upstream = (sim.upstream_assets_dir() / "articulated_objects" / "flat_stove.xml").read_text()
    paper = sim.paper_stove_xml(upstream)
    upstream_sites = _sites_with_parents(upstream)
    sites = _sites_with_parents(paper)
    assert [s.get("name") for _, _, s in upstream_sites if s.get("name") == "base_region"] == []
    assert len(sites) == len(upstream_sites) + 1
    (base,) = [(p, i, s) for p, i, s in sites if s.get("name") == "base_region"]
    (cook,) = [(p, i, s) for p, i, s in sites if s.get("name") == "cook_region"]
    assert base[0] is cook[0] and base[1] == cook[1] + 1  # the next element of the same body
    assert [float(v) for v in base[2].get("size").split()] == [0.095, 0.095, 0.0025]
    assert [float(v) for v in cook[2].get("size").split()[:2]] == [0.075, 0.075]
    assert base[2].get("pos") == cook[2].get("pos") and base[2].get("type") == "box"
    assert sim.paper_stove_xml(paper) == paper
    assert (sim.paper_assets_dir() / "articulated_objects" / "flat_stove.xml").read_text() == paper
    with pytest.raises(sim.SimulatorUnavailable, match="cook_region"):
        sim.paper_stove_xml("<mujoco><worldbody/></mujoco>")


def test_upstream_stove_goals_use_cook_region():
    stove_goals = 0
    for paper_task, upstream_task in zip(
        sim.suite_tasks(GOAL_OOD, "paper"), sim.suite_tasks(GOAL_OOD, "upstream"), strict=True
    ):
        converted = sim.upstream_stove_goals(paper_task.bddl_text)
        assert converted == upstream_task.bddl_text
        paper, upstream = parse_bddl(paper_task.bddl_text), parse_bddl(converted)
        assert "base_region" not in converted
        for before, after in zip(paper.goal, upstream.goal, strict=True):
            if "flat_stove_1_base_region" in before:
                stove_goals += 1
                expected = tuple("flat_stove_1_cook_region" if a == "flat_stove_1_base_region" else a for a in before)
                assert after == expected
                assert upstream.regions["flat_stove_1_cook_region"].target == "flat_stove_1"
            else:
                assert after == before
    assert stove_goals == 3  # orange juice, wine bottle and cream cheese on the stove


# ---------------------------------------------------------------------------------------------------------------
# The success checks on the simulator


@pytest.fixture(scope="module")
def paper_setup():
    setup = sim.prepare(success_check="paper")
    yield setup
    sim.apply_success_check("paper")


@pytest.fixture(scope="module")
def plate_env(paper_setup, tmp_path_factory):
    task = sim.suite_tasks(GOAL_OOD)[PLATE_TASK]
    env = sim.LiberoEnv(task, workdir=tmp_path_factory.mktemp("bddl"), resolution=TEST_RESOLUTION)
    yield env
    env.close()


def _body_pos(env: sim.LiberoEnv, name: str) -> np.ndarray:
    inner = env.env.env
    return np.array(inner.sim.data.body_xpos[inner.obj_body_id[name]])


def _drop_object_at(env: sim.LiberoEnv, name: str, position: np.ndarray, settle_steps: int = 6) -> np.ndarray:
    """Move an object (keeping its orientation) to `position`, at rest, then step until it has settled."""
    inner = env.env.env
    joint = inner.get_object(name).joints[-1]  # the object's free joint
    qpos = np.array(inner.sim.data.get_joint_qpos(joint))
    qpos[:3] = position
    inner.sim.data.set_joint_qpos(joint, qpos)
    inner.sim.data.set_joint_qvel(joint, np.zeros(6))
    inner.sim.forward()
    _settle(env, settle_steps)
    return _body_pos(env, name)


def _settle(env: sim.LiberoEnv, steps: int = NUM_STEPS_WAIT) -> None:
    # Objects are spawned above their regions and drop for the first steps after a reset.
    for _ in range(steps):
        env.step(LIBERO_DUMMY_ACTION)


def _success_under(env: sim.LiberoEnv, success_check: str) -> bool:
    sim.apply_success_check(success_check)
    try:
        return env.check_success()
    finally:
        sim.apply_success_check("paper")


@pytest.mark.slow
def test_on_plate_threshold(plate_env):
    plate_env.reset(trial=0, seed=7)
    _settle(plate_env)
    assert not _success_under(plate_env, "paper")  # the cheese starts on the table
    plate = _body_pos(plate_env, PLATE)
    cheese = _drop_object_at(plate_env, CHEESE, plate + np.array([0.05, 0.0, 0.03]))
    offset = np.linalg.norm(cheese[:2] - plate[:2])
    assert 0.035 < offset < 0.09 and cheese[2] > plate[2]
    assert _success_under(plate_env, "paper")  # 0.1
    assert not _success_under(plate_env, "upstream")  # 0.03
    cheese = _drop_object_at(plate_env, CHEESE, plate + np.array([0.0, 0.0, 0.03]))
    assert np.linalg.norm(cheese[:2] - plate[:2]) < 0.02
    assert _success_under(plate_env, "paper") and _success_under(plate_env, "upstream")


def _drop_on_site(env: sim.LiberoEnv, site: str, local_offset: float) -> np.ndarray:
    """Drop the cheese `local_offset` from a stove site's centre along the site's x axis; its settled offset."""
    data = env.env.env.sim.data
    centre, mat = np.array(data.get_site_xpos(site)), np.array(data.get_site_xmat(site))
    # LIBERO's SiteObject.under measures offsets as mat @ (object - site); invert that for the drop point.
    target = centre + mat.T @ np.array([local_offset, 0.0, 0.0]) + np.array([0.0, 0.0, 0.04])
    cheese = _drop_object_at(env, CHEESE, target)
    return mat @ (cheese - centre)


@pytest.mark.slow
@pytest.mark.parametrize("success_check", sim.SUCCESS_CHECKS)
def test_on_stove_region(paper_setup, tmp_path, success_check):
    # The check stays selected while the env exists: LIBERO reloads the assets from the selected folder on every
    # reset, and the upstream folder has no base_region site.
    sim.apply_success_check(success_check)
    env = sim.LiberoEnv(
        sim.suite_tasks(GOAL_OOD, success_check)[STOVE_TASK], workdir=tmp_path, resolution=TEST_RESOLUTION
    )
    try:
        env.reset(trial=0, seed=7)
        _settle(env)
        sites = env.env.env.sim.model.site_names
        assert ("flat_stove_1_base_region" in sites) == (success_check == "paper")
        assert not env.check_success()
        # Outside the 0.075 cook region, inside the 0.095 stove top.
        local = _drop_on_site(env, "flat_stove_1_cook_region", 0.085)
        assert 0.077 < abs(local[0]) < 0.093 and abs(local[1]) < 0.01
        assert env.check_success() == (success_check == "paper")
        local = _drop_on_site(env, "flat_stove_1_cook_region", 0.0)
        assert np.all(np.abs(local[:2]) < 0.03)
        assert env.check_success()
    finally:
        env.close()
        sim.apply_success_check("paper")


# ---------------------------------------------------------------------------------------------------------------
# Episodes through openpi's client protocol


class _KeepsLastObservation:
    """An env that remembers its latest observation: the scripted policy reads object positions from the one
    before its first query, after the objects have settled (they are still falling at reset)."""

    def __init__(self, env: sim.LiberoEnv) -> None:
        self.env = env
        self.obs = None

    def step(self, action):
        result = self.env.step(action)
        self.obs = result[0]
        return result


@pytest.mark.slow
def test_scripted_policy_puts_the_cream_cheese_on_the_plate(plate_env):
    obs = plate_env.reset(trial=0, seed=7)
    env = _KeepsLastObservation(plate_env)
    policies: list[ScriptedPickPlace] = []
    chunks: list[np.ndarray] = []

    def query_policy(request, index):
        if index == 0:
            policies.append(ScriptedPickPlace(*pick_place_targets(env.obs, CHEESE, PLATE)))
        chunks.append(policies[0](request["observation/state"]))
        return chunks[-1]

    task = plate_env.task
    outcome = run_episode(env, obs, task.prompt, query_policy, max_steps=200)
    assert outcome.success and outcome.error is None, outcome
    assert NUM_STEPS_WAIT + 60 < outcome.env_steps <= NUM_STEPS_WAIT + 160
    assert outcome.policy_queries == len(chunks) == -(-(outcome.env_steps - NUM_STEPS_WAIT) // 5)
    assert policies[0].phase >= Phase.LOWER
    assert all(c.shape == (50, 7) and c.dtype == np.float32 and np.all(np.abs(c) <= 1) for c in chunks)
    cheese, plate = _body_pos(plate_env, CHEESE), _body_pos(plate_env, PLATE)
    assert np.linalg.norm(cheese[:2] - plate[:2]) < 0.03  # well inside LIBERO's own threshold too


@pytest.mark.slow
def test_do_nothing_policy_fails(plate_env):
    obs = plate_env.reset(trial=0, seed=7)
    dummy = np.tile(np.asarray(LIBERO_DUMMY_ACTION, dtype=np.float32), (50, 1))
    outcome = run_episode(plate_env, obs, plate_env.task.prompt, lambda request, index: dummy, max_steps=15)
    assert not outcome.success and outcome.error is None
    assert outcome.env_steps == NUM_STEPS_WAIT + 15 and outcome.policy_queries == 3
    assert not plate_env.check_success()


# ---------------------------------------------------------------------------------------------------------------
# The scripted policy without the simulator


def test_pick_place_targets_read_object_positions():
    obs = {
        "cream_cheese_1_pos": np.array([0.1, 0.2, 0.9]),
        "plate_1_pos": np.array([-0.1, 0.0, 0.9]),
        "cream_cheese_1_to_robot0_eef_pos": np.zeros(3),
        "robot0_eef_pos": np.zeros(3),
    }
    pick, place = pick_place_targets(obs, "cream_cheese_1", "plate_1", pick_height=0.01, place_height=0.05)
    np.testing.assert_allclose(pick, [0.1, 0.2, 0.91])
    np.testing.assert_allclose(place, [-0.1, 0.0, 0.95])
    with pytest.raises(KeyError, match=r"'flat_stove_1_pos'.*cream_cheese_1, plate_1\b"):
        pick_place_targets(obs, "cream_cheese_1", "flat_stove_1")


def test_scripted_policy_phases_follow_the_state():
    policy = ScriptedPickPlace([0.0, 0.0, 0.9], [0.2, 0.0, 0.95], clearance=0.1)
    open_fingers, closed_on_object = [0.039, -0.039], [0.021, -0.021]

    def state(pos, fingers):
        return np.array([*pos, np.pi, 0.0, 0.0, *fingers])

    chunk = policy(state([-0.2, 0.0, 1.1], open_fingers))
    assert policy.phase == Phase.ABOVE_PICK and chunk.shape == (50, 7) and chunk.dtype == np.float32
    assert chunk[0, 0] == 1.0 and np.all(chunk[:, 3:6] == 0) and np.all(chunk[:, 6] == -1)
    assert np.all(np.diff(chunk[:, 0]) <= 0)  # decelerates towards the waypoint
    policy(state([0.0, 0.0, 1.0], open_fingers))
    assert policy.phase == Phase.DESCEND
    chunk = policy(state([0.0, 0.0, 0.9], open_fingers))
    assert policy.phase == Phase.GRASP and np.all(chunk[:, 6] == 1)
    policy(state([0.0, 0.0, 0.9], closed_on_object))
    assert policy.phase == Phase.GRASP  # the fingers are still moving
    chunk = policy(state([0.0, 0.0, 0.9], closed_on_object))
    assert policy.phase == Phase.LIFT and chunk[0, 2] > 0 and np.all(chunk[:, 6] == 1)
    policy.reset()
    assert policy.phase == Phase.ABOVE_PICK
    with pytest.raises(ValueError, match="8-D"):
        policy(np.zeros(7))


@pytest.mark.slow
def test_camera_gating_renders_the_same_images_at_the_steps_that_render(paper_setup, plate_env, tmp_path):
    """The runner draws the cameras only for the observations the policy sees: those must be exactly what an env
    that renders every step gives, at the same sampling moments, after any number of skipped renders."""
    other = sim.LiberoEnv(plate_env.task, workdir=tmp_path, resolution=TEST_RESOLUTION)
    try:
        a, b = plate_env.reset(trial=0, seed=11), other.reset(trial=0, seed=11)
        np.testing.assert_array_equal(a["agentview_image"], b["agentview_image"])
        rng = np.random.default_rng(0)
        rendered = 0
        for step in range(16):
            action = list(rng.uniform(-1, 1, 7))
            other.rendering = step % 5 == 4 or step == 7
            a, *_ = plate_env.step(action)
            b, *_ = other.step(action)
            np.testing.assert_array_equal(a["robot0_eef_pos"], b["robot0_eef_pos"])  # physics untouched
            for camera in sim.CAMERA_OBSERVABLES:
                if other.rendering:
                    np.testing.assert_array_equal(a[camera], b[camera])
                else:
                    assert not b[camera].any()
            rendered += other.rendering
        assert rendered == 4
        # a reset rebuilds robosuite's sensors: the gate must still hold afterwards
        other.rendering = False
        other.reset(trial=0, seed=12)
        b, *_ = other.step(list(LIBERO_DUMMY_ACTION))
        assert not b["agentview_image"].any()
    finally:
        other.rendering = True
        other.close()
