"""Parity with openpi itself. Runs when TEXTLATENT_OPENPI_REFERENCE names a directory made by
``tools/openpi_reference.py`` inside an openpi environment: a checkpoint written by openpi's code (dummy Gemma,
full SigLIP), the tokenizer it used, and openpi's outputs in ``reference_{float32,bfloat16}.npz``."""

import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import textlatent
from textlatent.model import Observation

REFERENCE = os.environ.get("TEXTLATENT_OPENPI_REFERENCE")
pytestmark = [
    pytest.mark.openpi,
    pytest.mark.skipif(not REFERENCE, reason="set TEXTLATENT_OPENPI_REFERENCE to an openpi reference directory"),
]
# float32: openpi's and our XLA programs differ only in op grouping; bf16: within one bf16 rounding of the actions.
TOLERANCE = {"float32": 1e-5, "bfloat16": 2e-2}


@pytest.fixture(scope="module", params=["float32", "bfloat16"])
def case(request):
    root = pathlib.Path(REFERENCE)
    ref = dict(np.load(root / f"reference_{request.param}.npz"))
    policy = textlatent.load_policy(
        "pi0_libero",
        root / "ckpt",
        tokenizer=str(root / "tok.model"),
        paligemma_variant="dummy",
        action_expert_variant="dummy",
        compact=False,  # openpi's full prefix layout: the comparison is bit for bit
        dtype=request.param,
    )
    return request.param, ref, policy


def _obs(ref, i):
    return {
        "observation/image": ref[f"image_{i}"],
        "observation/wrist_image": ref[f"wrist_{i}"],
        "observation/state": ref[f"state_{i}"],
        "prompt": str(ref[f"prompt_{i}"]),
    }


def _count(ref):
    return len([k for k in ref if k.startswith("actions_")])


def test_tokens_match(case):
    _, ref, policy = case
    for i in range(_count(ref)):
        observation, _, _ = policy.prepare(_obs(ref, i))
        np.testing.assert_array_equal(np.asarray(observation.tokenized_prompt[0]), ref[f"tokens_{i}"])
        np.testing.assert_array_equal(np.asarray(observation.tokenized_prompt_mask[0]), ref[f"token_mask_{i}"])


def test_actions_match(case):
    dtype, ref, policy = case
    for i in range(_count(ref)):
        actions = policy.infer(_obs(ref, i), noise=ref["noise"][i])["actions"]
        err = np.max(np.abs(actions - ref[f"actions_{i}"]))
        print(f"{dtype} observation {i}: max |Δ actions| = {err:.2e}")
        assert err <= TOLERANCE[dtype] * max(1.0, np.max(np.abs(ref[f"actions_{i}"])) if dtype == "bfloat16" else 1.0)


def _batch(ref, policy):
    parts = [policy.prepare(_obs(ref, i))[0] for i in range(2)]
    return jax.tree.map(lambda *xs: jnp.concatenate(xs), *parts)


def test_compute_loss_and_keyed_sampling_match(case):
    dtype, ref, policy = case
    obs: Observation = _batch(ref, policy)
    model = policy.model
    loss = np.asarray(jax.jit(model.compute_loss)(jax.random.key(123), obs, jnp.asarray(ref["loss_actions"])))
    sample = np.asarray(jax.jit(model.sample_actions)(jax.random.key(7), obs))
    print(
        f"{dtype}: max |Δ loss| = {np.max(np.abs(loss - ref['loss'])):.2e}, "
        f"max |Δ sample(key 7)| = {np.max(np.abs(sample - ref['sample_key7'])):.2e}"
    )
    np.testing.assert_allclose(loss, ref["loss"], rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])
    np.testing.assert_allclose(sample, ref["sample_key7"], rtol=TOLERANCE[dtype], atol=TOLERANCE[dtype])
