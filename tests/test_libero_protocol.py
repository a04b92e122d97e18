"""openpi's LIBERO client protocol: formulas against independent references, replanning and the step loop."""

import numpy as np
import pytest
from PIL import Image
from scipy.spatial.transform import Rotation

from textlatent.libero.protocol import (
    LIBERO_DUMMY_ACTION,
    MAX_STEPS,
    PAPER_RUNNER_MAX_STEPS,
    ActionPlan,
    EpisodeLoop,
    max_steps_for,
    policy_request,
    quat2axisangle,
    robot_state,
    run_episode,
)
from textlatent.policy.transforms import IMAGE_KEY, PROMPT_KEY, STATE_KEY, WRIST_IMAGE_KEY, resize_with_pad


def test_constants_match_openpi_and_the_paper():
    assert LIBERO_DUMMY_ACTION == (0, 0, 0, 0, 0, 0, -1)
    assert {k: MAX_STEPS[k] for k in ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")} == {
        "libero_spatial": 220,
        "libero_object": 280,
        "libero_goal": 300,
        "libero_10": 520,
        "libero_90": 400,
    }
    assert (MAX_STEPS["libero_spatial_ood"], MAX_STEPS["libero_object_ood"], MAX_STEPS["libero_goal_ood"]) == (
        300,
        280,
        300,
    )
    assert PAPER_RUNNER_MAX_STEPS["libero_spatial"] == 300
    with pytest.raises(KeyError, match="libero_nope"):
        max_steps_for("libero_nope")


def test_quat2axisangle_matches_scipy_on_random_unit_quaternions():
    rng = np.random.default_rng(0)
    quats = rng.normal(size=(500, 4))
    quats /= np.linalg.norm(quats, axis=1, keepdims=True)
    assert (quats[:, 3] < 0).any() and (quats[:, 3] > 0).any()
    for quat in quats:
        ours = quat2axisangle(quat)
        rotvec = Rotation.from_quat(quat).as_rotvec()  # scipy: xyzw, canonical angle in [0, π]
        if quat[3] >= 0:
            np.testing.assert_allclose(ours, rotvec, atol=1e-9)
        else:
            # openpi does not canonicalise: angle 2·acos(w) ∈ (π, 2π] about the opposite axis, same rotation.
            angle = np.linalg.norm(rotvec)
            np.testing.assert_allclose(ours, rotvec - 2 * np.pi * rotvec / angle, atol=1e-9)
            np.testing.assert_allclose(
                Rotation.from_rotvec(ours).as_matrix(), Rotation.from_quat(quat).as_matrix(), atol=1e-9
            )


def test_quat2axisangle_edge_cases_as_openpi():
    np.testing.assert_array_equal(quat2axisangle([0, 0, 0, 1]), np.zeros(3))
    np.testing.assert_array_equal(quat2axisangle([0, 0, 0, -1.0000001]), np.zeros(3))  # clipped, den == 0
    # openpi's math.isclose(den, 0.0) is exact: a tiny rotation is not zeroed.
    w = np.nextafter(1.0, 0.0)  # the largest w below 1: den ≈ 1.5e-8, below thresholds like 1e-6
    small = np.array([np.sqrt(1 - w * w), 0, 0, w])
    assert quat2axisangle(small)[0] == pytest.approx(2 * np.arccos(w), rel=1e-6)
    assert quat2axisangle(small)[0] > 0
    # 90° about z.
    half = np.pi / 4
    np.testing.assert_allclose(quat2axisangle([0, 0, np.sin(half), np.cos(half)]), [0, 0, np.pi / 2], atol=1e-12)
    quat = np.array([0.0, 0.0, 0.0, 1.5])
    quat2axisangle(quat)
    assert quat[3] == 1.5  # input not clipped in place


def fake_obs(rng, height=256, width=256):
    return {
        "agentview_image": rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
        "robot0_eye_in_hand_image": rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
        "robot0_eef_pos": rng.normal(size=3),
        "robot0_eef_quat": np.array([0.0, np.sin(0.3), 0.0, np.cos(0.3)]),
        "robot0_gripper_qpos": rng.normal(size=2),
    }


def rotate_180_by_index(image):
    height, width = image.shape[:2]
    out = np.empty_like(image)
    for row in range(height):
        for col in range(width):
            out[row, col] = image[height - 1 - row, width - 1 - col]
    return out


def test_request_images_are_rotated_then_resized():
    rng = np.random.default_rng(1)
    obs = fake_obs(rng)
    request = policy_request(obs, "pick up the bowl")
    assert set(request) == {IMAGE_KEY, WRIST_IMAGE_KEY, STATE_KEY, PROMPT_KEY}
    assert request[PROMPT_KEY] == "pick up the bowl"
    for key, source in ((IMAGE_KEY, "agentview_image"), (WRIST_IMAGE_KEY, "robot0_eye_in_hand_image")):
        image = request[key]
        assert image.dtype == np.uint8 and image.shape == (224, 224, 3)
        expected = resize_with_pad(rotate_180_by_index(obs[source]), 224, 224)
        np.testing.assert_array_equal(image, expected)
        # A resize of the unrotated image differs: the rotation really happened.
        assert not np.array_equal(image, resize_with_pad(obs[source], 224, 224))


def test_rotation_is_180_degrees_not_a_flip():
    # Same-size input skips the resize, so the request image is the rotated image itself; PIL rotates independently.
    rng = np.random.default_rng(2)
    obs = fake_obs(rng, 224, 224)
    request = policy_request(obs, "x")
    expected = np.asarray(Image.fromarray(obs["agentview_image"]).rotate(180))
    np.testing.assert_array_equal(request[IMAGE_KEY], expected)
    assert request[IMAGE_KEY].flags["C_CONTIGUOUS"]


