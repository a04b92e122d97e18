"""``Policy``: openpi-compatible inference (``infer(obs) -> {"actions", "policy_timing"}``) around a jitted π0."""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from textlatent.model import Observation, Pi0, Pi0Config, ResidualEdit
from textlatent.model.pi0 import (
    cameras_masked_in_every_row,
    compact_observation,
    lookup_pixel_values,
    uint8_pixel_values,
)
from textlatent.policy.config import PolicyConfig
from textlatent.policy.resize import resize_all_on_device
from textlatent.policy.transforms import LiberoTransforms, ObservationError


def _sample(graphdef, state, rng, obs, noise, edit, layer_weights=None, pixel_values=None, *, num_steps):
    """``sample_actions`` of the model; ``pixel_values``: ``uint8_pixel_values()`` when ``obs`` holds uint8 images."""
    if pixel_values is not None:
        obs = lookup_pixel_values(obs, pixel_values)
    model = nnx.merge(graphdef, state)
    return model.sample_actions(rng, obs, num_steps=num_steps, noise=noise, edit=edit, layer_weights=layer_weights)


def _sample_and_advance(graphdef, state, key, obs, noise, edit, layer_weights, pixel_values, *, num_steps):
    """``infer``'s program: split the policy key as openpi does per call (the second half draws the noise when none
    is given), sample, and return (actions, the key for the next call). The split runs here rather than as an
    eager operation before the call: the same bits, one dispatch less."""
    key, sample_key = jax.random.split(key)
    actions = _sample(graphdef, state, sample_key, obs, noise, edit, layer_weights, pixel_values, num_steps=num_steps)
    return actions, key


CUBLAS_MIN_BATCH = 4
"""From this batch size on, the compact path on a GPU compiles its matrix products for cuBLAS rather than XLA's
Triton kernels: on an H100 cuBLAS is slower for π0 at batch 1, even at batch 2, and faster from batch 4 on
(49.8 vs 52.4 ms a chunk at batch 8; ``benchmarks/NOTES-gpu.md``)."""


def compiler_options(batch: int, *, compact: bool = True) -> dict | None:
    """XLA options for a program over ``batch`` rows on this backend: the compact (fast) path on a GPU from
    ``CUBLAS_MIN_BATCH`` rows on, cuBLAS for every matrix product; otherwise XLA's defaults (None)."""
    if not compact or batch < CUBLAS_MIN_BATCH or jax.default_backend() != "gpu":
        return None
    return {"xla_gpu_enable_triton_gemm": False}


def resolved_model_config(config: Pi0Config, *, compact: bool) -> Pi0Config:
    """The model options a ``Policy`` runs with (``Pi0Config.resolved``): the compact path's where ``compact``, the
    accelerator ones where JAX's default backend is not the CPU."""
    return config.resolved(compact, accelerator=jax.default_backend() != "cpu")


