"""Make an openpi reference for tests/test_openpi_parity.py, using openpi's OWN code.

Run inside an environment with openpi's pinned model stack (jax 0.5.3, jaxlib 0.5.3, flax 0.10.2,
orbax-checkpoint 0.11.13, jaxtyping 0.2.36, beartype 0.19.0, numpy 1.26.4, ml-dtypes 0.5.1, einops, sentencepiece,
numpydantic, pydantic, pillow, augmax, msgpack) with an openpi checkout on PYTHONPATH
(``src`` and ``packages/openpi-client/src``), next to a SentencePiece ``tok.model`` (e.g. from
``textlatent.tokenizer_training.train_tokenizer``):

    PYTHONPATH=openpi/src:openpi/packages/openpi-client/src JAX_PLATFORMS=cpu python openpi_reference.py

It writes ``ckpt/`` (dummy-Gemma π0 with full SigLIP, every parameter non-trivial, saved with orbax as openpi does,
norm stats via openpi's ``normalize.save``) and ``reference_{float32,bfloat16}.npz`` (inputs, openpi's policy
actions for fixed noise, ``compute_loss`` with key 123, ``sample_actions`` with key 7). Then:

    TEXTLATENT_OPENPI_REFERENCE=<that folder> uv run pytest tests/test_openpi_parity.py -s

Only modules unused on this path (PyTorch port, downloads, FAST tokenizer) are stubbed.
"""

import os
import pathlib
import sys
import time
import types

import numpy as np

# The reference folder: where tok.model is read and ckpt/ and the .npz files are written.
ROOT = pathlib.Path(os.environ.get("OPENPI_REFERENCE_DIR", pathlib.Path(__file__).parent))
# Stub imports only used by the PyTorch port / downloads.
torch = types.ModuleType("torch")
torch.uint8 = object()
torch.Tensor = type("Tensor", (), {})
nn = types.ModuleType("torch.nn")
F = types.ModuleType("torch.nn.functional")
torch.nn = nn
nn.functional = F
sys.modules.update({"torch": torch, "torch.nn": nn, "torch.nn.functional": F})
tr = types.ModuleType("transformers")
tr.AutoProcessor = object
sys.modules["transformers"] = tr
pt = types.ModuleType("openpi.models_pytorch")
pp = types.ModuleType("openpi.models_pytorch.pi0_pytorch")
sys.modules.update({"openpi.models_pytorch": pt, "openpi.models_pytorch.pi0_pytorch": pp})
pt.pi0_pytorch = pp
import openpi.models

utils = types.ModuleType("openpi.models.utils")
fsq = types.ModuleType("openpi.models.utils.fsq_tokenizer")
utils.fsq_tokenizer = fsq
openpi.models.utils = utils
sys.modules.update({"openpi.models.utils": utils, "openpi.models.utils.fsq_tokenizer": fsq})
dl = types.ModuleType("openpi.shared.download")
dl.maybe_download = lambda url, **kw: ROOT / "tok.model"
sys.modules["openpi.shared.download"] = dl
import openpi.shared

openpi.shared.download = dl

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import nnx
from openpi import transforms as T
from openpi.models import model as _model
from openpi.models import pi0_config
from openpi.models import tokenizer as _tok
from openpi.policies import libero_policy
from openpi.policies import policy as _policy
from openpi.shared import nnx_utils
from openpi.shared import normalize as _normalize

CKPT = ROOT / "ckpt"
ASSET = "physical-intelligence/libero"


def make_checkpoint():
    config = pi0_config.Pi0Config(paligemma_variant="dummy", action_expert_variant="dummy")
    model = config.create(jax.random.key(0))
    params = nnx.state(model).to_pure_dict()
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(42), len(leaves))
    out = []
    for k, x in zip(keys, leaves, strict=True):
        x = np.asarray(x, np.float32)
        if np.all(x == 0) or np.all(x == 1):  # zero-initialised scales, biases, SigLIP head: randomise
            x = x + 0.05 * np.asarray(jax.random.normal(k, x.shape), np.float32)
        out.append(x)
    params = jax.tree_util.tree_unflatten(treedef, out)
    with ocp.PyTreeCheckpointer() as ck:
        ck.save((CKPT / "params").resolve(), {"params": params})
    rng = np.random.default_rng(7)

    def st(d):
        m = rng.normal(0, 0.5, d)
        s = rng.uniform(0.2, 2.0, d)
        return _normalize.NormStats(mean=m, std=s, q01=m - 2 * s, q99=m + 2 * s)

    _normalize.save(CKPT / "assets" / ASSET, {"state": st(8), "actions": st(7)})


