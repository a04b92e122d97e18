"""Robot datasets read without lerobot or torch: LeRobot v2.0, v2.1 and v3.0 (parquet + PNG or mp4)."""

from textlatent.data.lerobot import (
    LIBERO_OBSERVATION_KEYS,
    SUPPORTED_VERSIONS,
    Episode,
    EpisodeFrames,
    LeRobotDataset,
    VideoSpan,
    frame_at,
    libero_observation,
)

__all__ = [
    "LIBERO_OBSERVATION_KEYS",
    "SUPPORTED_VERSIONS",
    "Episode",
    "EpisodeFrames",
    "LeRobotDataset",
    "VideoSpan",
    "frame_at",
    "libero_observation",
]
