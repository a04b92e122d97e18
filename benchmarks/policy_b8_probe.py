"""The policy's sampling program against ``gpu.py``'s policy default, input by input: timed on the policy's request
(uint8 images, noise drawn inside), with the noise given, with float images, and on ``gpu.py``'s random observation.
It found the policy running modules built without its resolved options (57 ms at batch 8 against 48;
``results/policy_b8_probe_h100.md``); rerun it when the two disagree again.

    XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONPATH=src python benchmarks/policy_b8_probe.py
"""

from __future__ import annotations

import pathlib
import sys

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from capture import build_policy, frames
from common import environment, median_ms
from pi0_latency import libero_observation

from textlatent.model.pi0 import compact_observation
from textlatent.policy.policy import _sample


def main() -> None:
    print(environment(), flush=True)
    policy = build_policy("full")
    state, weights, pixels = policy.model_split[1], policy.layer_weights, policy._pixel_values
    config = policy.model.config
    key = jax.random.key(0)
    for batch in (8, 1):
        request = frames(batch)
        inputs = policy.transforms.inputs(request)
        inputs.pop("batched")
        obs_u8 = jax.device_put(policy._observation(inputs, convert_uint8=False))
        obs_f = jax.device_put(policy._observation(inputs))
        obs_g = jax.device_put(compact_observation(libero_observation(config, batch), config.max_token_len))
        noise = jax.random.normal(jax.random.key(1), (batch, config.action_horizon, config.action_dim))
        program = policy.jitted(policy.bound(_sample), batch, static_argnames=("num_steps",))
        print(batch, "prompt", obs_u8.tokenized_prompt.shape, obs_g.tokenized_prompt.shape,
              {k: (v.shape, v.dtype) for k, v in obs_u8.images.items()}, obs_u8.absent_cameras, obs_g.absent_cameras,
              {k: np.asarray(v).tolist() for k, v in obs_u8.image_masks.items()}, flush=True)  # fmt: skip
        calls = {
            "as infer (uint8, noise drawn inside)": (state, key, obs_u8, None, None, weights, pixels),
            "noise given": (state, None, obs_u8, noise, None, weights, pixels),
            "float images, noise given": (state, None, obs_f, noise, None, weights, None),
            "gpu.py's observation, noise given": (state, None, obs_g, noise, None, weights, None),
        }
        for name, args in calls.items():
            ms = median_ms(lambda args=args, program=program: program(*args, num_steps=10), 20)
            print(f"batch {batch}: {name}: {ms:.2f} ms", flush=True)
        # The images of the two observations, and their prompts, side by side.
        print("state", np.asarray(obs_u8.state)[0, :4], np.asarray(obs_g.state)[0, :4])
        print(
            "prompt mask rows",
            np.asarray(obs_u8.tokenized_prompt_mask).sum(1),
            np.asarray(obs_g.tokenized_prompt_mask).sum(1),
        )


if __name__ == "__main__":
    main()
