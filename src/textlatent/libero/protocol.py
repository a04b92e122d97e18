"""openpi's LIBERO client protocol (`examples/libero/main.py`) as pure values and functions; no simulator import.

An env worker owns the LIBERO env and the policy connection; this module decides what it sends and when:
`policy_request` turns a robosuite observation into the request openpi's client sends, `ActionPlan` keeps the
first `replan_steps` actions of a chunk, and `EpisodeLoop` is the per-episode step state machine (dummy actions
while objects settle, then plan/execute until `done` or the step budget). `run_episode` drives it against any
object with `step(action) -> (obs, reward, done, info)`.

Sources: spec pi0-openpi.md §6 (openpi) and text-latent-method.md §8 (the paper's runner, commit 194691b).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Protocol

import numpy as np

from textlatent.policy.transforms import IMAGE_KEY, PROMPT_KEY, STATE_KEY, WRIST_IMAGE_KEY, resize_with_pad

# Sent while objects settle after a reset: no motion, gripper open (-1). openpi main.py:17.
LIBERO_DUMMY_ACTION: tuple[float, ...] = (0.0,) * 6 + (-1.0,)
LIBERO_ENV_RESOLUTION = 256  # camera height/width the env renders at (openpi main.py:18)
RESIZE_SIZE = 224  # model image size; openpi `resize_size`
NUM_STEPS_WAIT = 10  # openpi and the paper's runner
REPLAN_STEPS = 5  # actions executed per 50-action chunk (openpi and the paper's runner)
SEED = 7  # openpi and the paper's runner default

AGENTVIEW_KEY = "agentview_image"
WRIST_CAMERA_KEY = "robot0_eye_in_hand_image"
EEF_POS_KEY = "robot0_eef_pos"
EEF_QUAT_KEY = "robot0_eef_quat"  # robosuite order: x, y, z, w
GRIPPER_QPOS_KEY = "robot0_gripper_qpos"

# Step budget per suite, excluding the NUM_STEPS_WAIT settle steps.
# Standard suites: openpi main.py:60-71, each just above the suite's longest training demo (193/254/270/505/373).
# OOD suites: the paper's runner main.py:328-339 (spatial_ood 300, object_ood 280, goal_ood 300).
MAX_STEPS: Mapping[str, int] = MappingProxyType(
    {
        "libero_spatial": 220,
        "libero_object": 280,
        "libero_goal": 300,
        "libero_10": 520,
        "libero_90": 400,
        "libero_spatial_ood": 300,
        "libero_object_ood": 280,
        "libero_goal_ood": 300,
    }
)
# The paper's runner differs from openpi on one standard suite: it gives libero_spatial 300 steps (main.py:328-339),
# which matters for its reconstruction experiments on the standard suites.
PAPER_RUNNER_MAX_STEPS: Mapping[str, int] = MappingProxyType({**MAX_STEPS, "libero_spatial": 300})


def max_steps_for(suite: str, table: Mapping[str, int] = MAX_STEPS) -> int:
    try:
        return table[suite]
    except KeyError:
        raise KeyError(f"no step budget for suite {suite!r}; known suites: {', '.join(sorted(table))}") from None


def quat2axisangle(quat_xyzw: Sequence[float] | np.ndarray) -> np.ndarray:
    """robosuite's quaternion → axis-angle, exactly as openpi's `_quat2axisangle` (which copies robosuite).

    Not canonicalised: for w < 0 the angle is 2·acos(w) > π, as in openpi, because the trained policy saw
    states computed this way. Unlike openpi the input is not clipped in place.
    """
    quat = np.asarray(quat_xyzw, dtype=np.float64)
    if quat.shape != (4,):
        raise ValueError(f"expected a quaternion (x, y, z, w) of shape (4,), got shape {quat.shape}")
    w = min(max(float(quat[3]), -1.0), 1.0)
    den = np.sqrt(1.0 - w * w)
    # openpi uses math.isclose(den, 0.0) with default tolerances, which is true only for den == 0 exactly.
    if math.isclose(den, 0.0):
        return np.zeros(3)
    return (quat[:3] * 2.0 * math.acos(w)) / den


def robot_state(obs: Mapping[str, Any]) -> np.ndarray:
    """State vector (8,): eef position (3), axis-angle of eef orientation (3), gripper joint positions (2).
    float64 as in openpi (np.concatenate of robosuite's float64 arrays)."""
    pos = np.asarray(_required(obs, EEF_POS_KEY), dtype=np.float64).reshape(-1)
    quat = np.asarray(_required(obs, EEF_QUAT_KEY), dtype=np.float64).reshape(-1)
    gripper = np.asarray(_required(obs, GRIPPER_QPOS_KEY), dtype=np.float64).reshape(-1)
    if pos.shape != (3,) or gripper.shape != (2,):
        raise ValueError(
            f"expected {EEF_POS_KEY} of 3 and {GRIPPER_QPOS_KEY} of 2 values, got {pos.shape}, {gripper.shape}"
        )
    return np.concatenate([pos, quat2axisangle(quat), gripper])


def camera_image(image: np.ndarray, resize: int = RESIZE_SIZE) -> np.ndarray:
    """A robosuite camera image as the policy sees it: rotated 180° (openpi: "to match train preprocessing"),
    then resize-with-pad to resize×resize, uint8."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        # robosuite renders uint8 HWC; anything else means the env was configured differently from openpi's.
        raise ValueError(f"expected a uint8 [H, W, 3] camera image, got {image.dtype} of shape {image.shape}")
    rotated = image[::-1, ::-1]
    return np.ascontiguousarray(resize_with_pad(rotated, resize, resize))


def policy_request(obs: Mapping[str, Any], prompt: str, resize: int = RESIZE_SIZE) -> dict[str, Any]:
    """The request openpi's LIBERO client sends for one robosuite observation."""
    return {
        IMAGE_KEY: camera_image(_required(obs, AGENTVIEW_KEY), resize),
        WRIST_IMAGE_KEY: camera_image(_required(obs, WRIST_CAMERA_KEY), resize),
        STATE_KEY: robot_state(obs),
        PROMPT_KEY: str(prompt),
    }


def _required(obs: Mapping[str, Any], key: str) -> Any:
    if key not in obs:
        raise KeyError(f"observation has no {key!r}; got keys {sorted(obs)}")
    return obs[key]


class ActionPlan:
    """Keeps the first `replan_steps` actions of the latest chunk; the policy is queried again when it is empty."""

    def __init__(self, replan_steps: int = REPLAN_STEPS) -> None:
        if replan_steps < 1:
            raise ValueError(f"replan_steps must be at least 1, got {replan_steps}")
        self.replan_steps = replan_steps
        self._queue: deque[np.ndarray] = deque()

    @property
    def needs_query(self) -> bool:
        return not self._queue

    def __len__(self) -> int:
        return len(self._queue)

    def load(self, chunk: np.ndarray | Sequence[Sequence[float]]) -> None:
        if not self.needs_query:
            # openpi only queries on an empty plan; loading early would silently drop or reorder actions.
            raise RuntimeError(f"the plan still holds {len(self._queue)} actions; execute them before loading a chunk")
        actions = np.asarray(chunk)
        if actions.ndim != 2:
            raise ValueError(f"an action chunk must be [horizon, action_dim], got shape {actions.shape}")
        if len(actions) < self.replan_steps:
            raise ValueError(
                f"the policy returned {len(actions)} actions but replan_steps is {self.replan_steps}; "
                "lower replan_steps or use a policy with a longer action horizon"
            )
        self._queue.extend(actions[: self.replan_steps])

    def pop(self) -> np.ndarray:
        if not self._queue:
            raise RuntimeError("the action plan is empty; query the policy and load its chunk first")
        return self._queue.popleft()

    def clear(self) -> None:
        self._queue.clear()


@dataclass
class EpisodeLoop:
    """openpi's per-episode step logic as a state machine; the caller owns the env and the policy.

    Per env step: `wants_observation()` says whether this step builds a request (the replay frame is taken then);
    `wants_policy()` whether the plan is empty and a chunk must be `load`ed; `next_action()` gives the action;
    `record_step(done)` advances. Settle steps send the dummy action and ignore `done` (as openpi does). The episode
    ends on `done` (success), after `max_steps + num_steps_wait` env steps (failure), or on `record_error` (failure).
    """

    max_steps: int
    num_steps_wait: int = NUM_STEPS_WAIT
    replan_steps: int = REPLAN_STEPS
    t: int = 0  # openpi's counter: env steps taken, including settle steps
    queries: int = 0
    finished: bool = False
    success: bool = False
    error: str | None = None
    plan: ActionPlan = field(init=False)

    def __post_init__(self) -> None:
        if self.max_steps < 1 or self.num_steps_wait < 0:
            raise ValueError(f"need max_steps ≥ 1 and num_steps_wait ≥ 0, got {self.max_steps}, {self.num_steps_wait}")
        self.plan = ActionPlan(self.replan_steps)

    @property
    def step_limit(self) -> int:
        return self.max_steps + self.num_steps_wait

    @property
    def settling(self) -> bool:
        return self.t < self.num_steps_wait

    def wants_observation(self) -> bool:
        self._require_running()
        return not self.settling

    def wants_policy(self) -> bool:
        self._require_running()
        return not self.settling and self.plan.needs_query

    def load(self, chunk: np.ndarray | Sequence[Sequence[float]]) -> None:
        self._require_running()
        self.plan.load(chunk)
        self.queries += 1

    def next_action(self) -> np.ndarray:
        self._require_running()
        if self.settling:
            return np.asarray(LIBERO_DUMMY_ACTION)
        return self.plan.pop()

    def record_step(self, done: bool) -> None:
        self._require_running()
        was_settling = self.settling
        self.t += 1
        if done and not was_settling:
            self.finished, self.success = True, True
        elif self.t >= self.step_limit:
            self.finished = True

    def record_error(self, error: BaseException | str) -> None:
        # openpi logs the exception and ends the episode, which then counts as a failure.
        self.finished, self.success = True, False
        self.error = error if isinstance(error, str) else f"{type(error).__name__}: {error}"

    def _require_running(self) -> None:
        if self.finished:
            raise RuntimeError("the episode has finished; start a new EpisodeLoop")


class StepEnv(Protocol):
    def step(self, action: list[float]) -> tuple[Mapping[str, Any], float, bool, Mapping[str, Any]]: ...


@dataclass(frozen=True)
class EpisodeOutcome:
    success: bool
    env_steps: int  # env.step calls, settle steps included
    policy_queries: int
    error: str | None


def run_episode(
    env: StepEnv,
    initial_obs: Mapping[str, Any],
    prompt: str,
    query_policy: Callable[[dict[str, Any], int], np.ndarray],
    *,
    max_steps: int,
    num_steps_wait: int = NUM_STEPS_WAIT,
    replan_steps: int = REPLAN_STEPS,
    resize: int = RESIZE_SIZE,
    on_request: Callable[[dict[str, Any]], None] | None = None,
    catch_errors: bool = True,
) -> EpisodeOutcome:
    """One episode as openpi runs it, from the observation after reset / set_init_state.

    `query_policy(request, query_index)` returns the action chunk; the index lets the caller mark the first query of
    an episode (the paper's runner sends done=True there to reset its steering). `on_request` sees every request
    built (one per non-settle step, as openpi's replay frames). With `catch_errors` (openpi's behaviour) an exception
    ends the episode as a failure whose `error` says why; otherwise it propagates.
    """
    loop = EpisodeLoop(max_steps=max_steps, num_steps_wait=num_steps_wait, replan_steps=replan_steps)
    obs = initial_obs
    while not loop.finished:
        try:
            if loop.wants_observation():
                request = policy_request(obs, prompt, resize)
                if on_request is not None:
                    on_request(request)
                if loop.wants_policy():
                    loop.load(query_policy(request, loop.queries))
            action = loop.next_action()
            obs, _reward, done, _info = env.step(np.asarray(action).tolist())
            loop.record_step(bool(done))
        except Exception as exc:
            if not catch_errors:
                raise
            loop.record_error(exc)
    return EpisodeOutcome(success=loop.success, env_steps=loop.t, policy_queries=loop.queries, error=loop.error)