class Policy:
    """A π0 policy: request dicts in, action chunks out. Single requests and batches (leading batch axis on every
    array, a list of prompts) are both accepted; a batch of B returns actions [B, H, action_dims]."""

    def __init__(
        self,
        model: Pi0,
        config: PolicyConfig,
        transforms: LiberoTransforms,
        *,
        rng: jax.Array | None = None,
        metadata: dict[str, Any] | None = None,
        compact: bool = True,
    ):
        """``compact``: leave cameras masked in every row (LIBERO's third) and prompt padding past a bucket out of the
        prefix (``compact_observation``), and turn on the model options that compute the same function with less
        work (``one_image_pass``, ``expert_weights_per_layer``; on accelerators ``weights_per_layer``) unless the
        model config sets them: the same actions up to float rounding, much less work. ``compact=False`` computes
        openpi's arithmetic and layout, bit for bit (options left at None stay off)."""
        resolved = resolved_model_config(model.config, compact=compact)
        model = model.with_config(resolved)  # rebuilt: the attention layout and flash attention are module options
        if config.model != resolved:
            config = dataclasses.replace(config, model=resolved)
        # Every layer's weights cut out of the stacks once, here, instead of in every call (``weights_per_layer``);
        # the policy's model then keeps no stacks (one copy of the weights in memory, once the caller's model is
        # dropped): its passes take ``layer_weights``.
        self._layer_weights = None
        if resolved.weights_per_layer:
            model, weights = model.split_layer_weights()
            self._layer_weights = jax.device_put(weights)
        # Weights loaded into host memory (``load_model(..., on_host=True)``, as ``load_policy`` does for a policy
        # that cuts them) go to the device here, the stacks no longer among them; arrays on the device stay put.
        graphdef, state = nnx.split(model)
        model = nnx.merge(graphdef, jax.device_put(state))
        self.model = model
        self.config = config
        self.transforms = transforms
        self.metadata = dict(metadata or {})
        self.compact = compact
        # Placed on the device as the sampling program's outputs are (the key of the next call is one): jit compiles
        # anew for an argument placed differently, so an unplaced first key would compile the model twice.
        self._rng = jax.device_put(jax.random.key(0) if rng is None else rng, jax.devices()[0])
        # The module is split once; its state is passed as an argument so that jit does not capture the weights.
        self._graphdef, self._state = nnx.split(model)
        self._jitted: dict = {}
        self._bound: dict = {}
        self._draw = jax.jit(_draw_noises, static_argnums=(2, 3))
        # uint8 images go into the sampling program and are converted there by table lookup (the same bits as
        # openpi's eager conversion, without a dispatch per operation and camera, and a quarter of the transfer).
        self._pixel_values = uint8_pixel_values()

    def prepare(self, obs: dict) -> tuple[Observation, np.ndarray, bool]:
        """Validate and transform a request: (model observation, float32 normalized state [B, 32], batched?)."""
        inputs = self.transforms.inputs(obs)
        batched = inputs.pop("batched")
        state = inputs["state"]
        return Observation.from_dict(inputs), state, batched

    def infer(self, obs: dict, *, noise: np.ndarray | None = None, edit: ResidualEdit | None = None) -> dict:
        """Actions for one request (``actions`` [H, 7] float64) or a batch ([B, H, 7]).

        ``noise`` ([H, 32], [1, H, 32] or [B, H, 32]) fixes the flow's starting point; otherwise it is drawn from the
        policy's key, split once per call as openpi does. ``edit`` writes into the prefix residual stream.
        """
        start = time.monotonic()
        inputs = self.resize_images(self.transforms.inputs(obs, resize_images=False))
        batched = inputs.pop("batched")
        state = inputs["state"]
        observation = self._observation(inputs, convert_uint8=False)
        batch = state.shape[0]
        if noise is not None:
            noise = self._check_noise(noise, batch)
        model_start = time.monotonic()
        actions, self._rng = self.jitted(self.bound(_sample_and_advance), batch, static_argnames=("num_steps",))(
            self._state,
            self._rng,
            observation,
            noise,
            edit,
            self._layer_weights,
            self._pixel_values,
            num_steps=self.config.num_steps,
        )
        # The copy back is queued now, to start the moment the chunk is done instead of when the host asks for it.
        actions.copy_to_host_async()
        actions = np.asarray(actions)  # waits for the device: the timing below is the real one
        model_ms = (time.monotonic() - model_start) * 1000
        robot_actions = self.transforms.outputs(actions, state)
        return {
            "actions": robot_actions if batched else robot_actions[0],
            "policy_timing": {"infer_ms": model_ms, "total_ms": (time.monotonic() - start) * 1000},
        }

    # ---------------------------------------------------------------- lower-level steps, for servers that batch
    def draw_noises(self, count: int) -> np.ndarray:
        """Noise [count, H, D] for ``count`` single-observation requests, advancing the policy key exactly as
        ``count`` consecutive ``infer`` calls do (one split each): a request served with row i gets the actions
        ``infer`` would have returned at that point of the key sequence. One device call whatever the count."""
        if count == 0:
            return np.zeros((0, self.model.config.action_horizon, self.model.config.action_dim), np.float32)
        capacity = 1 << (count - 1).bit_length()  # power-of-two programs: bounded recompiles
        shape = (self.model.config.action_horizon, self.model.config.action_dim)
        self._rng, noise = self._draw(self._rng, count, capacity, shape)
        return np.asarray(noise)[:count]

    def run_model(self, inputs: dict, noise: np.ndarray, edit: ResidualEdit | None = None) -> np.ndarray:
        """Model actions [B, H, D] (float32) for batched model inputs as returned by ``transforms.inputs``."""
        inputs = {k: v for k, v in inputs.items() if k != "batched"}
        observation = self._observation(inputs, convert_uint8=False)
        jitted = self.jitted(self.bound(_sample), observation.state.shape[0], static_argnames=("num_steps",))
        actions = jitted(
            self._state,
            None,
            observation,
            jnp.asarray(noise, jnp.float32),
            edit,
            self._layer_weights,
            self._pixel_values,
            num_steps=self.config.num_steps,
        )
        actions.copy_to_host_async()  # queued behind the chunk (see ``infer``)
        return np.asarray(actions)

    def resize_images(self, inputs: dict) -> dict:
        """``inputs`` (from ``transforms.inputs(..., resize_images=False)``) with the cameras the model reads resized
        to its resolution on the accelerator, in one program: PIL's bytes (``resize.resize_with_pad``) without PIL's
        host time. Images already at size are put on the device as they are; cameras the compact layout drops
        (masked in every row) are left alone."""
        height, width = self.model.config.image_resolution
        images = inputs["image"]
        dropped = set(cameras_masked_in_every_row(images, inputs.get("image_mask", {}))) if self.compact else set()
        keys = [key for key in images if key not in dropped]
        resized = resize_all_on_device([images[key] for key in keys], height, width)
        return {**inputs, "image": {**images, **dict(zip(keys, resized, strict=True))}}

    def bound(self, fn):
        """``fn`` with this policy's model graphdef bound as its first argument, made once per function and kept.
        Jitting the bound function leaves the graphdef out of the call: a static graphdef argument is hashed in
        every call (about a millisecond of host time for π0)."""
        if fn not in self._bound:
            self._bound[fn] = functools.partial(fn, self._graphdef)
        return self._bound[fn]

    def jitted(self, fn, batch: int, **jit_kwargs):
        """``jax.jit(fn, **jit_kwargs)`` with the XLA options this policy uses for ``batch`` rows
        (``compiler_options``), made once per (function, options) and kept."""
        options = compiler_options(batch, compact=self.compact)
        key = (fn, tuple(sorted((options or {}).items())), tuple(sorted(jit_kwargs.items())))
        if key not in self._jitted:
            self._jitted[key] = jax.jit(fn, compiler_options=options, **jit_kwargs)
        return self._jitted[key]

    @property
    def layer_weights(self):
        """The per-layer weights cut at load time (``Pi0.split_layer_weights``), or None. When set, ``model`` holds
        no layer stacks: pass them to its passes (``sample_actions(..., layer_weights=policy.layer_weights)``)."""
        return self._layer_weights

    @property
    def model_split(self) -> tuple[nnx.GraphDef, nnx.State]:
        """(graphdef, state) of the model, split once: pass the state into jitted functions (see ``_sample``)."""
        return self._graphdef, self._state

    def model_observation(self, observation: Observation) -> Observation:
        """``observation`` in the layout the policy runs the model on (compacted unless ``compact=False``)."""
        return self._layout(observation)

    def _observation(self, inputs: dict, *, convert_uint8: bool = True) -> Observation:
        """The model observation of transformed inputs, in the policy's layout (``observation_from_inputs``)."""
        return observation_from_inputs(
            inputs, self.model.config.max_token_len, compact=self.compact, convert_uint8=convert_uint8
        )

    def _layout(self, observation: Observation) -> Observation:
        if not self.compact:
            return observation
        return compact_observation(observation, self.model.config.max_token_len)

    def _check_noise(self, noise, batch: int) -> jax.Array:
        noise = np.asarray(noise)
        horizon, dim = self.model.config.action_horizon, self.model.config.action_dim
        if noise.ndim == 2:
            noise = noise[None]
        if noise.shape not in ((batch, horizon, dim), (1, horizon, dim)) or not np.issubdtype(noise.dtype, np.floating):
            raise ObservationError(
                f"noise must be float [{horizon}, {dim}] or [{batch}, {horizon}, {dim}], got {noise.dtype} {noise.shape}"
            )
        if noise.shape[0] != batch:
            noise = np.broadcast_to(noise, (batch, horizon, dim))
        return jnp.asarray(noise, jnp.float32)


