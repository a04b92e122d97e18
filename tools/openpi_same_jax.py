"""Run openpi's π0 policy code and textlatent's side by side in ONE environment (textlatent's JAX), on a reference
folder made by ``tools/openpi_reference.py``, and print the per-observation max |Δ| of the actions.

    uv pip install "jaxtyping==0.2.36" "beartype==0.19.0" einops numpydantic pydantic augmax safetensors
    PYTHONPATH=<openpi>/src:<openpi>/packages/openpi-client/src python tools/openpi_same_jax.py <reference folder>

Both sides see the same checkpoint, prompt, images, state and noise; any difference is textlatent's arithmetic.
"""

import os
import pathlib
import sys

root = pathlib.Path(sys.argv[1]).resolve()
os.environ["OPENPI_REFERENCE_DIR"] = str(root)
sys.path.insert(0, str(pathlib.Path(__file__).parent))
import numpy as np  # noqa: E402
import openpi_reference as reference  # noqa: E402  (installs the stubs openpi needs, then imports openpi)

import textlatent  # noqa: E402
from textlatent.checkpoint import restore_params  # noqa: E402

ref = dict(np.load(root / "reference_bfloat16.npz"))
for dtype in ("bfloat16", "float32"):
    # openpi's restore_params predates the installed orbax's metadata object; the restored tree is the same.
    _, theirs, _ = reference.make_policy(dtype, restore=restore_params)
    ours = textlatent.load_policy(
        "pi0_libero",
        root / "ckpt",
        tokenizer=str(root / "tok.model"),
        paligemma_variant="dummy",
        action_expert_variant="dummy",
        compact=False,  # openpi's full prefix layout: the comparison is bit for bit
        dtype=dtype,
    )
    for i in range(len([k for k in ref if k.startswith("actions_")])):
        obs = {
            "observation/image": ref[f"image_{i}"],
            "observation/wrist_image": ref[f"wrist_{i}"],
            "observation/state": ref[f"state_{i}"],
            "prompt": str(ref[f"prompt_{i}"]),
        }
        a = theirs.infer(dict(obs), noise=ref["noise"][i])["actions"]
        b = ours.infer(dict(obs), noise=ref["noise"][i])["actions"]
        print(f"{dtype} observation {i}: max |Δ actions| openpi vs textlatent = {np.max(np.abs(a - b)):.3g}")
