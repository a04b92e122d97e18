"""Read and write π0 parameters in openpi's layout: an orbax PyTree checkpoint at ``<dir>/params`` whose top-level
key is ``"params"`` (training checkpoints add a trailing ``"value"`` to every path, which is dropped)."""

from __future__ import annotations

import logging
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx, traverse_util

from textlatent.model import GEMMA_VARIANTS, Pi0, Pi0Config
from textlatent.model.config import _SIGLIP_SIZES

logger = logging.getLogger(__name__)

Params = dict  # nested pure dict of arrays


class CheckpointMismatchError(ValueError):
    """The parameter tree on disk does not fit the model configuration."""


def _flat(tree: dict) -> dict[str, object]:
    return {"/".join(map(str, k)): v for k, v in traverse_util.flatten_dict(tree).items()}


def _drop_value_suffix(flat: dict[tuple, object]) -> dict[tuple, object]:
    if flat and all(k[-1] == "value" for k in flat):
        return {k[:-1]: v for k, v in flat.items()}
    return flat


def read_param_shapes(params_dir: str | pathlib.Path) -> dict[str, tuple[int, ...]]:
    """Shapes of the leaves stored under ``params_dir``, by ``/``-joined path (no data is read)."""
    params_dir = pathlib.Path(params_dir)
    if not params_dir.is_dir():
        raise FileNotFoundError(f"no parameter directory at {params_dir} (expected <checkpoint>/params)")
    with ocp.PyTreeCheckpointer() as ckptr:
        try:
            meta = ckptr.metadata(params_dir)
        except (FileNotFoundError, ValueError) as e:
            raise CheckpointMismatchError(f"{params_dir} is not an orbax PyTree checkpoint: {e}") from e
    tree = getattr(meta, "item_metadata", meta)
    tree = getattr(tree, "tree", tree)
    if "params" not in tree:
        raise CheckpointMismatchError(f"{params_dir} has no top-level 'params' entry (found {sorted(tree)})")
    flat = _drop_value_suffix(traverse_util.flatten_dict(dict(tree["params"])))
    return {"/".join(map(str, k)): tuple(v.shape) for k, v in flat.items()}


def restore_params(params_dir: str | pathlib.Path, *, dtype=None, as_numpy: bool = False) -> Params:
    """Restore the parameter tree, cast to ``dtype`` while reading (None keeps the stored dtype)."""
    params_dir = pathlib.Path(params_dir).resolve()
    with ocp.PyTreeCheckpointer() as ckptr:
        meta = ckptr.metadata(params_dir)
        tree = getattr(meta, "item_metadata", meta)
        tree = getattr(tree, "tree", tree)
        item = {"params": tree["params"]}
        if as_numpy:
            args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(restore_type=np.ndarray, dtype=dtype), item)
        else:
            sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
            args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(sharding=sharding, dtype=dtype), item)
        params = ckptr.restore(params_dir, ocp.args.PyTreeRestore(item=item, restore_args=args))["params"]
    flat = _drop_value_suffix(traverse_util.flatten_dict(params))
    return traverse_util.unflatten_dict(flat)


def save_params(params_dir: str | pathlib.Path, params: Params) -> pathlib.Path:
    """Write ``{"params": params}`` as an orbax PyTree checkpoint (the directory must not exist yet)."""
    params_dir = pathlib.Path(params_dir).resolve()
    if params_dir.exists():
        raise FileExistsError(f"{params_dir} already exists; choose a new checkpoint directory")
    with ocp.PyTreeCheckpointer() as ckptr:
        ckptr.save(params_dir, {"params": params})
    return params_dir


def _abstract_model(config: Pi0Config):
    """(graphdef, parameter state of shape structs) of ``Pi0(config)``, without allocating weights."""
    return nnx.split(nnx.eval_shape(lambda: Pi0(config, nnx.Rngs(0))))


def _shapes(tree: dict) -> dict[str, tuple[int, ...]]:
    return {k: tuple(np.shape(v)) for k, v in _flat(tree).items()}