def test_state_vector_layout():
    rng = np.random.default_rng(3)
    obs = fake_obs(rng)
    state = robot_state(obs)
    assert state.shape == (8,) and state.dtype == np.float64
    np.testing.assert_array_equal(state[:3], obs["robot0_eef_pos"])
    np.testing.assert_allclose(state[3:6], [0.0, 0.6, 0.0], atol=1e-12)  # 2·0.3 rad about y
    np.testing.assert_array_equal(state[6:], obs["robot0_gripper_qpos"])
    np.testing.assert_array_equal(policy_request(obs, "x")[STATE_KEY], state)


def test_request_rejects_non_uint8_images():
    obs = fake_obs(np.random.default_rng(4))
    obs["agentview_image"] = obs["agentview_image"].astype(np.float32)
    with pytest.raises(ValueError, match="uint8"):
        policy_request(obs, "x")


def numbered_chunk(query, horizon=10):
    # Action k of query q has every entry = 100·q + k, so order and origin can be read back.
    return np.full((horizon, 7), 0.0) + (100 * query + np.arange(horizon))[:, None]


def test_action_plan_executes_first_replan_steps_in_order():
    plan = ActionPlan(replan_steps=5)
    assert plan.needs_query
    plan.load(numbered_chunk(0))
    assert [plan.pop()[0] for _ in range(5)] == [0, 1, 2, 3, 4]
    assert plan.needs_query
    with pytest.raises(RuntimeError, match="empty"):
        plan.pop()


def test_action_plan_rejects_short_chunks_and_early_loads():
    plan = ActionPlan(replan_steps=5)
    with pytest.raises(ValueError, match="returned 4 actions but replan_steps is 5"):
        plan.load(numbered_chunk(0, horizon=4))
    plan.load(numbered_chunk(0))
    with pytest.raises(RuntimeError, match="still holds 5"):
        plan.load(numbered_chunk(1))


class FakeEnv:
    """Records actions; reports done at env step `done_at` (1-based) if given."""

    def __init__(self, done_at=None, fail_at=None):
        self.actions = []
        self.done_at = done_at
        self.fail_at = fail_at
        self.rng = np.random.default_rng(5)

    def step(self, action):
        assert isinstance(action, list)
        self.actions.append(action)
        if self.fail_at == len(self.actions):
            raise RuntimeError("simulator exploded")
        done = self.done_at is not None and len(self.actions) >= self.done_at
        return fake_obs(self.rng, 32, 32), 0.0, done, {}


class FakePolicy:
    def __init__(self):
        self.queries = []

    def __call__(self, request, query_index):
        self.queries.append(query_index)
        return numbered_chunk(query_index)


def test_episode_runs_dummy_steps_then_replans_until_max_steps():
    env, policy, requests = FakeEnv(), FakePolicy(), []
    outcome = run_episode(
        env,
        fake_obs(np.random.default_rng(6), 32, 32),
        "x",
        policy,
        max_steps=12,
        num_steps_wait=3,
        replan_steps=5,
        on_request=requests.append,
    )
    assert not outcome.success and outcome.error is None
    assert outcome.env_steps == len(env.actions) == 15
    assert env.actions[:3] == [list(LIBERO_DUMMY_ACTION)] * 3
    executed = [a[0] for a in env.actions[3:]]
    assert executed == [0, 1, 2, 3, 4, 100, 101, 102, 103, 104, 200, 201]
    assert policy.queries == [0, 1, 2] and outcome.policy_queries == 3
    assert len(requests) == 12  # one request (replay frame) per non-settle step


def test_done_during_settle_is_ignored_and_done_after_is_success():
    env = FakeEnv(done_at=2)  # done from the start: settle steps ignore it, the first policy step ends the episode
    outcome = run_episode(
        env, fake_obs(np.random.default_rng(7), 32, 32), "x", FakePolicy(), max_steps=50, num_steps_wait=10
    )
    assert outcome.success and outcome.env_steps == 11
    env = FakeEnv(done_at=17)
    outcome = run_episode(
        env, fake_obs(np.random.default_rng(7), 32, 32), "x", FakePolicy(), max_steps=50, num_steps_wait=10
    )
    assert outcome.success and outcome.env_steps == 17


def test_exceptions_end_the_episode_as_failure_or_propagate():
    obs = fake_obs(np.random.default_rng(8), 32, 32)
    outcome = run_episode(FakeEnv(fail_at=13), obs, "x", FakePolicy(), max_steps=50, num_steps_wait=10)
    assert not outcome.success and outcome.env_steps == 12 and "simulator exploded" in outcome.error
    with pytest.raises(RuntimeError, match="exploded"):
        run_episode(FakeEnv(fail_at=13), obs, "x", FakePolicy(), max_steps=50, catch_errors=False)
    short = run_episode(FakeEnv(), obs, "x", lambda r, i: numbered_chunk(i, horizon=2), max_steps=50)
    assert not short.success and "replan_steps is 5" in short.error


def test_loop_state_machine_directly():
    loop = EpisodeLoop(max_steps=2, num_steps_wait=1, replan_steps=2)
    assert not loop.wants_observation() and not loop.wants_policy()
    assert tuple(loop.next_action()) == LIBERO_DUMMY_ACTION
    loop.record_step(done=False)
    assert loop.wants_observation() and loop.wants_policy()
    with pytest.raises(RuntimeError, match="empty"):
        loop.next_action()
    loop.load(numbered_chunk(0))
    assert not loop.wants_policy()
    assert loop.next_action()[0] == 0
    loop.record_step(done=False)
    assert loop.next_action()[0] == 1
    loop.record_step(done=False)
    assert loop.finished and not loop.success and loop.t == 3
    with pytest.raises(RuntimeError, match="finished"):
        loop.next_action()
