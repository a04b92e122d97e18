"""LIBERO request → model inputs and model outputs → LIBERO actions, with openpi's arithmetic and dtypes.

Inputs: images to uint8 HWC (padded third camera, masked), state z-scored in float64 and zero-padded, prompt
tokenized. Outputs: z-score undone with std padded by 1 and mean by 0, delta dims made absolute with the
*round-tripped* state (float32 normalized state, unnormalized in float64) exactly as openpi, sliced to the robot dims.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import os

import numpy as np
from PIL import Image

from textlatent.checkpoint.norm_stats import NormStats
from textlatent.tokenizer import PaligemmaTokenizer

IMAGE_KEY = "observation/image"
WRIST_IMAGE_KEY = "observation/wrist_image"
STATE_KEY = "observation/state"
PROMPT_KEY = "prompt"
REQUIRED_KEYS = (IMAGE_KEY, WRIST_IMAGE_KEY, STATE_KEY)
MAX_IMAGE_SIDE = 4096


class ObservationError(ValueError):
    """A request that cannot be turned into model inputs; the message names the field and the fix."""


def as_array(name: str, value) -> np.ndarray:
    """``np.asarray`` for request fields: ragged lists, dicts and other non-arrays are the caller's error."""
    if isinstance(value, dict | str | bytes) or value is None:
        raise ObservationError(f"{name} must be an array, got {type(value).__name__}")
    try:
        array = np.asarray(value)
    except (ValueError, TypeError, OverflowError) as exc:
        raise ObservationError(f"{name} must be a rectangular numeric array: {exc}") from exc
    if array.dtype == object:
        raise ObservationError(f"{name} must be a numeric array, got elements of mixed or non-numeric types")
    return array


def _parse_image(name: str, image, batched: bool) -> np.ndarray:
    image = as_array(name, image)
    if image.dtype == object or not (np.issubdtype(image.dtype, np.number) or image.dtype == bool):
        raise ObservationError(f"{name} must be a numeric image array, got dtype {image.dtype}")
    want_ndim = 4 if batched else 3
    if image.ndim != want_ndim:
        layout = "[batch, H, W, 3]" if batched else "[H, W, 3]"
        raise ObservationError(f"{name} must have shape {layout} (uint8) or channels-first; got shape {image.shape}")
    if np.issubdtype(image.dtype, np.floating):
        if not np.all(np.isfinite(image)):
            raise ObservationError(f"{name} contains NaN or inf")
        # openpi: float images are in [0, 1] and truncated to uint8.
        image = (255 * image).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ObservationError(f"{name} must be uint8 (0-255) or float in [0, 1], got {image.dtype}")
    channel_axis = 1 if batched else 0
    if image.shape[channel_axis] == 3 and image.shape[-1] != 3:
        image = np.moveaxis(image, channel_axis, -1)
    if image.shape[-1] != 3:
        raise ObservationError(f"{name} must have 3 colour channels (RGB), got shape {image.shape}")
    if min(image.shape[-3:-1]) < 1:
        raise ObservationError(f"{name} is empty: shape {image.shape}")
    if max(image.shape[-3:-1]) > MAX_IMAGE_SIDE:
        raise ObservationError(
            f"{name} is {image.shape[-3]}×{image.shape[-2]} pixels; the limit is {MAX_IMAGE_SIDE} per side"
        )
    return image


