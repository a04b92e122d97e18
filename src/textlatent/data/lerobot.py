"""Read LeRobot datasets (codebase v2.0, v2.1 and v3.0) with pyarrow, Pillow and ffmpeg: no lerobot, no torch.

Layouts, as lerobot writes them:

* v2.x: ``meta/info.json``, ``meta/episodes.jsonl``, ``meta/tasks.jsonl``; one parquet per episode at
  ``info["data_path"]`` (``episode_chunk``, ``episode_index``). Images of dtype ``image`` are PNG bytes inside the
  parquet (``struct<bytes, path>``); those of dtype ``video`` are one mp4 per episode at ``info["video_path"]``.
* v3.0: ``meta/info.json``, ``meta/tasks.parquet``, ``meta/episodes/chunk-*/file-*.parquet``; many episodes per data
  parquet and per mp4. Each episode row names its data file (``data/chunk_index``, ``data/file_index``) and, per video
  key, its mp4 and the time span inside it (``videos/<key>/from_timestamp`` … ``to_timestamp``).

Typical use::

    ds = LeRobotDataset.open("hf://datasets/physical-intelligence/libero")
    selection = ds.select(tasks=["put the bowl on the plate"], episodes_per_task=2, frames=slice(0, 120))
    for batch in ds.iter_frames(selection, batch_size=16):
        observation = libero_observation(batch)
"""

from __future__ import annotations

import dataclasses
import difflib
import io
import json
import os
import pathlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

SUPPORTED_VERSIONS = ("v2.0", "v2.1", "v3.0")
# Columns every LeRobot frame has; the reader always returns these three (and "prompt") to say where a frame is from.
FRAME_ID_KEYS = ("episode_index", "frame_index", "task_index")
PROMPT_KEY = "prompt"

# LIBERO policy observation key -> dataset keys that hold it, tried in order: the v2.0 names of
# physical-intelligence/libero first, then the v3.0 names of HuggingFaceVLA/libero.
LIBERO_OBSERVATION_KEYS: dict[str, tuple[str, ...]] = {
    "observation/image": ("image", "observation.images.image"),
    "observation/wrist_image": ("wrist_image", "observation.images.image2"),
    "observation/state": ("state", "observation.state"),
}


@dataclasses.dataclass(frozen=True)
class VideoSpan:
    """Where an episode's frames of one camera lie: an mp4 (relative to the dataset root) and when the episode starts
    in it (frame i of the episode is at ``from_timestamp + timestamp_i``)."""

    path: str
    from_timestamp: float


@dataclasses.dataclass(frozen=True)
class Episode:
    index: int
    tasks: tuple[str, ...]
    length: int
    data_path: str  # parquet holding its frames, relative to the dataset root
    videos: Mapping[str, VideoSpan] = dataclasses.field(default_factory=dict)


class EpisodeFrames(NamedTuple):
    """One episode of a selection and the frame indices (``frame_index`` values) to read from it."""

    episode_index: int
    frame_indices: range


@dataclasses.dataclass(frozen=True)
class _HubRepo:
    """A dataset repository on the Hugging Face hub, mirrored file by file into ``local_dir`` on demand."""

    repo_id: str
    revision: str | None
    local_dir: pathlib.Path

    def fetch(self, relative_paths: Sequence[str]) -> None:
        from huggingface_hub import snapshot_download

        snapshot_download(
            self.repo_id,
            repo_type="dataset",
            revision=self.revision,
            local_dir=self.local_dir,
            allow_patterns=list(relative_paths),
        )

    def describe(self) -> str:
        return f"hf://datasets/{self.repo_id}" + (f"@{self.revision}" if self.revision else "")


