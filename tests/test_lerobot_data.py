"""LeRobot reader against small synthetic datasets written here in the exact v2.0, v2.1 and v3.0 layouts.

The writers keep the arrays they wrote, so every read-back is checked against independently generated values.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import io
import json
import pathlib
import shutil

import huggingface_hub
import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from textlatent.data import EpisodeFrames, LeRobotDataset, frame_at, libero_observation
from textlatent.data import lerobot as lerobot_module

FPS = 10
TASKS = ["put the bowl on the plate", "open the top drawer", "pick up the ketchup"]
# (task index, length) of each episode, in episode order: task 0 has 3 episodes, task 1 two, task 2 one.
EPISODES = [(0, 4), (1, 5), (0, 3), (2, 4), (0, 6), (1, 3)]
V2_IMAGE_SHAPE = (6, 10, 3)  # height != width, so swapped axes show
V3_IMAGE_SHAPE = (48, 64, 3)  # multiples of 16, as h264 wants
V2_IMAGE_KEYS = ("image", "wrist_image")
V3_VIDEO_KEYS = ("observation.images.image", "observation.images.image2")
# A v3 video file holds this many episodes back to back, per key: the two cameras split episodes differently.
V3_EPISODES_PER_VIDEO = {"observation.images.image": 4, "observation.images.image2": 6}
V3_EPISODES_PER_DATA_FILE = 2
VIDEO_MEAN_ABS_TOLERANCE = 6  # h264 error on flat blocks is ~1 level; a frame off by one is >= 12 off


@dataclasses.dataclass
class Synthetic:
    root: pathlib.Path
    frames: dict[int, dict[str, np.ndarray]]  # episode index -> key -> values of all its frames


def _scalar_features() -> dict:
    return {
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        "frame_index": {"dtype": "int64", "shape": [1], "names": None},
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
        "index": {"dtype": "int64", "shape": [1], "names": None},
        "task_index": {"dtype": "int64", "shape": [1], "names": None},
    }


def _vector_array(values: np.ndarray, vector_type: str) -> pa.Array:
    if vector_type == "fixed_size_list":
        return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), pa.float32()), values.shape[1])
    return pa.array(values.tolist(), pa.list_(pa.float32()))


def _frame_columns(episode_index: int, length: int, task_index: int, first_global_index: int) -> dict[str, pa.Array]:
    return {
        "timestamp": pa.array(np.arange(length, dtype=np.float32) / FPS),
        "frame_index": pa.array(np.arange(length, dtype=np.int64)),
        "episode_index": pa.array(np.full(length, episode_index, dtype=np.int64)),
        "index": pa.array(np.arange(first_global_index, first_global_index + length, dtype=np.int64)),
        "task_index": pa.array(np.full(length, task_index, dtype=np.int64)),
    }


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _write_jsonl(path: pathlib.Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def write_v2(
    root: pathlib.Path, version: str = "v2.0", vector_type: str = "list", chunks_size: int = 2, seed: int = 0
) -> Synthetic:
    """physical-intelligence/libero's layout: PNG structs inside one parquet per episode, chunked by chunks_size."""
    rng = np.random.default_rng(seed)
    (root / "meta").mkdir(parents=True)
    data_path = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
    image_feature = {"dtype": "image", "shape": list(V2_IMAGE_SHAPE), "names": ["height", "width", "channel"]}
    info = {
        "codebase_version": version,
        "robot_type": "panda",
        "total_episodes": len(EPISODES),
        "total_frames": sum(length for _, length in EPISODES),
        "total_tasks": len(TASKS),
        "total_videos": 0,
        "total_chunks": -(-len(EPISODES) // chunks_size),
        "chunks_size": chunks_size,
        "fps": FPS,
        "splits": {"train": f"0:{len(EPISODES)}"},
        "data_path": data_path,
        "video_path": None,
        "features": {
            "image": image_feature,
            "wrist_image": image_feature,
            "state": {"dtype": "float32", "shape": [8], "names": ["state"]},
            "actions": {"dtype": "float32", "shape": [7], "names": ["actions"]},
            **_scalar_features(),
        },
    }
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    _write_jsonl(root / "meta" / "tasks.jsonl", [{"task_index": i, "task": t} for i, t in enumerate(TASKS)])
    _write_jsonl(
        root / "meta" / "episodes.jsonl",
        [{"episode_index": e, "tasks": [TASKS[t]], "length": n} for e, (t, n) in enumerate(EPISODES)],
    )
    if version == "v2.0":
        (root / "meta" / "stats.json").write_text(json.dumps({"state": {"mean": [0.0] * 8}}))
    else:
        _write_jsonl(
            root / "meta" / "episodes_stats.jsonl",
            [{"episode_index": e, "stats": {"state": {"mean": [0.0] * 8}}} for e in range(len(EPISODES))],
        )

    frames, global_index = {}, 0
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    for episode_index, (task_index, length) in enumerate(EPISODES):
        values = {
            "image": rng.integers(0, 256, (length, *V2_IMAGE_SHAPE), dtype=np.uint8),
            "wrist_image": rng.integers(0, 256, (length, *V2_IMAGE_SHAPE), dtype=np.uint8),
            "state": rng.normal(size=(length, 8)).astype(np.float32),
            "actions": rng.normal(size=(length, 7)).astype(np.float32),
        }
        columns = {
            key: pa.array(
                [{"bytes": _png(im), "path": f"frame_{i:06d}.png"} for i, im in enumerate(values[key])], image_type
            )
            for key in V2_IMAGE_KEYS
        }
        columns["state"] = _vector_array(values["state"], vector_type)
        columns["actions"] = _vector_array(values["actions"], vector_type)
        columns.update(_frame_columns(episode_index, length, task_index, global_index))
        path = root / data_path.format(episode_chunk=episode_index // chunks_size, episode_index=episode_index)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(columns), path)
        values.update(
            {key: np.asarray(array) for key, array in _frame_columns(episode_index, length, task_index, 0).items()}
        )
        frames[episode_index] = values
        global_index += length
    return Synthetic(root, frames)


def _video_frame(key: str, episode_index: int, frame_index: int) -> np.ndarray:
    """Flat grey blocks that survive lossy coding: the top half tells the episode, the bottom half the frame."""
    image = np.empty(V3_IMAGE_SHAPE, dtype=np.uint8)
    top, bottom = 30 + 50 * (episode_index % 4), 16 + 24 * frame_index
    if key == V3_VIDEO_KEYS[1]:  # the second camera is the negative, so swapped cameras show
        top, bottom = 255 - top, 255 - bottom
    image[: V3_IMAGE_SHAPE[0] // 2] = top
    image[V3_IMAGE_SHAPE[0] // 2 :] = bottom
    return image


def write_v3(root: pathlib.Path, vector_type: str = "list", chunks_size: int = 2, seed: int = 0) -> Synthetic:
    """HuggingFaceVLA/libero's layout: several episodes per data parquet and per mp4, located by meta/episodes."""
    rng = np.random.default_rng(seed)
    (root / "meta").mkdir(parents=True)
    data_path = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    video_path = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    video_feature = {
        "dtype": "video",
        "shape": list(V3_IMAGE_SHAPE),
        "names": ["height", "width", "channels"],
        "info": {"video.fps": FPS, "video.codec": "h264", "video.pix_fmt": "yuv420p"},
    }
    info = {
        "codebase_version": "v3.0",
        "robot_type": "panda",
        "total_episodes": len(EPISODES),
        "total_frames": sum(length for _, length in EPISODES),
        "total_tasks": len(TASKS),
        "chunks_size": chunks_size,
        "data_files_size_in_mb": 100,
        "video_files_size_in_mb": 200,
        "fps": FPS,
        "splits": {"train": f"0:{len(EPISODES)}"},
        "data_path": data_path,
        "video_path": video_path,
        "features": {
            V3_VIDEO_KEYS[0]: video_feature,
            V3_VIDEO_KEYS[1]: video_feature,
            "observation.state": {"dtype": "float32", "shape": [8], "names": None},
            "action": {"dtype": "float32", "shape": [7], "names": None},
            **_scalar_features(),
        },
    }
    (root / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    pq.write_table(
        pa.table({"task_index": pa.array(range(len(TASKS)), pa.int64()), "task": TASKS}), root / "meta/tasks.parquet"
    )

    def file_of(number: int) -> tuple[int, int]:  # lerobot numbers files within chunks of chunks_size
        return number // chunks_size, number % chunks_size

    frames, episode_rows, data_tables, video_frames = {}, [], {}, {key: {} for key in V3_VIDEO_KEYS}
    global_index = 0
    video_time = {key: {} for key in V3_VIDEO_KEYS}
    for episode_index, (task_index, length) in enumerate(EPISODES):
        values = {
            "observation.state": rng.normal(size=(length, 8)).astype(np.float32),
            "action": rng.normal(size=(length, 7)).astype(np.float32),
            **{key: np.stack([_video_frame(key, episode_index, i) for i in range(length)]) for key in V3_VIDEO_KEYS},
        }
        data_file = file_of(episode_index // V3_EPISODES_PER_DATA_FILE)
        columns = {
            "observation.state": _vector_array(values["observation.state"], vector_type),
            "action": _vector_array(values["action"], vector_type),
            **_frame_columns(episode_index, length, task_index, global_index),
        }
        data_tables.setdefault(data_file, []).append(pa.table(columns))
        row = {
            "episode_index": episode_index,
            "tasks": [TASKS[task_index]],
            "length": length,
            "data/chunk_index": data_file[0],
            "data/file_index": data_file[1],
            "dataset_from_index": global_index,
            "dataset_to_index": global_index + length,
        }
        for key in V3_VIDEO_KEYS:
            video_file = file_of(episode_index // V3_EPISODES_PER_VIDEO[key])
            start = video_time[key].get(video_file, 0.0)
            video_frames[key].setdefault(video_file, []).append(values[key])
            video_time[key][video_file] = start + length / FPS
            row |= {
                f"videos/{key}/chunk_index": video_file[0],
                f"videos/{key}/file_index": video_file[1],
                f"videos/{key}/from_timestamp": start,
                f"videos/{key}/to_timestamp": start + length / FPS,
            }
        row |= {"meta/episodes/chunk_index": 0, "meta/episodes/file_index": episode_index // 4}
        row["stats/observation.state/mean"] = [0.0] * 8
        episode_rows.append(row)
        values.update(
            {key: np.asarray(array) for key, array in _frame_columns(episode_index, length, task_index, 0).items()}
        )
        frames[episode_index] = values
        global_index += length

    for (chunk, file), tables in data_tables.items():
        path = root / data_path.format(chunk_index=chunk, file_index=file)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.concat_tables(tables), path, row_group_size=3)  # small row groups: filters must cross them
    for key, files in video_frames.items():
        for (chunk, file), clips in files.items():
            path = root / video_path.format(video_key=key, chunk_index=chunk, file_index=file)
            path.parent.mkdir(parents=True, exist_ok=True)
            iio.imwrite(path, np.concatenate(clips), plugin="FFMPEG", fps=FPS, codec="libx264")
    for file in (0, 1):  # meta/episodes split over two files, as lerobot does once one fills up
        rows = [row for row in episode_rows if row["meta/episodes/file_index"] == file]
        path = root / f"meta/episodes/chunk-000/file-{file:03d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(rows), path)
    return Synthetic(root, frames)


def read_all(ds: LeRobotDataset, selection: list[EpisodeFrames], **kwargs) -> tuple[list[dict], dict]:
    batches = list(ds.iter_frames(selection, **kwargs))
    merged = {
        key: [prompt for b in batches for prompt in b[key]]
        if key == "prompt"
        else np.concatenate([b[key] for b in batches])
        for key in batches[0]
    }
    return batches, merged


def expected_rows(synthetic: Synthetic, selection: list[EpisodeFrames], key: str) -> np.ndarray:
    return np.concatenate([synthetic.frames[e][key][list(frames)] for e, frames in selection])


# ---------------------------------------------------------------------- v2


@pytest.mark.parametrize("version", ["v2.0", "v2.1"])
@pytest.mark.parametrize("vector_type", ["list", "fixed_size_list"])
def test_v2_reads_back_what_was_written(tmp_path, version, vector_type):
    synthetic = write_v2(tmp_path / "ds", version=version, vector_type=vector_type)
    state_type = pq.read_schema(synthetic.root / "data/chunk-002/episode_000005.parquet").field("state").type
    assert pa.types.is_fixed_size_list(state_type) == (vector_type == "fixed_size_list")

    ds = LeRobotDataset.open(synthetic.root)
    assert (ds.version, ds.fps) == (version, FPS)
    assert ds.tasks == dict(enumerate(TASKS))
    assert [(ep.index, ep.tasks, ep.length) for ep in ds.episodes] == [
        (e, (TASKS[t],), n) for e, (t, n) in enumerate(EPISODES)
    ]
    assert ds.image_keys == list(V2_IMAGE_KEYS) and ds.video_keys == []

    selection = ds.select()
    assert selection == [EpisodeFrames(e, range(n)) for e, (_, n) in enumerate(EPISODES)]
    _, merged = read_all(ds, selection, batch_size=4)
    for key in ("image", "wrist_image", "state", "actions", "frame_index", "episode_index", "task_index"):
        np.testing.assert_array_equal(merged[key], expected_rows(synthetic, selection, key), err_msg=key)
    assert merged["image"].dtype == np.uint8 and merged["image"].shape[1:] == V2_IMAGE_SHAPE
    assert merged["state"].dtype == np.float32 and merged["state"].shape[1:] == (8,)
    assert merged["task_index"].dtype == np.int64
    np.testing.assert_allclose(merged["timestamp"], merged["frame_index"] / FPS, rtol=1e-6)
    assert merged["prompt"] == [TASKS[t] for t in merged["task_index"]]


def test_select_first_k_episodes_per_task_in_dataset_order(tmp_path):
    ds = LeRobotDataset.open(write_v2(tmp_path / "ds").root)
    assert [s.episode_index for s in ds.select(tasks=[TASKS[0]], episodes_per_task=2)] == [0, 2]
    assert [s.episode_index for s in ds.select(tasks=[TASKS[0]])] == [0, 2, 4]
    # Task indices work like task strings; the result stays in dataset order whatever order the tasks come in.
    assert [s.episode_index for s in ds.select(tasks=[1, TASKS[0]], episodes_per_task=1)] == [0, 1]
    assert [s.episode_index for s in ds.select(tasks=TASKS[1])] == [1, 5]  # a lone string is one task
    assert [s.episode_index for s in ds.select(episodes_per_task=1)] == [0, 1, 3]


def test_frame_ranges_are_clipped_to_each_episode(tmp_path):
    synthetic = write_v2(tmp_path / "ds")
    ds = LeRobotDataset.open(synthetic.root)
    selection = ds.select(tasks=[TASKS[0]], frames=slice(2, 1000))
    assert selection == [EpisodeFrames(0, range(2, 4)), EpisodeFrames(2, range(2, 3)), EpisodeFrames(4, range(2, 6))]
    assert ds.select(tasks=[TASKS[0]], frames="1:5:2") == [
        EpisodeFrames(0, range(1, 4, 2)),
        EpisodeFrames(2, range(1, 3, 2)),
        EpisodeFrames(4, range(1, 5, 2)),
    ]
    # An episode the range misses entirely (episode 2 has 3 frames) is dropped.
    assert [s.episode_index for s in ds.select(tasks=[TASKS[0]], frames=range(3, 5))] == [0, 4]

    selection = ds.select(tasks=[TASKS[0]], frames="1:5:2")
    _, merged = read_all(ds, selection, batch_size=2)
    np.testing.assert_array_equal(merged["frame_index"], [1, 3, 1, 1, 3])
    np.testing.assert_array_equal(merged["episode_index"], [0, 0, 2, 4, 4])
    for key in ("image", "state"):
        np.testing.assert_array_equal(merged[key], expected_rows(synthetic, selection, key))


def test_batches_run_across_episode_boundaries(tmp_path):
    synthetic = write_v2(tmp_path / "ds")
    ds = LeRobotDataset.open(synthetic.root)
    selection = ds.select(tasks=[TASKS[1]])  # episodes 1 (5 frames) and 5 (3 frames)
    batches, merged = read_all(ds, selection, batch_size=3)
    assert [len(b["prompt"]) for b in batches] == [3, 3, 2]
    assert all(len(b[key]) == len(b["prompt"]) for b in batches for key in b)
    np.testing.assert_array_equal(batches[1]["episode_index"], [1, 1, 5])
    np.testing.assert_array_equal(batches[1]["frame_index"], [3, 4, 0])
    np.testing.assert_array_equal(merged["wrist_image"], expected_rows(synthetic, selection, "wrist_image"))
    assert merged["prompt"] == [TASKS[1]] * 8

    (single,) = list(ds.iter_frames(selection, batch_size=100))
    assert len(single["prompt"]) == 8


def test_only_selected_frames_and_keys_are_decoded(tmp_path, monkeypatch):
    ds = LeRobotDataset.open(write_v2(tmp_path / "ds").root)
    decoded = []
    real_decode = lerobot_module._decode_png
    monkeypatch.setattr(lerobot_module, "_decode_png", lambda data: decoded.append(1) or real_decode(data))

    list(ds.iter_frames(ds.select(tasks=[TASKS[0]], frames=slice(1, 3)), batch_size=8))
    assert len(decoded) == 2 * 6  # two image keys, frames 1 and 2 of episodes 0, 2 and 4

    decoded.clear()
    (batch,) = list(ds.iter_frames(ds.select(tasks=[TASKS[0]]), batch_size=100, keys=["state"]))
    assert decoded == []
    assert set(batch) == {"state", "episode_index", "frame_index", "task_index", "prompt"}


def test_libero_observation_maps_v2_keys(tmp_path):
    synthetic = write_v2(tmp_path / "ds")
    ds = LeRobotDataset.open(synthetic.root)
    (batch,) = list(ds.iter_frames(ds.select(tasks=[TASKS[2]]), batch_size=10))
    observation = libero_observation(batch)
    assert set(observation) == {"observation/image", "observation/wrist_image", "observation/state", "prompt"}
    np.testing.assert_array_equal(observation["observation/image"], synthetic.frames[3]["image"])
    np.testing.assert_array_equal(observation["observation/wrist_image"], synthetic.frames[3]["wrist_image"])
    np.testing.assert_array_equal(observation["observation/state"], synthetic.frames[3]["state"])
    assert observation["prompt"] == [TASKS[2]] * 4

    one = libero_observation(frame_at(batch, 1))
    np.testing.assert_array_equal(one["observation/image"], synthetic.frames[3]["image"][1])
    assert one["prompt"] == TASKS[2]

    swapped = libero_observation(batch, key_map={"observation/image": "wrist_image"})
    np.testing.assert_array_equal(swapped["observation/image"], synthetic.frames[3]["wrist_image"])
    with pytest.raises(KeyError, match="key_map"):
        libero_observation({k: v for k, v in batch.items() if k != "wrist_image"})


# ---------------------------------------------------------------------- v3


@pytest.fixture(scope="module")
def v3_dataset(tmp_path_factory) -> Synthetic:
    return write_v3(tmp_path_factory.mktemp("v3") / "ds")


def assert_video_frames_match(decoded: np.ndarray, expected: np.ndarray) -> None:
    assert decoded.dtype == np.uint8 and decoded.shape == expected.shape
    errors = np.abs(decoded.astype(np.int16) - expected.astype(np.int16)).mean(axis=(1, 2, 3))
    assert errors.max() < VIDEO_MEAN_ABS_TOLERANCE, errors


def test_v3_reads_back_what_was_written(v3_dataset):
    ds = LeRobotDataset.open(v3_dataset.root)
    assert (ds.version, ds.fps) == ("v3.0", FPS)
    assert ds.tasks == dict(enumerate(TASKS))
    assert [(ep.index, ep.tasks, ep.length) for ep in ds.episodes] == [
        (e, (TASKS[t],), n) for e, (t, n) in enumerate(EPISODES)
    ]
    assert ds.video_keys == list(V3_VIDEO_KEYS) and ds.image_keys == []
    # Episode 5 lies in the second file of the second chunk of data, and in the second file of the first camera.
    assert ds.episodes[5].data_path == "data/chunk-001/file-000.parquet"
    assert ds.episodes[5].videos[V3_VIDEO_KEYS[0]].path.endswith("chunk-000/file-001.mp4")

    selection = ds.select()
    _, merged = read_all(ds, selection, batch_size=5)
    for key in ("observation.state", "action", "frame_index", "episode_index", "task_index"):
        np.testing.assert_array_equal(merged[key], expected_rows(v3_dataset, selection, key), err_msg=key)
    for key in V3_VIDEO_KEYS:
        assert_video_frames_match(merged[key], expected_rows(v3_dataset, selection, key))
    assert merged["prompt"] == [TASKS[t] for t in merged["task_index"]]


def test_v3_frames_from_the_middle_of_a_video_file(v3_dataset, monkeypatch):
    """Episode 4 starts 1.6 s into camera 2's file; frames 2..4 must be those, read no further than frame 4."""
    pulled, seeks = [], []
    real_read_frames = imageio_ffmpeg.read_frames

    def counting_read_frames(path, **kwargs):
        seeks.append(kwargs.get("input_params"))
        for item in real_read_frames(path, **kwargs):
            pulled.append(path)
            yield item

    monkeypatch.setattr(imageio_ffmpeg, "read_frames", counting_read_frames)
    ds = LeRobotDataset.open(v3_dataset.root)
    selection = ds.select(tasks=[TASKS[0]], frames=slice(2, 5))
    assert selection[-1] == EpisodeFrames(4, range(2, 5))
    selection = selection[-1:]
    (batch,) = list(ds.iter_frames(selection, batch_size=8))
    for key in V3_VIDEO_KEYS:
        assert_video_frames_match(batch[key], expected_rows(v3_dataset, selection, key))
    np.testing.assert_array_equal(batch["observation.state"], v3_dataset.frames[4]["observation.state"][2:5])
    assert len(pulled) == 2 * (1 + 3)  # per camera: the metadata item, then exactly the three frames
    assert all(params and params[0] == "-ss" for params in seeks)

    # Drained to the end, the frame reader still stops at the last frame asked for...
    video = v3_dataset.root / ds.episodes[4].videos[V3_VIDEO_KEYS[1]].path
    pulled.clear()
    frames = list(lerobot_module._read_video_frames(video, [17, 19], FPS))
    assert len(frames) == 2 and len(pulled) == 1 + 3
    assert_video_frames_match(np.stack(frames), v3_dataset.frames[4][V3_VIDEO_KEYS[1]][[1, 3]])
    # ...and says so when the file ends before it.
    total_frames = sum(length for _, length in EPISODES)
    with pytest.raises(ValueError, match=f"ends at frame {total_frames - 1} but frame {total_frames + 1} is needed"):
        list(lerobot_module._read_video_frames(video, [total_frames - 2, total_frames + 1], FPS))


@pytest.mark.parametrize("vector_type", ["list", "fixed_size_list"])
def test_v3_vector_column_types(tmp_path, vector_type):
    synthetic = write_v3(tmp_path / "ds", vector_type=vector_type)
    action_type = pq.read_schema(synthetic.root / "data/chunk-000/file-000.parquet").field("action").type
    assert pa.types.is_fixed_size_list(action_type) == (vector_type == "fixed_size_list")
    ds = LeRobotDataset.open(synthetic.root)
    selection = ds.select(tasks=[TASKS[1]])
    _, merged = read_all(ds, selection, batch_size=3, keys=["action", "observation.state"])
    np.testing.assert_array_equal(merged["action"], expected_rows(synthetic, selection, "action"))
    np.testing.assert_array_equal(merged["observation.state"], expected_rows(synthetic, selection, "observation.state"))
    assert not set(V3_VIDEO_KEYS) & set(merged)


def test_v3_tasks_parquet_with_an_unnamed_pandas_index(tmp_path):
    synthetic = write_v3(tmp_path / "ds")
    table = pa.table({"task_index": pa.array(range(len(TASKS)), pa.int64()), "__index_level_0__": TASKS[::-1]})
    pandas_meta = {"index_columns": ["__index_level_0__"], "columns": []}
    pq.write_table(
        table.replace_schema_metadata({"pandas": json.dumps(pandas_meta)}), synthetic.root / "meta/tasks.parquet"
    )
    assert LeRobotDataset.open(synthetic.root).tasks == dict(enumerate(TASKS[::-1]))


def test_libero_observation_maps_v3_keys(v3_dataset):
    ds = LeRobotDataset.open(v3_dataset.root)
    (batch,) = list(ds.iter_frames(ds.select(tasks=[TASKS[2]]), batch_size=10))
    observation = libero_observation(batch)
    assert observation["observation/image"] is batch[V3_VIDEO_KEYS[0]]
    assert observation["observation/wrist_image"] is batch[V3_VIDEO_KEYS[1]]
    np.testing.assert_array_equal(observation["observation/state"], v3_dataset.frames[3]["observation.state"])
    assert observation["prompt"] == [TASKS[2]] * 4


# ---------------------------------------------------------------------- hf://


def test_hub_dataset_downloads_meta_then_only_the_needed_files(v3_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("TEXTLATENT_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake_snapshot_download(repo_id, *, repo_type, revision, local_dir, allow_patterns, **kwargs):
        calls.append({"repo_id": repo_id, "repo_type": repo_type, "revision": revision, "patterns": allow_patterns})
        for file in v3_dataset.root.rglob("*"):
            relative = file.relative_to(v3_dataset.root).as_posix()
            if file.is_file() and any(fnmatch.fnmatch(relative, pattern) for pattern in allow_patterns):
                target = pathlib.Path(local_dir) / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(file, target)
        return str(local_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    ds = LeRobotDataset.open("hf://datasets/someone/libero@v3.0")
    assert calls == [
        {"repo_id": "someone/libero", "repo_type": "dataset", "revision": "v3.0", "patterns": ["meta", "meta/**"]}
    ]
    assert ds.root == tmp_path / "cache/hf/dataset/someone/libero/v3.0"
    assert not (ds.root / "data").exists() and not (ds.root / "videos").exists()

    selection = ds.select(tasks=[TASKS[1]], episodes_per_task=1, frames="0:3")  # episode 1 only
    _, merged = read_all(ds, selection, batch_size=2)
    assert sorted(calls[1]["patterns"]) == [
        "data/chunk-000/file-000.parquet",
        "videos/observation.images.image/chunk-000/file-000.mp4",
        "videos/observation.images.image2/chunk-000/file-000.mp4",
    ]
    np.testing.assert_array_equal(merged["action"], v3_dataset.frames[1]["action"][:3])
    assert_video_frames_match(merged[V3_VIDEO_KEYS[0]], v3_dataset.frames[1][V3_VIDEO_KEYS[0]][:3])

    # Reading state only needs no video; what is cached is not fetched again.
    list(LeRobotDataset.open("hf://datasets/someone/libero@v3.0").iter_frames(selection, keys=["action"]))
    assert len(calls) == 2
    list(ds.iter_frames(ds.select(episodes_per_task=1), keys=["action"]))
    assert calls[2]["patterns"] == ["data/chunk-000/file-001.parquet"]  # episode 3; episodes 0, 1 share a cached file


def test_hub_repository_lacking_a_file_meta_names(v3_dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("TEXTLATENT_CACHE", str(tmp_path / "cache"))

    def meta_only_snapshot_download(repo_id, *, local_dir, allow_patterns, **kwargs):
        if allow_patterns[0] == "meta":  # the repository has meta/ and nothing else
            shutil.copytree(v3_dataset.root / "meta", pathlib.Path(local_dir) / "meta", dirs_exist_ok=True)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", meta_only_snapshot_download)
    ds = LeRobotDataset.open("hf://someone/libero")  # "datasets/" may be left out: LeRobot data are datasets
    assert ds.root == tmp_path / "cache/hf/dataset/someone/libero/main"
    with pytest.raises(
        FileNotFoundError, match=r"hf://datasets/someone/libero has no data/chunk-000/file-000\.parquet"
    ):
        list(ds.iter_frames(ds.select(tasks=[TASKS[0]], episodes_per_task=1), keys=["action"]))


def test_hub_url_must_name_one_dataset_repository():
    with pytest.raises(ValueError, match=r"hf://datasets/owner/name"):
        LeRobotDataset.open("hf://datasets/someone")
    with pytest.raises(ValueError, match=r"hf://datasets/owner/name"):
        LeRobotDataset.open("s3://bucket/libero")


# ---------------------------------------------------------------------- user mistakes


def test_missing_info_json_names_the_file_and_the_fix(tmp_path):
    write_v2(tmp_path / "outer" / "ds")
    with pytest.raises(FileNotFoundError, match=r"meta/info\.json is missing; did you mean .*outer/ds"):
        LeRobotDataset.open(tmp_path / "outer")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LeRobotDataset.open(tmp_path / "nowhere")


def test_unsupported_codebase_version(tmp_path):
    synthetic = write_v2(tmp_path / "ds")
    info_path = synthetic.root / "meta/info.json"
    info_path.write_text(json.dumps({**json.loads(info_path.read_text()), "codebase_version": "v1.6"}))
    with pytest.raises(ValueError, match=r"'v1\.6' is not supported; this reader handles v2\.0, v2\.1, v3\.0"):
        LeRobotDataset.open(synthetic.root)


def test_unknown_tasks_list_close_matches(tmp_path):
    ds = LeRobotDataset.open(write_v2(tmp_path / "ds").root)
    with pytest.raises(
        ValueError, match=r"unknown task 'put the bowl on plate'.*did you mean 'put the bowl on the plate'"
    ):
        ds.select(tasks=["put the bowl on plate"])
    with pytest.raises(ValueError, match=r"see \.tasks"):
        ds.select(tasks=["fly to the moon"])
    with pytest.raises(ValueError, match=r"task index 7 does not exist.*0\.\.2"):
        ds.select(tasks=[7])


def test_too_many_episodes_per_task_says_how_many_exist(tmp_path):
    ds = LeRobotDataset.open(write_v2(tmp_path / "ds").root)
    with pytest.raises(ValueError, match=r"'open the top drawer' has only 2 episode\(s\).*at most 2"):
        ds.select(tasks=[TASKS[1]], episodes_per_task=3)
    with pytest.raises(ValueError, match=r"'pick up the ketchup' has only 1 episode"):
        ds.select(episodes_per_task=2)  # every task, and task 2 has a single episode


def test_bad_frame_ranges_keys_and_batch_sizes(tmp_path):
    ds = LeRobotDataset.open(write_v2(tmp_path / "ds").root)
    with pytest.raises(ValueError, match="selects no frame: the chosen episodes are 3 to 6 frames long"):
        ds.select(tasks=[TASKS[0]], frames=slice(50, 60))
    with pytest.raises(ValueError, match="'start:stop"):
        ds.select(frames="first ten")
    with pytest.raises(ValueError, match=r"unknown feature key\(s\) \['observation.state'\]; this dataset has"):
        list(ds.iter_frames(ds.select(), keys=["observation.state"]))
    with pytest.raises(ValueError, match="batch_size"):
        list(ds.iter_frames(ds.select(), batch_size=0))
    with pytest.raises(ValueError, match="episode 42 does not exist"):
        list(ds.iter_frames([EpisodeFrames(42, range(3))]))


def test_missing_parquet_and_video_files_are_named(tmp_path):
    v2 = write_v2(tmp_path / "v2")
    (v2.root / "data/chunk-001/episode_000002.parquet").unlink()
    ds = LeRobotDataset.open(v2.root)
    list(ds.iter_frames(ds.select(tasks=[TASKS[1]])))  # episodes 1 and 5 are whole
    with pytest.raises(
        FileNotFoundError, match=r"missing: data/chunk-001/episode_000002\.parquet.*download the dataset"
    ):
        list(ds.iter_frames(ds.select(tasks=[TASKS[0]])))

    v3 = write_v3(tmp_path / "v3")
    (v3.root / "videos/observation.images.image/chunk-000/file-001.mp4").unlink()
    ds = LeRobotDataset.open(v3.root)
    list(ds.iter_frames(ds.select(tasks=[TASKS[2]])))  # episode 3 is in the first file
    with pytest.raises(FileNotFoundError, match=r"videos/observation\.images\.image/chunk-000/file-001\.mp4"):
        list(ds.iter_frames(ds.select(tasks=[TASKS[1]])))  # episode 5 is in the second
    list(ds.iter_frames(ds.select(tasks=[TASKS[1]]), keys=["action"]))  # and reading no video needs no mp4


def test_v3_missing_meta_files_are_named(tmp_path):
    synthetic = write_v3(tmp_path / "ds")
    shutil.rmtree(synthetic.root / "meta/episodes")
    with pytest.raises(FileNotFoundError, match=r"meta/episodes holds no chunk-\*/file-\*\.parquet"):
        LeRobotDataset.open(synthetic.root)
    (synthetic.root / "meta/tasks.parquet").unlink()
    with pytest.raises(FileNotFoundError, match=r"meta/tasks\.parquet is missing"):
        LeRobotDataset.open(synthetic.root)
