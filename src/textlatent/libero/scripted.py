"""A scripted pick-and-place policy for LIBERO: checks the simulator, the client protocol and success scoring end to
end without model weights.

`ScriptedPickPlace` sees only what an openpi policy server sees (the 8-D `observation/state`: eef position,
axis-angle, gripper finger positions) plus two world-frame points given up front, and answers each request with an
action chunk for LIBERO's Panda OSC_POSE controller: xyz deltas in [-1, 1] (1 = 5 cm of goal offset, which the arm
follows at roughly 1.3 cm per 20 Hz step), rotation deltas zero, gripper -1 open / +1 closed.
`pick_place_targets` reads those two points from the object poses in a LIBERO observation.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence

import numpy as np

# Steady-state eef speed per env step for an xyz action of 1 (measured on LIBERO's Panda at 20 Hz).
_SPEED_PER_ACTION = 0.0133
# Finger joint position (each finger) of LIBERO's Panda gripper when fully open.
_GRIPPER_OPEN_QPOS = 0.039


class Phase(enum.IntEnum):
    ABOVE_PICK = 0
    DESCEND = 1
    GRASP = 2
    LIFT = 3
    ABOVE_PLACE = 4
    LOWER = 5
    RELEASE = 6
    RETREAT = 7


_GRIPPER_CLOSED_PHASES = (Phase.GRASP, Phase.LIFT, Phase.ABOVE_PLACE, Phase.LOWER)


class ScriptedPickPlace:
    """Closed-loop pick-and-place from the robot state alone.

    Phases: above pick → descend → close the gripper (until the fingers stop moving) → lift → above place → lower →
    open (until the fingers are open again) → retreat upwards and stay. A phase ends when the eef is within `tolerance`
    of its waypoint, or, for the two descents, when the arm has stalled close to it (the object or table blocks it).

    Called once per chunk; the chunk is a proportional controller rolled out on a first-order model of the arm, so its
    first few actions (openpi executes 5) are a decelerating ramp towards the current waypoint.
    """

    def __init__(
        self,
        pick: Sequence[float],
        place: Sequence[float],
        *,
        horizon: int = 50,
        clearance: float = 0.1,
        gain: float = 12.0,
        tolerance: float = 0.01,
    ) -> None:
        self.pick = _point(pick, "pick")
        self.place = _point(place, "place")
        if horizon < 1:
            raise ValueError(f"horizon must be at least 1, got {horizon}")
        if clearance <= 0 or gain <= 0 or tolerance <= 0:
            raise ValueError(f"clearance, gain and tolerance must be positive, got {clearance}, {gain}, {tolerance}")
        self.horizon = horizon
        self.clearance = clearance
        self.gain = gain
        self.tolerance = tolerance
        self.reset()

    def reset(self) -> None:
        """Start a new episode from the first phase."""
        self.phase = Phase.ABOVE_PICK
        self._calls_in_phase = 0
        self._previous: np.ndarray | None = None

    def waypoint(self, phase: Phase | None = None) -> np.ndarray:
        """Where the eef heads in a phase (the current one by default)."""
        phase = self.phase if phase is None else phase
        up = np.array([0.0, 0.0, self.clearance])
        return {
            Phase.ABOVE_PICK: self.pick + up,
            Phase.DESCEND: self.pick,
            Phase.GRASP: self.pick,
            Phase.LIFT: self.pick + up,
            Phase.ABOVE_PLACE: self.place + up,
            Phase.LOWER: self.place,
            Phase.RELEASE: self.place,
            Phase.RETREAT: self.place + up,
        }[phase]

    def __call__(self, state: np.ndarray) -> np.ndarray:
        state = np.asarray(state, dtype=np.float64).reshape(-1)
        if state.shape != (8,):
            raise ValueError(f"expected the 8-D LIBERO state (eef pos, axis-angle, gripper qpos), got {state.shape}")
        self._advance(state)
        self._previous = state.copy()
        return self._chunk(state[:3], gripper=1.0 if self.phase in _GRIPPER_CLOSED_PHASES else -1.0)

    def _advance(self, state: np.ndarray) -> None:
        # Phases may end at once when the eef already sits at the next waypoint, hence the loop.
        while True:
            if not self._phase_done(state):
                return
            self.phase = Phase(self.phase + 1)
            self._calls_in_phase = 0
            if self.phase == Phase.RETREAT:
                return

    def _phase_done(self, state: np.ndarray) -> bool:
        pos, gap = state[:3], float(state[6] - state[7])
        moved = np.inf if self._previous is None or self._calls_in_phase == 0 else _distance(pos, self._previous[:3])
        gap_change = np.inf if self._previous is None else abs(gap - float(self._previous[6] - self._previous[7]))
        self._calls_in_phase += 1
        error = _distance(pos, self.waypoint())
        if self.phase == Phase.RETREAT:
            return False
        if self.phase in (Phase.GRASP, Phase.RELEASE):
            # The fingers have settled: on the object (closing) or fully open (opening). The first call of the
            # phase only sends the command.
            if self._calls_in_phase < 2:
                return False
            if self.phase == Phase.RELEASE and gap >= 2 * _GRIPPER_OPEN_QPOS - 0.005:
                return True
            return gap_change < 0.001
        if error < self.tolerance:
            return True
        # Blocked on the way down (by the object or the table) yet close to the waypoint: good enough.
        stalled = moved < 0.002
        return self.phase in (Phase.DESCEND, Phase.LOWER) and stalled and error < 3 * self.tolerance

    def _chunk(self, pos: np.ndarray, gripper: float) -> np.ndarray:
        target = self.waypoint()
        chunk = np.zeros((self.horizon, 7), dtype=np.float32)
        predicted = pos.copy()
        for k in range(self.horizon):
            move = np.clip(self.gain * (target - predicted), -1.0, 1.0)
            chunk[k, :3] = move
            predicted = predicted + _SPEED_PER_ACTION * move
        chunk[:, 6] = gripper
        return chunk


def pick_place_targets(
    obs: Mapping[str, object],
    pick_object: str,
    place_on: str,
    *,
    pick_height: float = 0.0,
    place_height: float = 0.06,
) -> tuple[np.ndarray, np.ndarray]:
    """World-frame (pick, place) points for `ScriptedPickPlace` from a LIBERO observation's `{name}_pos` entries.

    pick = the object's origin raised by `pick_height` (the grip site at the object's origin grasps a small object
    around its middle); place = the target's origin raised by `place_height` (the release height above it).
    Use an observation taken after the objects have settled (e.g. the last settle step's): at reset LIBERO spawns
    them a few centimetres above their regions.
    """
    return (
        _object_pos(obs, pick_object) + np.array([0.0, 0.0, pick_height]),
        _object_pos(obs, place_on) + np.array([0.0, 0.0, place_height]),
    )


def _object_pos(obs: Mapping[str, object], name: str) -> np.ndarray:
    key = name if name.endswith("_pos") else f"{name}_pos"
    if key not in obs:
        available = sorted(
            k[: -len("_pos")] for k in obs if k.endswith("_pos") and not k.startswith("robot") and "_to_" not in k
        )
        raise KeyError(
            f"observation has no {key!r}; objects with a position: {', '.join(available) or 'none'} "
            "(fixtures such as the stove or cabinet have none)"
        )
    return _point(obs[key], key)


def _point(value: object, what: str) -> np.ndarray:
    point = np.asarray(value, dtype=np.float64).reshape(-1)
    if point.shape != (3,) or not np.all(np.isfinite(point)):
        raise ValueError(f"{what} must be 3 finite world coordinates, got {value!r}")
    return point


def _distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b))