def observation_from_inputs(
    inputs: dict, max_token_len: int, *, compact: bool, convert_uint8: bool = True
) -> Observation:
    """The model observation of transformed inputs (``transforms.inputs``, without ``batched``): with ``compact``,
    in the compact layout (``compact_observation``), cameras masked in every row left out *before* their images
    are converted (nothing reads them: one conversion and transfer less); otherwise openpi's full layout.
    ``convert_uint8``: as ``Observation.from_dict``."""
    if not compact:
        return Observation.from_dict(inputs, convert_uint8=convert_uint8)
    masks = inputs.get("image_mask", {})
    absent = cameras_masked_in_every_row(inputs["image"], masks)
    if absent:
        inputs = {
            **inputs,
            "image": {k: v for k, v in inputs["image"].items() if k not in absent},
            "image_mask": {k: v for k, v in masks.items() if k not in absent},
        }
    observation = Observation.from_dict(inputs, convert_uint8=convert_uint8).replace(absent_cameras=absent)
    return compact_observation(observation, max_token_len)


def _draw_noises(key, count, capacity: int, shape: tuple[int, int]):
    """``count`` times: ``key, sub = split(key); normal(sub, (1, *shape))`` (Policy.infer's draw), in one program."""

    def draw(i, carry):
        key, out = carry
        next_key, sub = jax.random.split(key)
        out = out.at[i].set(jax.random.normal(sub, (1, *shape))[0])
        return jnp.where(i < count, next_key, key), out

    return jax.lax.fori_loop(0, capacity, draw, (key, jnp.zeros((capacity, *shape), jnp.float32)))
