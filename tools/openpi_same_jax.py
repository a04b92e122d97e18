"""Run openpi's π0 policy code and textlatent's side by side in ONE environment (textlatent's JAX), on a reference
folder made by ``tools/openpi_reference.py``, and print the per-observation max |Δ| of the actions.

    uv pip install "jaxtyping==0.2.36" "beartype==0.19.0" einops numpydantic pydantic augmax safetensors
    PYTHONPATH=<openpi>/src:<openpi>/packages/openpi-client/src python tools/openpi_same_jax.py <reference folder>

Both sides see the same checkpoint, prompt, images, state and noise; any difference is textlatent's arithmetic.
"""

import pathlib
import sys
import types

root = pathlib.Path(sys.argv[1])
# Modules openpi imports but this path never uses (PyTorch port, downloads, FAST tokenizer).
torch = types.ModuleType("torch")
torch.uint8, torch.Tensor = object(), type("Tensor", (), {})
torch.nn = types.ModuleType("torch.nn")
torch.nn.functional = types.ModuleType("torch.nn.functional")
transformers = types.ModuleType("transformers")
transformers.AutoProcessor = object
download = types.ModuleType("openpi.shared.download")
download.maybe_download = lambda url, **kw: root / "tok.model"
sys.modules.update(
    {
        "torch": torch,
        "torch.nn": torch.nn,
        "torch.nn.functional": torch.nn.functional,
        "transformers": transformers,
        "openpi.models_pytorch": types.ModuleType("openpi.models_pytorch"),
        "openpi.models_pytorch.pi0_pytorch": types.ModuleType("openpi.models_pytorch.pi0_pytorch"),
        "openpi.shared.download": download,
    }
)
import openpi.models  # noqa: E402
import openpi.shared  # noqa: E402

openpi.shared.download = download

openpi.models.utils = types.ModuleType("openpi.models.utils")
sys.modules["openpi.models.utils"] = openpi.models.utils
sys.modules["openpi.models.utils.fsq_tokenizer"] = types.ModuleType("openpi.models.utils.fsq_tokenizer")

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from openpi import transforms as T  # noqa: E402
from openpi.models import pi0_config  # noqa: E402
from openpi.models import tokenizer as _tok  # noqa: E402
from openpi.policies import libero_policy  # noqa: E402
from openpi.policies import policy as _policy  # noqa: E402
from openpi.shared import normalize as _normalize  # noqa: E402

import textlatent  # noqa: E402
from textlatent.checkpoint import restore_params  # noqa: E402

ckpt = root / "ckpt"
ref = dict(np.load(root / "reference_bfloat16.npz"))
for dtype in ("bfloat16", "float32"):
    config = pi0_config.Pi0Config(dtype=dtype, paligemma_variant="dummy", action_expert_variant="dummy")
    # openpi's restore_params predates the installed orbax's metadata object; the restored tree is the same.
    model = config.load(restore_params(ckpt / "params", dtype=jnp.dtype(dtype)))
    norm = _normalize.load(ckpt / "assets" / "physical-intelligence" / "libero")
    theirs = _policy.Policy(
        model,
        transforms=[
            T.InjectDefaultPrompt(None),
            libero_policy.LiberoInputs(model_type=config.model_type),
            T.DeltaActions(T.make_bool_mask(6, -1)),
            T.Normalize(norm),
            T.InjectDefaultPrompt(None),
            T.ResizeImages(224, 224),
            T.TokenizePrompt(_tok.PaligemmaTokenizer(48)),
            T.PadStatesAndActions(32),
        ],
        output_transforms=[
            T.Unnormalize(norm),
            T.AbsoluteActions(T.make_bool_mask(6, -1)),
            libero_policy.LiberoOutputs(),
        ],
    )
    ours = textlatent.load_policy(
        "pi0_libero",
        ckpt,
        tokenizer=str(root / "tok.model"),
        paligemma_variant="dummy",
        action_expert_variant="dummy",
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