def resize_with_pad(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """openpi-client's PIL resize (bilinear, aspect kept, black padding) for uint8 [..., h, w, 3]; no-op at size.
    Batches are resized on a few threads (PIL releases the GIL while it resizes); each image is computed the same."""
    return resize_all_with_pad([images], height, width)[0]


def resize_all_with_pad(arrays: list[np.ndarray], height: int, width: int) -> list[np.ndarray]:
    """``resize_with_pad`` of several cameras' arrays at once: all their images share the thread pool, so even one
    request's two cameras are resized side by side."""
    todo = [i for i, a in enumerate(arrays) if a.shape[-3:-1] != (height, width)]
    flat = [im for i in todo for im in arrays[i].reshape(-1, *arrays[i].shape[-3:])]
    if len(flat) >= 2 and (os.cpu_count() or 1) > 1:
        resized = list(_resize_pool().map(lambda im: _resize_one(im, height, width), flat))
    else:
        resized = [_resize_one(im, height, width) for im in flat]
    out, start = list(arrays), 0
    for i in todo:
        a = arrays[i]
        count = int(np.prod(a.shape[:-3], dtype=np.int64))
        out[i] = np.stack(resized[start : start + count]).reshape(*a.shape[:-3], height, width, a.shape[-1])
        start += count
    return out


def resized_geometry(in_h: int, in_w: int, height: int, width: int) -> tuple[int, int, int, int]:
    """(new_h, new_w, top, left) of openpi's resize with pad: the aspect-preserving size and where it is pasted."""
    ratio = max(in_w / width, in_h / height)
    # (openpi truncates; a sliver-shaped image would truncate to 0 pixels, which PIL cannot resize to)
    new_h, new_w = max(1, int(in_h / ratio)), max(1, int(in_w / ratio))
    return new_h, new_w, max(0, int((height - new_h) / 2)), max(0, int((width - new_w) / 2))


def _resize_one(image: np.ndarray, height: int, width: int) -> np.ndarray:
    cur_h, cur_w = image.shape[:2]
    new_h, new_w, top, left = resized_geometry(cur_h, cur_w, height, width)
    # One axis at a time, the width first: the bytes of openpi's Pillow (11.2.1), whose two-pass resize always runs
    # the horizontal pass first. Pillow 13 runs the vertical pass first for images whose height shrinks by more than
    # twice as many pixels as their width, which rounds differently; a single-axis resize is one pass in every version.
    resized = Image.fromarray(image)
    if new_w != cur_w:
        resized = resized.resize((new_w, cur_h), resample=Image.BILINEAR)
    if new_h != cur_h:
        resized = resized.resize((new_w, new_h), resample=Image.BILINEAR)
    if (new_h, new_w) == (height, width):
        return np.asarray(resized)
    canvas = Image.new(resized.mode, (width, height), 0)
    canvas.paste(resized, (left, top))
    return np.asarray(canvas)


@functools.cache
def _resize_pool() -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1), thread_name_prefix="textlatent-resize")


def _prompts(obs: dict, batch: int | None, default: str | None) -> list[str]:
    prompt = obs.get(PROMPT_KEY, default)
    if prompt is None:
        raise ObservationError(f"the request has no {PROMPT_KEY!r}; send the task instruction as a string")
    if isinstance(prompt, np.ndarray) and prompt.ndim == 0:
        prompt = prompt.item()
    if isinstance(prompt, bytes):
        prompt = prompt.decode("utf-8", errors="replace")
    if batch is None:
        items = [prompt]
    elif isinstance(prompt, str):
        items = [prompt] * batch
    elif isinstance(prompt, np.ndarray | list | tuple):
        items = list(np.asarray(prompt).reshape(-1)) if isinstance(prompt, np.ndarray) else list(prompt)
        if len(items) != batch:
            raise ObservationError(f"{PROMPT_KEY!r} has {len(items)} entries for a batch of {batch}")
    else:
        raise ObservationError(
            f"{PROMPT_KEY!r} of a batch must be a string or a list of strings, got {type(prompt).__name__}"
        )
    out = []
    for item in items:
        if isinstance(item, np.str_ | np.bytes_):
            item = str(item)
        if not isinstance(item, str):
            raise ObservationError(f"{PROMPT_KEY!r} must be a string, got {type(item).__name__}")
        if not item.strip().replace("_", ""):
            raise ObservationError(
                f"{PROMPT_KEY!r} is empty; send the task instruction, e.g. 'put the bowl on the plate'"
            )
        out.append(item)
    return out