def check_tree(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], *, where: str) -> None:
    """Raise ``CheckpointMismatchError`` listing every missing, unexpected and mis-shaped leaf."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    misshaped = sorted(k for k in set(expected) & set(found) if tuple(expected[k]) != tuple(found[k]))
    if not (missing or unexpected or misshaped):
        return
    lines = [f"the parameters in {where} do not match the model configuration:"]
    lines += [f"  missing:    {k} {tuple(expected[k])}" for k in missing]
    lines += [f"  unexpected: {k} {tuple(found[k])}" for k in unexpected]
    lines += [f"  mis-shaped: {k}: checkpoint {tuple(found[k])}, model {tuple(expected[k])}" for k in misshaped]
    hint = guess_variants(found)
    if hint:
        lines.append("  the checkpoint looks like: " + ", ".join(f"{k}={v!r}" for k, v in hint.items()))
        lines.append("  pass these as config overrides, e.g. load_policy(..., paligemma_variant='dummy')")
    raise CheckpointMismatchError("\n".join(lines))


def guess_variants(shapes: dict[str, tuple[int, ...]]) -> dict[str, object]:
    """Infer variant names from stored shapes, to suggest the right overrides in an error message."""
    hint: dict[str, object] = {}
    for stream, field in (("", "paligemma_variant"), ("_1", "action_expert_variant")):
        q = shapes.get(f"PaliGemma/llm/layers/attn/q_einsum{stream}/w")
        mlp = shapes.get(f"PaliGemma/llm/layers/mlp{stream}/linear")
        if q is None or mlp is None or len(q) != 4 or len(mlp) != 3:
            continue
        for name, c in GEMMA_VARIANTS.items():
            if (c.depth, c.num_heads, c.width, c.head_dim, c.mlp_dim) == (*q, mlp[1]):
                hint[field] = name
                break
    block = shapes.get("PaliGemma/img/Transformer/encoderblock/MlpBlock_0/Dense_0/kernel")
    patch = shapes.get("PaliGemma/img/embedding/kernel")
    if block and patch and len(block) == 3:
        for name, (width, depth, mlp_dim, _) in _SIGLIP_SIZES.items():
            if (depth, width, mlp_dim) == block:
                hint["siglip_variant"] = f"{name}/{patch[0]}"
                break
    emb = shapes.get("PaliGemma/llm/embedder/input_embedding")
    if emb:
        hint["vocab_size"] = emb[0]
    return hint


def load_model(config: Pi0Config, params_dir: str | pathlib.Path, *, param_dtype=None, on_host: bool = False) -> Pi0:
    """Build ``Pi0(config)`` from the parameters at ``params_dir`` without ever allocating random weights.

    The stored tree is checked before any data is read. ``param_dtype`` defaults to the model dtype: bfloat16 for
    serving (as openpi's policies), float32 otherwise. ``on_host``: the weights stay NumPy arrays in host memory
    (for a caller that lays them out before putting them on the device, as ``Policy`` does with
    ``weights_per_layer``: the device then never holds the stacks and their cuts at once).
    """
    graphdef, state = _abstract_model(config)
    check_tree(_shapes(nnx.to_pure_dict(state)), read_param_shapes(params_dir), where=str(params_dir))
    params = restore_params(params_dir, dtype=jnp.dtype(param_dtype or config.dtype), as_numpy=on_host)
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)


def model_from_params(config: Pi0Config, params: Params) -> Pi0:
    """Put a pure-dict parameter tree into a model (shapes are checked; dtypes are kept as given)."""
    graphdef, state = _abstract_model(config)
    check_tree(_shapes(nnx.to_pure_dict(state)), _shapes(params), where="the given parameter tree")
    nnx.replace_by_pure_dict(state, params)
    return nnx.merge(graphdef, state)


def model_params(model: Pi0) -> Params:
    """The pure-dict parameter tree of a model, as stored in checkpoints."""
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))