def make_policy(dtype, restore=None):
    """openpi's model (restored with ``restore``, default openpi's own) and its ``pi0_libero`` inference pipeline."""
    config = pi0_config.Pi0Config(dtype=dtype, paligemma_variant="dummy", action_expert_variant="dummy")
    restore = restore or _model.restore_params
    model = config.load(restore(CKPT / "params", dtype=jnp.bfloat16 if dtype == "bfloat16" else jnp.float32))
    norm = _normalize.load(CKPT / "assets" / ASSET)
    inputs = [
        T.InjectDefaultPrompt(None),
        libero_policy.LiberoInputs(model_type=config.model_type),
        T.DeltaActions(T.make_bool_mask(6, -1)),
        T.Normalize(norm, use_quantiles=False),
        T.InjectDefaultPrompt(None),
        T.ResizeImages(224, 224),
        T.TokenizePrompt(_tok.PaligemmaTokenizer(config.max_token_len)),
        T.PadStatesAndActions(config.action_dim),
    ]
    outputs = [
        T.Unnormalize(norm, use_quantiles=False),
        T.AbsoluteActions(T.make_bool_mask(6, -1)),
        libero_policy.LiberoOutputs(),
    ]
    return model, _policy.Policy(model, transforms=inputs, output_transforms=outputs), T.compose(inputs)


PROMPTS = [
    "put the bowl on the plate",
    "  pick_up the black bowl next to the cookie box and place it on the plate  ",
    " ".join(["put the cream cheese in the bowl"] * 5),
]


def main():
    if not (CKPT / "params").exists():
        make_checkpoint()
    rng = np.random.default_rng(0)
    obs = [
        {
            "observation/image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
            "observation/wrist_image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
            "observation/state": rng.normal(size=8),
            "prompt": p,
        }
        for p in PROMPTS
    ]
    noise = rng.normal(size=(len(PROMPTS), 50, 32)).astype(np.float32)
    loss_actions = rng.normal(size=(2, 50, 32)).astype(np.float32)
    for dtype in ("float32", "bfloat16"):
        t = time.time()
        model, policy, transform = make_policy(dtype)
        out = {"noise": noise, "loss_actions": loss_actions}
        for i, o in enumerate(obs):
            out[f"image_{i}"] = o["observation/image"]
            out[f"wrist_{i}"] = o["observation/wrist_image"]
            out[f"state_{i}"] = o["observation/state"]
            out[f"prompt_{i}"] = np.asarray(o["prompt"])
            out[f"actions_{i}"] = policy.infer(dict(o), noise=noise[i])["actions"]
            tr = transform(jax.tree.map(lambda x: x, dict(o)))
            out[f"tokens_{i}"] = tr["tokenized_prompt"]
            out[f"token_mask_{i}"] = tr["tokenized_prompt_mask"]
        batch = [transform(jax.tree.map(lambda x: x, dict(o))) for o in obs[:2]]
        batch = jax.tree.map(lambda *xs: jnp.asarray(np.stack(xs)), *batch)
        observation = _model.Observation.from_dict(batch)
        out["loss"] = np.asarray(
            nnx_utils.module_jit(model.compute_loss)(jax.random.key(123), observation, jnp.asarray(loss_actions))
        )
        out["sample_key7"] = np.asarray(nnx_utils.module_jit(model.sample_actions)(jax.random.key(7), observation))
        np.savez(ROOT / f"reference_{dtype}.npz", **out)
        print(
            dtype,
            "done in",
            round(time.time() - t, 1),
            "s; actions_0[0]",
            out["actions_0"][0],
            "loss",
            out["loss"][0, :3],
        )


if __name__ == "__main__":
    main()
