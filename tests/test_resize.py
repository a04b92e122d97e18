"""The accelerator's resize gives PIL's bytes: against Pillow itself, and against a scalar transcription of Pillow's
fixed-point loops where Pillow versions order the two passes differently."""

import math

import jax
import numpy as np
import pytest
from PIL import Image

from tests.conftest import libero_obs
from textlatent.policy import resize, transforms

SIZES = [
    (256, 256),  # LIBERO's frames
    (480, 640),  # landscape: padded top and bottom
    (180, 320),
    (300, 7),  # tall sliver: the height shrinks much more than the width
    (1000, 3),  # ... down to one column
    (7, 300),
    (100, 50),  # upscaling
    (57, 91),
    (223, 225),
    (225, 224),
    (224, 100),  # no resize, only padding
    (1, 1),
]


def _images(h: int, w: int, batch: int = 2) -> np.ndarray:
    rng = np.random.default_rng(h * 1009 + w)
    noise = rng.integers(0, 256, (batch - 1, h, w, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:h, 0:w]
    smooth = np.stack([(7 * xx + 3 * yy) % 256, (xx * xx + yy) % 256, (5 * yy) % 256], -1).astype(np.uint8)
    return np.concatenate([noise, smooth[None]])


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_device_resize_gives_the_host_resize_bytes(size):
    images = _images(*size)
    expected = transforms.resize_with_pad(images, 224, 224)
    got = np.asarray(resize.resize_on_device(images, 224, 224))
    assert got.dtype == np.uint8 and got.shape == (2, 224, 224, 3)
    np.testing.assert_array_equal(got, expected)
    # Traced inside a larger program, unbatched: the same bytes.
    np.testing.assert_array_equal(np.asarray(jax.jit(lambda x: resize.resize_with_pad(x, 224, 224))(images[0])), got[0])


def test_a_non_square_target_and_images_already_at_size():
    images = _images(90, 70)
    np.testing.assert_array_equal(
        np.asarray(resize.resize_on_device(images, 48, 64)), transforms.resize_with_pad(images, 48, 64)
    )
    at_size = _images(48, 64)
    placed = resize.resize_on_device(at_size, 48, 64)
    np.testing.assert_array_equal(np.asarray(placed), at_size)
    assert placed.sharding == resize.resize_on_device(images, 48, 64).sharding  # placed alike: one compile
    with pytest.raises(TypeError, match="uint8"):
        resize.resize_with_pad(at_size.astype(np.float32), 224, 224)


def test_large_frames_are_resized_without_large_intermediates():
    # The first pass gathers its taps one at a time from the uint8 frames: the program keeps only the uint8 result
    # of that pass, not the frames as int32 (4× the input) nor every tap at once (39 taps for a 4096-pixel side).
    shape = (1, 4096, 4096, 3)
    compiled = resize._jitted_resize_all(224, 224).lower([jax.ShapeDtypeStruct(shape, np.uint8)]).compile()
    analysis = compiled.memory_analysis()
    if analysis is None:
        pytest.skip("this backend reports no memory analysis")
    after_first_pass = 4096 * 224 * 3
    assert analysis.temp_size_in_bytes <= 4 * after_first_pass


def test_cameras_resized_together_equal_each_alone():
    cameras = [_images(90, 70), _images(48, 64), _images(30, 200)]  # the second is at size: only placed
    together = resize.resize_all_on_device(cameras, 48, 64)
    for camera, got in zip(cameras, together, strict=True):
        np.testing.assert_array_equal(np.asarray(got), transforms.resize_with_pad(camera, 48, 64))
    assert len({a.sharding for a in together}) == 1


def _pil_horizontal_first(image: np.ndarray, new_h: int, new_w: int) -> np.ndarray:
    """Pillow's 8-bit two-pass resample written out scalar by scalar (precompute_coeffs, normalize_coeffs_8bpc, the
    horizontal pass, then the vertical one), as Pillow up to 12 runs it. Slow; for small images."""

    def taps(in_size, out_size):
        scale = in_size / out_size
        filterscale = max(scale, 1.0)
        support = filterscale
        rows = []
        for xx in range(out_size):
            center = (xx + 0.5) * scale
            xmin = max(int(center - support + 0.5), 0)
            xmax = min(int(center + support + 0.5), in_size) - xmin
            w = [max(0.0, 1.0 - abs((x + xmin - center + 0.5) * (1.0 / filterscale))) for x in range(xmax)]
            total = 0.0
            for v in w:
                total += v
            k = [v / total if total else v for v in w]
            rows.append((xmin, [math.floor(0.5 + v * (1 << 22)) for v in k]))
        return rows

    def one_pass(lines, out_size):
        out = []
        for line in lines:
            row = []
            for xmin, k in taps(len(line), out_size):
                ss = 1 << 21
                for x, weight in enumerate(k):
                    ss += int(line[xmin + x]) * weight
                row.append(min(255, max(0, ss >> 22)))
            out.append(row)
        return out

    channels = []
    for c in range(image.shape[-1]):
        plane = image[..., c].tolist()
        if new_w != image.shape[1]:
            plane = one_pass(plane, new_w)
        if new_h != image.shape[0]:
            columns = one_pass([list(col) for col in zip(*plane, strict=True)], new_h)
            plane = [list(row) for row in zip(*columns, strict=True)]
        channels.append(plane)
    return np.stack([np.asarray(p, np.uint8) for p in channels], -1)


@pytest.mark.parametrize("size", [(40, 30), (31, 17), (60, 5), (17, 31), (12, 40)])
def test_both_resizes_follow_pillows_fixed_point_loops_horizontal_pass_first(size):
    h, w = size
    image = _images(h, w, batch=2)[0]
    new_h, new_w, top, left = transforms.resized_geometry(h, w, 24, 24)
    expected = np.zeros((24, 24, 3), np.uint8)
    expected[top : top + new_h, left : left + new_w] = _pil_horizontal_first(image, new_h, new_w)
    np.testing.assert_array_equal(transforms.resize_with_pad(image, 24, 24), expected)
    np.testing.assert_array_equal(np.asarray(resize.resize_on_device(image, 24, 24)), expected)


def test_pil_in_one_call_gives_the_same_bytes_wherever_its_pass_order_is_openpis():
    # Pillow 13 runs the vertical pass first only when the height shrinks by more than twice as many pixels as the
    # width; elsewhere (LIBERO's square frames, landscape cameras) one Image.resize call is the reference itself.
    for h, w in [(256, 256), (480, 640), (180, 320), (57, 91), (100, 50), (223, 225)]:
        image = _images(h, w)[0]
        new_h, new_w, top, left = transforms.resized_geometry(h, w, 224, 224)
        assert not (h - new_h > 0 and h - new_h > 2 * (w - new_w))
        expected = np.zeros((224, 224, 3), np.uint8)
        one_call = Image.fromarray(image).resize((new_w, new_h), resample=Image.BILINEAR)
        expected[top : top + new_h, left : left + new_w] = np.asarray(one_call)
        np.testing.assert_array_equal(transforms.resize_with_pad(image, 224, 224), expected)


@pytest.fixture(scope="module")
def policy(libero_checkpoint, tokenizer_path):
    from tests.conftest import load_libero_policy

    return load_libero_policy(libero_checkpoint, tokenizer_path)


def _with_images(obs: dict, base: np.ndarray, wrist: np.ndarray) -> dict:
    return dict(obs, **{transforms.IMAGE_KEY: base, transforms.WRIST_IMAGE_KEY: wrist})


def test_policy_resizes_on_the_accelerator_with_pil_bytes_and_one_model_program(policy):
    from textlatent.policy.policy import _sample_and_advance

    key0, key1 = policy.model.config.image_keys[:2]
    obs = libero_obs(seed=4, size=80)
    inputs = policy.transforms.inputs(obs, resize_images=False)
    assert inputs["image"][key0].shape == (1, 80, 80, 3)  # left at the size it was sent
    assert inputs["image"][policy.model.config.image_keys[2]].shape == (1, 56, 56, 3)  # the masked camera's zeros
    on_device = policy.resize_images(inputs)["image"]
    on_host = policy.transforms.inputs(obs)["image"]
    for key in on_host:
        np.testing.assert_array_equal(np.asarray(on_device[key]), on_host[key])

    # Actions for larger frames are those for the same frames resized by PIL beforehand, bit for bit.
    noise = np.random.default_rng(5).normal(size=(6, 32)).astype(np.float32)
    pre_resized = _with_images(obs, on_host[key0][0], on_host[key1][0])
    np.testing.assert_array_equal(
        policy.infer(obs, noise=noise)["actions"], policy.infer(pre_resized, noise=noise)["actions"]
    )

    # Other camera sizes compile the small resize program, never the model's: its program cache stays as it was.
    sample = policy.jitted(policy.bound(_sample_and_advance), 1, static_argnames=("num_steps",))
    before = sample._cache_size()
    rng = np.random.default_rng(6)
    for shape in [(72, 72, 3), (56, 56, 3), (64, 96, 3), (120, 40, 3)]:
        other = _with_images(
            obs, rng.integers(0, 256, shape, dtype=np.uint8), rng.integers(0, 256, shape, dtype=np.uint8)
        )
        host = policy.transforms.inputs(other)["image"]
        np.testing.assert_array_equal(
            policy.infer(other, noise=noise)["actions"],
            policy.infer(_with_images(other, host[key0][0], host[key1][0]), noise=noise)["actions"],
        )
    assert sample._cache_size() == before


def test_capture_of_larger_frames_equals_capture_of_frames_resized_by_pil(policy):
    from textlatent.latents import LatentCapture

    frames = [libero_obs(seed=s, size=64) for s in range(3)]
    resized = []
    for obs in frames:
        host = policy.transforms.inputs(obs)["image"]
        key0, key1 = policy.model.config.image_keys[:2]
        resized.append(_with_images(obs, host[key0][0], host[key1][0]))
    for exact_padding in (False, True):
        raw = LatentCapture(policy, batch_size=4, exact_padding=exact_padding)
        pre = LatentCapture(policy, batch_size=4, exact_padding=exact_padding)
        for a, b in zip(frames, resized, strict=True):
            raw.add(a)
            pre.add(b)
        (got,) = raw.latents().values()
        (expected,) = pre.latents().values()
        np.testing.assert_array_equal(got.states, expected.states)