class LeRobotDataset:
    """Metadata of a LeRobot dataset plus batched, lazily decoded reading of selected frames."""

    def __init__(
        self,
        root: pathlib.Path,
        info: dict[str, Any],
        tasks: dict[int, str],
        episodes: list[Episode],
        hub: _HubRepo | None = None,
    ):
        self.root = root
        self.info = info
        self._tasks = tasks
        self._episodes = episodes
        self._episode_by_index = {ep.index: ep for ep in episodes}
        self._hub = hub

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, source: str | os.PathLike) -> LeRobotDataset:
        """Open a local dataset directory, or ``hf://datasets/owner/name[@revision]``.

        From the hub only ``meta/`` is downloaded here; data and video files follow when frames are read.
        """
        text = os.fspath(source)
        if text.startswith("hf://"):
            # (imported here: the checkpoint package pulls in jax, which reading local data does not need)
            from textlatent.checkpoint.download import resolve

            hub = _parse_hub_url(text)
            # meta/ goes through the checkpoint downloader, so it is cached and marked complete like checkpoints.
            meta = resolve(f"hf://datasets/{hub.repo_id}/meta" + (f"@{hub.revision}" if hub.revision else ""))
            root = meta.parent
            hub = dataclasses.replace(hub, local_dir=root)
        elif "://" in text:
            raise ValueError(
                f"unsupported dataset location {text!r}: give a local directory or hf://datasets/owner/name"
            )
        else:
            root, hub = pathlib.Path(text).expanduser(), None
            if not root.is_dir():
                raise FileNotFoundError(f"dataset directory {root} does not exist; give the folder holding meta/")
        info = _read_info(root)
        if info["codebase_version"] == "v3.0":
            tasks, episodes = _read_v3_meta(root, info)
        else:
            tasks, episodes = _read_v2_meta(root, info)
        return cls(root, info, tasks, episodes, hub)

    # ------------------------------------------------------------------ metadata

    @property
    def version(self) -> str:
        return self.info["codebase_version"]

    @property
    def fps(self) -> float:
        return self.info["fps"]

    @property
    def features(self) -> dict[str, dict[str, Any]]:
        return self.info["features"]

    @property
    def tasks(self) -> dict[int, str]:
        """``{task_index: task string}``."""
        return dict(self._tasks)

    @property
    def episodes(self) -> list[Episode]:
        """Every episode, in dataset order (by episode index)."""
        return list(self._episodes)

    @property
    def image_keys(self) -> list[str]:
        """Camera features stored as PNG inside the parquet files."""
        return [key for key, ft in self.features.items() if ft["dtype"] == "image"]

    @property
    def video_keys(self) -> list[str]:
        """Camera features stored as mp4 files."""
        return [key for key, ft in self.features.items() if ft["dtype"] == "video"]

    def __repr__(self) -> str:
        where = self._hub.describe() if self._hub else str(self.root)
        return (
            f"LeRobotDataset({where}, {self.version}, {len(self._episodes)} episodes, "
            f"{len(self._tasks)} tasks, {self.fps} fps)"
        )

    # ------------------------------------------------------------------ selection

    def select(
        self,
        tasks: Iterable[str | int] | str | int | None = None,
        episodes_per_task: int | None = None,
        frames: slice | range | str | None = None,
    ) -> list[EpisodeFrames]:
        """Episodes and frames to read, in dataset order.

        ``tasks``: task strings or task indices (default: every task). ``episodes_per_task``: keep the first K
        episodes of each task, in dataset order (default: all). ``frames``: a ``frame_index`` range such as
        ``slice(0, 120)``, ``range(0, 120, 2)`` or ``"0:120"``, clipped to each episode's length; episodes it leaves
        empty are dropped.
        """
        if isinstance(tasks, str | int | np.integer):
            tasks = [tasks]  # a lone string would otherwise be read as a sequence of characters
        wanted = list(dict.fromkeys(self._task_string(t) for t in tasks)) if tasks is not None else None
        if wanted is not None and not wanted:
            raise ValueError("tasks=[] selects nothing; pass task strings or indices, or None for every task")

        if episodes_per_task is None:
            chosen = [ep for ep in self._episodes if wanted is None or set(ep.tasks) & set(wanted)]
        else:
            if episodes_per_task < 1:
                raise ValueError(f"episodes_per_task must be at least 1, got {episodes_per_task}")
            chosen_indices: set[int] = set()
            for task in wanted if wanted is not None else list(self._tasks.values()):
                having = [ep.index for ep in self._episodes if task in ep.tasks]
                if len(having) < episodes_per_task:
                    raise ValueError(
                        f"task {task!r} has only {len(having)} episode(s), fewer than episodes_per_task="
                        f"{episodes_per_task}; lower episodes_per_task to at most {len(having)}"
                    )
                chosen_indices.update(having[:episodes_per_task])
            chosen = [ep for ep in self._episodes if ep.index in chosen_indices]

        frame_slice = _parse_frames(frames)
        selection = [EpisodeFrames(ep.index, range(*frame_slice.indices(ep.length))) for ep in chosen]
        selection = [sel for sel in selection if len(sel.frame_indices)]
        if chosen and not selection:
            lengths = [ep.length for ep in chosen]
            raise ValueError(
                f"frames={frames!r} selects no frame: the chosen episodes are {min(lengths)} to {max(lengths)} "
                "frames long; start the range lower"
            )
        return selection

    def _task_string(self, task: str | int) -> str:
        if isinstance(task, int | np.integer) and not isinstance(task, bool):
            if int(task) not in self._tasks:
                raise ValueError(
                    f"task index {task} does not exist; this dataset has task indices "
                    f"{min(self._tasks)}..{max(self._tasks)} (see .tasks)"
                )
            return self._tasks[int(task)]
        if not isinstance(task, str):
            raise TypeError(f"a task is a task string or a task index, got {type(task).__name__}")
        known = list(self._tasks.values())
        if task not in known:
            close = difflib.get_close_matches(task, known, n=3, cutoff=0.6)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else "; see .tasks for the list"
            raise ValueError(f"unknown task {task!r} ({len(known)} tasks in this dataset){hint}")
        return task

    # ------------------------------------------------------------------ reading

    def ensure_local(self, selection: Sequence[EpisodeFrames], keys: Sequence[str] | None = None) -> None:
        """Make sure the files holding ``selection`` are on disk: download the missing ones (hub datasets, one
        request for all) or raise FileNotFoundError naming them (local datasets)."""
        keys = self._resolve_keys(keys)
        needed: list[str] = []
        for sel in selection:
            episode = self._episode(sel.episode_index)
            needed.append(episode.data_path)
            needed += [episode.videos[key].path for key in keys if key in self.video_keys]
        missing = [path for path in dict.fromkeys(needed) if not (self.root / path).is_file()]
        if missing and self._hub is not None:
            self._hub.fetch(missing)
            missing = [path for path in missing if not (self.root / path).is_file()]
            if missing:
                raise FileNotFoundError(
                    f"{self._hub.describe()} has no {_first_few(missing)}; the dataset's meta/ names files its "
                    "repository lacks (check the revision)"
                )
        if missing:
            raise FileNotFoundError(
                f"{len(missing)} file(s) of {self.root} are missing: {_first_few(missing)}; the copy is incomplete, "
                "download the dataset again (hf://datasets/owner/name fetches the files it needs)"
            )

    def iter_frames(
        self,
        selection: Sequence[EpisodeFrames],
        batch_size: int = 32,
        keys: Sequence[str] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Yield batches of at most ``batch_size`` frames, in selection order (batches run across episodes).

        A batch maps each feature key to a numpy array with the batch as first axis (images uint8 [B, H, W, 3],
        vectors as their ``info.json`` dtype), plus ``episode_index``, ``frame_index``, ``task_index`` (int64) and
        ``prompt`` (list of task strings). ``keys`` restricts the features read (default: all); images are decoded
        only for the selected frames.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        keys = self._resolve_keys(keys)
        self.ensure_local(selection, keys)
        pending: list[dict[str, Any]] = []
        pending_rows = 0
        for sel in selection:
            for piece in self._read_episode(sel, keys, batch_size):
                pending.append(piece)
                pending_rows += _rows(piece)
                while pending_rows >= batch_size:
                    batch, pending = _take_rows(pending, batch_size)
                    pending_rows -= batch_size
                    yield batch
        if pending_rows:
            yield _take_rows(pending, pending_rows)[0]

    def _resolve_keys(self, keys: Sequence[str] | None) -> list[str]:
        if keys is None:
            keys = list(self.features)
        if isinstance(keys, str):
            keys = [keys]
        unknown = [key for key in keys if key not in self.features and key not in FRAME_ID_KEYS]
        if unknown:
            raise ValueError(f"unknown feature key(s) {unknown}; this dataset has {list(self.features)}")
        return list(dict.fromkeys([*keys, *FRAME_ID_KEYS]))

    def _episode(self, episode_index: int) -> Episode:
        try:
            return self._episode_by_index[int(episode_index)]
        except KeyError:
            raise ValueError(
                f"episode {episode_index} does not exist; episodes run {self._episodes[0].index}.."
                f"{self._episodes[-1].index} (build selections with .select)"
            ) from None

    def _read_episode(self, sel: EpisodeFrames, keys: list[str], chunk_rows: int) -> Iterator[dict[str, Any]]:
        """The selected frames of one episode, in pieces of at most ``chunk_rows`` rows, images decoded per piece."""
        episode = self._episode(sel.episode_index)
        video_keys = [key for key in keys if key in self.video_keys]
        path = self.root / episode.data_path
        available = set(pq.read_schema(path).names)
        table_keys = [key for key in keys if key not in video_keys and key in available]
        columns = list(
            dict.fromkeys([*table_keys, *(["timestamp"] if video_keys and "timestamp" in available else [])])
        )
        wanted = list(sel.frame_indices)
        # Filter while reading, so that rows (and PNG bytes) of other episodes and frames are never materialised.
        table = pq.read_table(
            path,
            columns=columns,
            filters=[("episode_index", "=", episode.index), ("frame_index", "in", wanted)],
        ).sort_by("frame_index")
        if table.num_rows != len(wanted):
            raise ValueError(
                f"{path} has {table.num_rows} rows for the {len(wanted)} selected frames of episode {episode.index} "
                f"(meta says it is {episode.length} frames long); the file does not match meta/, download it again"
            )

        image_keys = [key for key in table_keys if key in self.image_keys]
        arrays = {key: self._column_values(key, table.column(key)) for key in table_keys if key not in image_keys}
        task_indices = np.asarray(table.column("task_index"), dtype=np.int64)
        prompts = [self._tasks.get(int(i), "") for i in task_indices]
        video_streams = {}
        if video_keys:
            times = (
                np.asarray(table.column("timestamp"), dtype=np.float64)
                if "timestamp" in table.column_names
                else np.asarray(wanted, dtype=np.float64) / self.fps
            )
            for key in video_keys:
                span = episode.videos[key]
                video_frames = np.round((span.from_timestamp + times) * self.fps).astype(np.int64)
                video_streams[key] = _read_video_frames(self.root / span.path, video_frames.tolist(), self.fps)
        try:
            for start in range(0, table.num_rows, chunk_rows):
                stop = min(start + chunk_rows, table.num_rows)
                piece: dict[str, Any] = {key: values[start:stop] for key, values in arrays.items()}
                for key in image_keys:
                    piece[key] = _decode_image_column(table.column(key).slice(start, stop - start), self.root, key)
                for key, stream in video_streams.items():
                    piece[key] = np.stack([next(stream) for _ in range(stop - start)])
                piece[PROMPT_KEY] = prompts[start:stop]
                yield piece
        finally:
            for stream in video_streams.values():
                stream.close()  # ends its ffmpeg process when the caller stops early

    def _column_values(self, key: str, column: pa.ChunkedArray) -> np.ndarray | list:
        # The frame id columns are in every parquet even where info.json (hand-made datasets) leaves them out.
        feature = self.features.get(key, {"dtype": "int64", "shape": [1]})
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            return column.to_pylist()
        return _to_numpy(column, tuple(feature.get("shape", ())), np.dtype(feature["dtype"]))


# ---------------------------------------------------------------------- LIBERO policy observations


def libero_observation(
    frames: Mapping[str, Any], key_map: Mapping[str, str | Sequence[str]] | None = None
) -> dict[str, Any]:
    """A batch (or one frame) from ``iter_frames`` as the LIBERO policy's request: ``observation/image``,
    ``observation/wrist_image``, ``observation/state`` and ``prompt``.

    ``key_map`` overrides entries of ``LIBERO_OBSERVATION_KEYS`` (policy key -> dataset key or keys, first present
    wins), e.g. ``{"observation/wrist_image": "observation.images.wrist"}`` for a dataset with other camera names.
    """
    table = {**LIBERO_OBSERVATION_KEYS, **(key_map or {})}
    observation: dict[str, Any] = {}
    for policy_key, dataset_keys in table.items():
        candidates = (dataset_keys,) if isinstance(dataset_keys, str) else tuple(dataset_keys)
        found = next((key for key in candidates if key in frames), None)
        if found is None:
            raise KeyError(
                f"{policy_key!r} needs one of {list(candidates)}, but the frames have {sorted(frames)}; pass "
                f"key_map={{{policy_key!r}: '<dataset key>'}} (or read those keys in iter_frames)"
            )
        observation[policy_key] = frames[found]
    observation[PROMPT_KEY] = frames[PROMPT_KEY]
    return observation


def frame_at(batch: Mapping[str, Any], i: int) -> dict[str, Any]:
    """Frame ``i`` of a batch from ``iter_frames``, with the batch axis removed."""
    return {key: values[i] for key, values in batch.items()}


# ---------------------------------------------------------------------- metadata readers


def _parse_hub_url(url: str) -> _HubRepo:
    spec, revision = url[len("hf://") :], None
    if "@" in spec:
        spec, revision = spec.rsplit("@", 1)
    parts = [part for part in spec.split("/") if part]
    if parts and parts[0] == "datasets":
        parts = parts[1:]
    if len(parts) != 2:
        raise ValueError(f"{url!r}: expected hf://datasets/owner/name[@revision] (a dataset repository, no subfolder)")
    return _HubRepo("/".join(parts), revision or None, pathlib.Path())


def _read_info(root: pathlib.Path) -> dict[str, Any]:
    path = root / "meta" / "info.json"
    if not path.is_file():
        nested = sorted(p.parent.parent for p in root.glob("*/meta/info.json"))
        hint = f"; did you mean {nested[0]}?" if nested else "; give the dataset root, the folder that holds meta/"
        raise FileNotFoundError(f"{root} is not a LeRobot dataset: {path} is missing{hint}")
    info = json.loads(path.read_text())
    version = info.get("codebase_version")
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(
            f"{path}: codebase_version {version!r} is not supported; this reader handles {', '.join(SUPPORTED_VERSIONS)}"
            " (convert older datasets with lerobot's conversion scripts)"
        )
    for key in ("fps", "features", "data_path"):
        if key not in info:
            raise ValueError(f"{path} lacks {key!r}; the file is damaged, download the dataset again")
    if info.get("video_path") is None and any(ft["dtype"] == "video" for ft in info["features"].values()):
        raise ValueError(f"{path} declares video features but no video_path; the file is damaged")
    return info


def _read_jsonl(path: pathlib.Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; a v2 LeRobot dataset needs it, download the dataset again")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _read_v2_meta(root: pathlib.Path, info: dict[str, Any]) -> tuple[dict[int, str], list[Episode]]:
    tasks = {int(row["task_index"]): row["task"] for row in _read_jsonl(root / "meta" / "tasks.jsonl")}
    chunks_size = int(info.get("chunks_size", 1000))
    video_keys = [key for key, ft in info["features"].items() if ft["dtype"] == "video"]
    episodes = []
    for row in _read_jsonl(root / "meta" / "episodes.jsonl"):
        index = int(row["episode_index"])
        names = {"episode_chunk": index // chunks_size, "episode_index": index}
        videos = {key: VideoSpan(info["video_path"].format(video_key=key, **names), 0.0) for key in video_keys}
        episodes.append(
            Episode(index, tuple(row["tasks"]), int(row["length"]), info["data_path"].format(**names), videos)
        )
    return tasks, sorted(episodes, key=lambda ep: ep.index)


def _read_v3_meta(root: pathlib.Path, info: dict[str, Any]) -> tuple[dict[int, str], list[Episode]]:
    tasks_path = root / "meta" / "tasks.parquet"
    if not tasks_path.is_file():
        raise FileNotFoundError(f"{tasks_path} is missing; a v3.0 LeRobot dataset needs it, download the dataset again")
    task_table = pq.read_table(tasks_path)
    # lerobot writes a pandas frame indexed by the task string: the index lands in a column named "task".
    task_column = "task"
    if task_column not in task_table.column_names:
        index_columns = (task_table.schema.pandas_metadata or {}).get("index_columns", [])
        task_column = next((c for c in index_columns if isinstance(c, str)), "__index_level_0__")
    tasks = dict(
        zip(
            (int(i) for i in task_table.column("task_index").to_pylist()),
            task_table.column(task_column).to_pylist(),
            strict=True,
        )
    )

    episode_files = sorted((root / "meta" / "episodes").glob("chunk-*/file-*.parquet"))
    if not episode_files:
        raise FileNotFoundError(
            f"{root / 'meta' / 'episodes'} holds no chunk-*/file-*.parquet; a v3.0 dataset needs them, download "
            "the dataset again"
        )
    video_keys = [key for key, ft in info["features"].items() if ft["dtype"] == "video"]
    episodes = []
    for path in episode_files:
        # Per-episode stats columns can be many and large; only the location columns are read.
        names = [name for name in pq.read_schema(path).names if not name.startswith("stats/")]
        for row in pq.read_table(path, columns=names).to_pylist():
            data_path = info["data_path"].format(chunk_index=row["data/chunk_index"], file_index=row["data/file_index"])
            videos = {
                key: VideoSpan(
                    info["video_path"].format(
                        video_key=key,
                        chunk_index=row[f"videos/{key}/chunk_index"],
                        file_index=row[f"videos/{key}/file_index"],
                    ),
                    float(row[f"videos/{key}/from_timestamp"]),
                )
                for key in video_keys
            }
            episodes.append(
                Episode(int(row["episode_index"]), tuple(row["tasks"]), int(row["length"]), data_path, videos)
            )
    return tasks, sorted(episodes, key=lambda ep: ep.index)


# ---------------------------------------------------------------------- column decoding


def _to_numpy(column: pa.ChunkedArray | pa.Array, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """Scalar, ``list<…>`` or ``fixed_size_list<…>[n]`` column (nested for 2-D features) -> array [rows, *shape]."""
    rows = len(column)
    values = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    while (
        pa.types.is_list(values.type) or pa.types.is_large_list(values.type) or pa.types.is_fixed_size_list(values.type)
    ):
        values = values.flatten()  # respects slicing offsets, unlike .values
    flat = values.to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    if shape in ((), (1,)) and flat.size == rows:
        return flat
    return flat.reshape(rows, *shape) if int(np.prod(shape)) * rows == flat.size else flat.reshape(rows, -1)


def _decode_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def _decode_image_column(column: pa.ChunkedArray, root: pathlib.Path, key: str) -> np.ndarray:
    """HF-datasets image structs (``bytes`` embedded, or else a ``path``) -> uint8 [rows, H, W, 3]."""
    images = []
    for cell in column.to_pylist():
        if isinstance(cell, dict) and cell.get("bytes") is not None:
            images.append(_decode_png(cell["bytes"]))
        elif isinstance(cell, dict) and cell.get("path"):
            image_path = root / cell["path"]
            if not image_path.is_file():
                raise FileNotFoundError(f"image {key!r} is not embedded and {image_path} is missing")
            images.append(_decode_png(image_path.read_bytes()))
        else:
            raise ValueError(f"column {key!r} holds {type(cell).__name__}, not an image struct with bytes or path")
    return np.stack(images)


def _read_video_frames(path: pathlib.Path, frame_numbers: list[int], fps: float) -> Iterator[np.ndarray]:
    """Frames ``frame_numbers`` (ascending) of an mp4 as uint8 [H, W, 3], decoded sequentially from the first one
    and no further than the last one."""
    import imageio_ffmpeg

    if not path.is_file():
        raise FileNotFoundError(f"video {path} is missing; download the dataset again")
    first, last = frame_numbers[0], frame_numbers[-1]
    wanted = set(frame_numbers)
    # Seeking to half a frame before the first one lands on it exactly (ffmpeg decodes from the previous keyframe and
    # drops what precedes); passthrough hands over every decoded frame once, so counting them gives frame numbers.
    seek = ["-ss", f"{(first - 0.5) / fps:.6f}"] if first > 0 else []
    reader = imageio_ffmpeg.read_frames(str(path), input_params=seek, output_params=["-fps_mode", "passthrough"])
    try:
        width, height = next(reader)["size"]
        number = first
        for raw in reader:
            if number in wanted:
                yield np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3)
            if number >= last:
                return
            number += 1
        raise ValueError(
            f"{path} ends at frame {number - 1} but frame {last} is needed; the video is truncated or does not "
            "match meta/, download it again"
        )
    finally:
        reader.close()


# ---------------------------------------------------------------------- batching helpers


def _rows(piece: Mapping[str, Any]) -> int:
    return len(piece[PROMPT_KEY])


def _take_rows(pieces: list[dict[str, Any]], count: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Concatenate the first ``count`` rows of ``pieces`` into one batch; return it and the pieces left."""
    taken, left, need = [], [], count
    for piece in pieces:
        if need <= 0:
            left.append(piece)
            continue
        n = _rows(piece)
        if n <= need:
            taken.append(piece)
        else:
            taken.append({key: values[:need] for key, values in piece.items()})
            left.append({key: values[need:] for key, values in piece.items()})
        need -= min(n, need)
    batch = {
        key: [v for piece in taken for v in piece[key]]
        if isinstance(taken[0][key], list)
        else np.concatenate([piece[key] for piece in taken])
        for key in taken[0]
    }
    return batch, left


def _parse_frames(frames: slice | range | str | None) -> slice:
    if frames is None:
        return slice(None)
    if isinstance(frames, slice):
        return frames
    if isinstance(frames, range):
        return slice(frames.start, frames.stop, frames.step)
    if isinstance(frames, str):
        parts = frames.split(":")
        try:
            if len(parts) in (2, 3):
                return slice(*(int(p) if p.strip() else None for p in parts))
        except ValueError:
            pass
    raise ValueError(
        f"frames={frames!r} is not a frame range; use a slice, a range or 'start:stop[:step]' e.g. '0:120'"
    )


def _first_few(paths: Sequence[str], limit: int = 5) -> str:
    shown = ", ".join(paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")
