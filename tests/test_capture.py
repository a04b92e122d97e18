"""Latent capture from a synthetic LeRobot v2.0 dataset against an independent float64 computation of the paper's
definition: T[l, k] = mean over the task's frames of the residual stream entering block l at prompt slot k."""

import jax
import numpy as np
import pytest

import textlatent
from tests import reference as ref
from tests.conftest import LIBERO_OVERRIDES, load_libero_policy
from tests.test_lerobot_data import EPISODES, TASKS, write_v2
from textlatent.checkpoint import model_params
from textlatent.data import LeRobotDataset, libero_observation
from textlatent.latents import TextLatent
from textlatent.latents.capture import LatentCapture, capture_dataset, capture_observations, latent_file_name
from textlatent.latents.latent import LatentFileError


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("lerobot") / "libero"
    write_v2(root)
    return LeRobotDataset.open(root)


@pytest.fixture(scope="module")
def f32_policy(libero_checkpoint, tokenizer_path):
    return textlatent.load_policy(
        "pi0_libero", libero_checkpoint[0], tokenizer=str(tokenizer_path), **{**LIBERO_OVERRIDES, "dtype": "float32"}
    )


@pytest.fixture(scope="module")
def bf16_policy(libero_checkpoint, tokenizer_path):
    return load_libero_policy(libero_checkpoint, tokenizer_path)


def numpy_prompt_states(policy, request) -> np.ndarray:
    """float64 numpy forward of the prefix (SigLIP per camera, scaled embeddings, Gemma layers): the residual stream
    entering every block at the prompt slots, [L, B, S, D]. Shares no code with the model."""
    model, config = policy.model, policy.model.config
    obs, _, _ = policy.prepare(request)
    states, _, _, _ = ref.prefix_forward(jax.tree.map(np.asarray, model_params(model)), config, model.preprocess(obs))
    text = slice(config.text_start, config.text_start + config.max_token_len)
    return np.stack([x[:, text] for x in states])


def selected_frames(dataset, task, episodes, frames):
    selection = dataset.select(tasks=[task], episodes_per_task=episodes, frames=frames)
    return [libero_observation(b) for b in dataset.iter_frames(selection, batch_size=1000)]


def test_captured_latents_equal_the_papers_definition_in_float64(f32_policy, dataset, tmp_path):
    result = capture_dataset(
        f32_policy, dataset, tmp_path, tasks=TASKS[:2], episodes_per_task=2, frames="0:4", batch_size=3, progress=False
    )
    assert set(result.written) == set(TASKS[:2]) and result.frames == 4 + 3 + 4 + 3  # task 0: eps 0, 2; task 1: 1, 5
    for task in TASKS[:2]:
        latent = TextLatent.load(tmp_path / latent_file_name(task))
        requests = selected_frames(dataset, task, 2, "0:4")
        states = np.concatenate([numpy_prompt_states(f32_policy, r) for r in requests], axis=1)  # [L, frames, S, D]
        ids = f32_policy.transforms.tokenizer.encode(task)
        expected = states.mean(axis=1)[:, : len(ids)]
        assert latent.states.shape == expected.shape  # every real prompt token, not a fixed window
        np.testing.assert_allclose(latent.states, expected, rtol=2e-4, atol=2e-4)
        np.testing.assert_array_equal(latent.token_ids, ids)
        assert latent.prompt == task and latent.metadata["frames"] == states.shape[1]
        assert latent.metadata["episodes"] == [e for e, (t, _) in enumerate(EPISODES) if TASKS[t] == task][:2]
        assert latent.metadata["checkpoint_fingerprint"] and latent.metadata["dtype"] == "float32"


def test_bf16_capture_sums_bf16_states_in_float32(bf16_policy, dataset):
    """The paper's arithmetic: bf16 activations, float32 sums, divided by the frame count — here against the model's
    own bf16 states taken one frame at a time and summed in float64."""
    task = TASKS[0]
    requests = selected_frames(dataset, task, 3, "1:5")
    capture = LatentCapture(bf16_policy, batch_size=4, exact_padding=True)  # the full layout, as the paper
    for request in requests:
        capture.add(request)
    latent = capture.latent(task, slots=9)
    model = bf16_policy.model
    total, count = 0.0, 0
    for request in requests:
        obs, _, _ = bf16_policy.prepare(request)
        states = model.prefix_residuals(obs, model.text_positions(np.arange(9)))
        total = total + np.asarray(states, np.float64).sum(axis=1)
        count += obs.state.shape[0]
    np.testing.assert_allclose(latent.states, total / count, rtol=1e-6, atol=1e-6)
    assert latent.states.shape[1] == 9 and latent.metadata["slots"] == 9