@dataclasses.dataclass(frozen=True)
class LiberoTransforms:
    tokenizer: PaligemmaTokenizer
    norm_stats: dict[str, NormStats]
    model_action_dim: int
    state_dims: int
    action_dims: int
    delta_action_mask: tuple[bool, ...]
    image_keys: tuple[str, str, str]
    image_resolution: tuple[int, int]
    default_prompt: str | None = None

    @classmethod
    def for_config(cls, config, tokenizer: PaligemmaTokenizer, norm_stats: dict[str, NormStats]) -> LiberoTransforms:
        """The transforms of a ``PolicyConfig`` (its model's action dims, cameras and resolution)."""
        return cls(
            tokenizer=tokenizer,
            norm_stats=norm_stats,
            model_action_dim=config.model.action_dim,
            state_dims=config.state_dims,
            action_dims=config.action_dims,
            delta_action_mask=config.delta_action_mask,
            image_keys=config.model.image_keys,
            image_resolution=config.model.image_resolution,
            default_prompt=config.default_prompt,
        )

    def __post_init__(self):
        for key in ("state", "actions"):
            if key not in self.norm_stats:
                raise ValueError(f"norm stats lack {key!r} (found {sorted(self.norm_stats)})")
        if self.norm_stats["state"].mean.shape[0] < self.state_dims:
            raise ValueError(
                f"norm stats for 'state' have {self.norm_stats['state'].mean.shape[0]} dims, fewer than the "
                f"{self.state_dims} state dims of this policy"
            )

    def is_batched(self, obs: dict) -> bool:
        if not isinstance(obs, dict):
            raise ObservationError(f"an observation must be a dict, got {type(obs).__name__}")
        missing = [k for k in REQUIRED_KEYS if k not in obs]
        if missing:
            raise ObservationError(
                f"the request lacks {missing}; a LIBERO request has {list(REQUIRED_KEYS)} and {PROMPT_KEY!r}"
            )
        state = as_array(STATE_KEY, obs[STATE_KEY])
        if state.ndim not in (1, 2):
            raise ObservationError(
                f"{STATE_KEY} must have shape [{self.state_dims}] or [batch, {self.state_dims}], got {state.shape}"
            )
        return state.ndim == 2

    def inputs(self, obs: dict, *, resize_images: bool = True) -> dict:
        """Request → batched model inputs (numpy): image/image_mask dicts, state float32 [B, 32], prompt ids/mask.

        ``resize_images=False`` leaves the cameras' images at the size they were sent (uint8 [B, h, w, 3]) for a
        caller that resizes them on the accelerator (``resize.resize_all_on_device``: the same bytes)."""
        batched = self.is_batched(obs)
        state = as_array(STATE_KEY, obs[STATE_KEY])
        if not (np.issubdtype(state.dtype, np.floating) or np.issubdtype(state.dtype, np.integer)):
            raise ObservationError(f"{STATE_KEY} must be numeric, got dtype {state.dtype}")
        if state.shape[-1] != self.state_dims:
            raise ObservationError(
                f"{STATE_KEY} must have {self.state_dims} values (eef pos 3, axis-angle 3, gripper 2), got {state.shape[-1]}"
            )
        if not np.all(np.isfinite(state)):
            raise ObservationError(f"{STATE_KEY} contains NaN or inf: {state}")
        batch = state.shape[0] if batched else None
        if batch == 0:
            raise ObservationError("the batch is empty")
        base = _parse_image(IMAGE_KEY, obs[IMAGE_KEY], batched)
        wrist = _parse_image(WRIST_IMAGE_KEY, obs[WRIST_IMAGE_KEY], batched)
        if batched and (base.shape[0] != batch or wrist.shape[0] != batch):
            raise ObservationError(f"images have batch {base.shape[0]} and {wrist.shape[0]} but the state has {batch}")
        prompts = _prompts(obs, batch, self.default_prompt)
        if not batched:
            state, base, wrist = state[None], base[None], wrist[None]

        stats = self.norm_stats["state"]
        d = state.shape[-1]
        normalized = (state - stats.mean[..., :d]) / (stats.std[..., :d] + 1e-6)
        padded = _pad(normalized, self.model_action_dim, 0.0)

        height, width = self.image_resolution
        if resize_images:
            base, wrist = resize_all_with_pad([base, wrist], height, width)
        tokens, masks = zip(*(self.tokenizer.tokenize(p) for p in prompts), strict=True)
        b = base.shape[0]
        first, second, third = self.image_keys
        return {
            "image": {first: base, second: wrist, third: np.zeros((b, height, width, 3), np.uint8)},
            "image_mask": {first: np.ones(b, bool), second: np.ones(b, bool), third: np.zeros(b, bool)},
            # openpi hands the float64 state to jnp.asarray, i.e. float32 with x64 disabled.
            "state": padded.astype(np.float32),
            "tokenized_prompt": np.stack(tokens),
            "tokenized_prompt_mask": np.stack(masks),
            "batched": batched,
        }

    def outputs(self, actions: np.ndarray, model_state: np.ndarray) -> np.ndarray:
        """Model actions [B, H, 32] (float32) and the float32 normalized state [B, 32] → robot actions float64."""
        actions = _unnormalize(np.asarray(actions), self.norm_stats["actions"])
        state = _unnormalize(np.asarray(model_state), self.norm_stats["state"])
        if self.delta_action_mask:
            mask = np.asarray(self.delta_action_mask)
            dims = mask.shape[-1]
            actions[..., :dims] += np.expand_dims(np.where(mask, state[..., :dims], 0), axis=-2)
        return np.asarray(actions[..., : self.action_dims])


def _pad(x: np.ndarray, dim: int, value: float) -> np.ndarray:
    if x.shape[-1] >= dim:
        return x
    width = [(0, 0)] * (x.ndim - 1) + [(0, dim - x.shape[-1])]
    return np.pad(x, width, constant_values=value)


def _unnormalize(x: np.ndarray, stats: NormStats) -> np.ndarray:
    d = x.shape[-1]
    mean, std = _pad(stats.mean, d, 0.0)[:d], _pad(stats.std, d, 1.0)[:d]
    return x * (std + 1e-6) + mean
