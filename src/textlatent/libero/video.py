"""Episode videos: agent view and wrist camera side by side, as the policy sees them (openpi's 180° rotation), with an
optional end-effector trajectory drawn over the agent view.

The trajectory is projected into the rendered frames after the fact, so the policy's observations never contain it
(the paper's runner put markers into the scene, which needed a separate render pass).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from textlatent.libero.protocol import AGENTVIEW_KEY, EEF_POS_KEY, WRIST_CAMERA_KEY

DEFAULT_FPS = 20  # LIBERO's control frequency: the video plays in real time
MARKER_RADIUS = 2  # pixels at 256×256


def upright(image: np.ndarray) -> np.ndarray:
    """A robosuite camera frame turned as openpi's client turns it for the policy (both axes flipped)."""
    return np.ascontiguousarray(image[::-1, ::-1])


def viridis(fraction: float) -> np.ndarray:
    """RGB uint8 of the viridis colour map at `fraction` in [0, 1] (early points dark blue, late ones yellow)."""
    from matplotlib import colormaps

    rgba = colormaps["viridis"](float(np.clip(fraction, 0.0, 1.0)))
    return (np.asarray(rgba[:3]) * 255).round().astype(np.uint8)


def camera_projection(sim: Any, camera: str, height: int, width: int) -> np.ndarray:
    """3×4 matrix taking homogeneous world points to homogeneous pixels (x right, y down) of a MuJoCo camera."""
    cam_id = sim.model.camera_name2id(camera)
    focal = 0.5 * height / np.tan(np.deg2rad(sim.model.cam_fovy[cam_id]) / 2)
    intrinsics = np.array([[focal, 0.0, width / 2], [0.0, focal, height / 2], [0.0, 0.0, 1.0]])
    # MuJoCo cameras look along -z with y up; pixel axes want z forward and y down.
    camera_to_world = sim.data.cam_xmat[cam_id].reshape(3, 3) @ np.diag([1.0, -1.0, -1.0])
    position = sim.data.cam_xpos[cam_id]
    world_to_camera = np.hstack([camera_to_world.T, -camera_to_world.T @ position[:, None]])
    return intrinsics @ world_to_camera


class TrajectoryOverlay:
    """Projects end-effector positions (world frame) into the agent-view camera and draws them as coloured dots."""

    def __init__(self, sim: Any, camera: str, height: int, width: int, horizon: int, every: int = 2) -> None:
        self.world_to_pixels = camera_projection(sim, camera, height, width)
        self.height, self.width, self.horizon, self.every = height, width, max(horizon, 1), every
        self.points: list[tuple[int, int, np.ndarray]] = []
        self._t = 0

    def add(self, eef_pos: np.ndarray) -> None:
        if self._t % self.every == 0:
            row, col = self.pixel(np.asarray(eef_pos, dtype=np.float64))
            self.points.append((row, col, viridis(self._t / self.horizon)))
        self._t += 1

    def pixel(self, point: np.ndarray) -> tuple[int, int]:
        """(row, col) of a world point in the frame as `upright` shows it."""
        homogeneous = self.world_to_pixels @ np.append(point, 1.0)
        x, y = homogeneous[0] / homogeneous[2], homogeneous[1] / homogeneous[2]
        # The transform gives (x right, y down) in the camera's own image; `upright` flips both axes of the frame
        # robosuite returns, which is that image upside down, so the net effect is a left-right mirror.
        row, col = int(np.rint(y)), int(np.rint(x))
        return row, self.width - 1 - col

    def draw(self, frame: np.ndarray) -> np.ndarray:
        out = frame.copy()
        rows, cols = np.ogrid[: self.height, : self.width]
        for row, col, colour in self.points:
            disc = (rows - row) ** 2 + (cols - col) ** 2 <= MARKER_RADIUS**2
            out[disc] = colour
        return out


class EpisodeVideo:
    """Streams an episode's frames into an mp4 (H.264 through the ffmpeg that imageio-ffmpeg ships)."""

    def __init__(
        self, path: str | os.PathLike[str], *, fps: int = DEFAULT_FPS, overlay: TrajectoryOverlay | None = None
    ) -> None:
        import imageio.v2 as imageio

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.overlay = overlay
        self.frames = 0
        self._writer = imageio.get_writer(
            str(self.path), format="FFMPEG", mode="I", fps=fps, codec="libx264", quality=7, macro_block_size=16
        )

    def add(self, obs: Mapping[str, Any]) -> None:
        agent = upright(np.asarray(obs[AGENTVIEW_KEY]))
        if self.overlay is not None and EEF_POS_KEY in obs:
            self.overlay.add(obs[EEF_POS_KEY])
            agent = self.overlay.draw(agent)
        parts = [agent]
        if WRIST_CAMERA_KEY in obs:
            parts.append(upright(np.asarray(obs[WRIST_CAMERA_KEY])))
        self._writer.append_data(np.concatenate(parts, axis=1))
        self.frames += 1

    def close(self) -> Path:
        self._writer.close()
        return self.path