def test_capture_is_resumable_after_an_interruption(f32_policy, dataset, tmp_path, monkeypatch):
    kwargs = dict(tasks=[TASKS[0]], episodes_per_task=3, frames="0:3", batch_size=2, progress=False)
    uninterrupted = capture_dataset(f32_policy, dataset, tmp_path / "a", **kwargs)
    calls = {"n": 0}
    original = LeRobotDataset.iter_frames

    def crash_on_third_episode(self, selection, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, selection, **kw)

    monkeypatch.setattr(LeRobotDataset, "iter_frames", crash_on_third_episode)
    with pytest.raises(KeyboardInterrupt):
        capture_dataset(f32_policy, dataset, tmp_path / "b", **kwargs)
    partial = tmp_path / "b" / latent_file_name(TASKS[0]).replace(".safetensors", ".partial.safetensors")
    assert partial.exists() and not (tmp_path / "b" / latent_file_name(TASKS[0])).exists()
    monkeypatch.setattr(LeRobotDataset, "iter_frames", original)
    resumed = capture_dataset(f32_policy, dataset, tmp_path / "b", **kwargs)
    assert resumed.frames == 3  # only the third episode was read again
    a = TextLatent.load(uninterrupted.written[TASKS[0]])
    b = TextLatent.load(resumed.written[TASKS[0]])
    np.testing.assert_array_equal(a.states, b.states)
    assert a.metadata["episodes"] == b.metadata["episodes"] and not partial.exists()
    again = capture_dataset(f32_policy, dataset, tmp_path / "b", **kwargs)
    assert again.skipped == resumed.written and again.frames == 0
    with pytest.raises(LatentFileError, match=r"other settings.*frame_range"):
        capture_dataset(f32_policy, dataset, tmp_path / "b", **{**kwargs, "frames": "0:2"})


def test_live_observations_give_the_same_latent_as_the_dataset(f32_policy, dataset, tmp_path):
    task = TASKS[2]
    from_dataset = capture_dataset(
        f32_policy, dataset, tmp_path, tasks=[task], episodes_per_task=1, frames="0:4", progress=False
    )
    batch = selected_frames(dataset, task, 1, "0:4")[0]
    frames = [{k: v[i] for k, v in batch.items()} for i in range(4)]
    live = capture_observations(f32_policy, frames, batch_size=3)
    np.testing.assert_allclose(
        live[task].states, TextLatent.load(from_dataset.written[task]).states, rtol=1e-6, atol=1e-6
    )


def test_prompts_in_one_batch_are_kept_apart(f32_policy, dataset):
    plate = selected_frames(dataset, TASKS[0], 1, "0:2")[0]
    drawer = selected_frames(dataset, TASKS[1], 1, "0:2")[0]
    mixed = {k: (plate[k] + drawer[k] if k == "prompt" else np.concatenate([plate[k], drawer[k]])) for k in plate}
    together, apart = LatentCapture(f32_policy, batch_size=8), LatentCapture(f32_policy, batch_size=8)
    together.add(mixed)
    apart.add(plate)
    apart.add(drawer)
    for task in TASKS[:2]:
        np.testing.assert_allclose(together.latent(task).states, apart.latent(task).states, rtol=1e-6, atol=1e-6)
        assert together.latent(task).metadata["frames"] == 2


def test_compact_capture_keeps_real_tokens_and_refuses_padding_windows(f32_policy, dataset):
    requests = selected_frames(dataset, TASKS[1], 2, "0:3")
    compact, full = LatentCapture(f32_policy, batch_size=4), LatentCapture(f32_policy, batch_size=4, exact_padding=True)
    for request in requests:
        compact.add(request)
        full.add(request)
    np.testing.assert_allclose(compact.latent(TASKS[1]).states, full.latent(TASKS[1]).states, rtol=1e-5, atol=1e-5)
    longest = f32_policy.model.config.max_token_len
    with pytest.raises(ValueError, match="exact_padding=True"):
        compact.latent(TASKS[1], slots=longest)
    assert full.latent(TASKS[1], slots=longest).num_slots == longest


def test_unknown_tasks_are_named(f32_policy, dataset, tmp_path):
    with pytest.raises(ValueError, match="task index 99 does not exist"):
        capture_dataset(f32_policy, dataset, tmp_path, tasks=[99], progress=False)
    with pytest.raises(ValueError, match="did you mean"):
        capture_dataset(f32_policy, dataset, tmp_path, tasks=["put the bowl on the plat"], progress=False)


def test_capture_with_weights_cut_at_load_equals_the_stacked_weights(
    f32_policy, dataset, libero_checkpoint, tokenizer_path
):
    """On accelerators the policy cuts every layer's weights once at load time and capture passes them in; the
    latents must be the ones the stacked weights give."""
    cut = textlatent.load_policy(
        "pi0_libero",
        libero_checkpoint[0],
        tokenizer=str(tokenizer_path),
        **{**LIBERO_OVERRIDES, "dtype": "float32", "weights_per_layer": True},
    )
    assert cut.layer_weights is not None and f32_policy.layer_weights is None
    batch = selected_frames(dataset, TASKS[0], 1, "0:3")[0]
    frames = [{k: v[i] for k, v in batch.items()} for i in range(3)]
    want = capture_observations(f32_policy, frames)[TASKS[0]].states
    got = capture_observations(cut, frames)[TASKS[0]].states
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
