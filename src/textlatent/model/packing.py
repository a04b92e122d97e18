"""Per-layer weights with their small leaves packed together.

A jitted call pays host time for every array it is passed (about 2 µs each on an H100 host, whatever the size:
``benchmarks/gpu_dispatch.py``), before the device can start. Half of π0's per-layer arrays are vectors (norm
scales, biases). ``LayerLeaves`` keeps the matrices as separate arrays, so that matrix products read them in place,
and puts the vectors of every layer into one array per dtype. Inside the program they are cut out again by static
slices that XLA fuses into their elementwise consumers. The values are unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

SMALL_LEAF_SIZE = 16_384
"""Leaves of at most this many elements (and at most 2 dimensions) are packed; larger ones stay separate arrays.
π0's largest layer vector is SigLIP's padded feed-forward bias (4320 elements); its smallest layer matrix, SigLIP's
output projection, has 1.3 million."""


STACKS_RELEASED = (
    "this model's stacked layer weights were released (Pi0.split_layer_weights: a Policy on an accelerator keeps "
    "only the per-layer weights, one copy in memory); pass layer_weights=policy.layer_weights to the model's passes, "
    "or load the policy with weights_per_layer=False to keep the stacks"
)


def empty_stack(a: jax.Array) -> jax.Array:
    """The stand-in for a released stack: no layers, the same dtype and per-layer shape."""
    return jnp.zeros((0, *a.shape[1:]), a.dtype)


def release_stacks(module: nnx.Module) -> None:
    """Replace every variable of ``module`` (weights stacked over layers) by its ``empty_stack``. The arrays are
    shared with any model ``module`` was split from: call it on a copy (``Pi0.split_layer_weights`` does)."""
    nnx.update(module, jax.tree.map(empty_stack, nnx.state(module)))


@struct.dataclass
class LayerLeaves:
    """The leaves of ``depth`` layers with equal structure: large leaves per layer, small leaves packed.

    ``large[i]`` holds layer i's large leaves in leaf order. ``small`` holds one array per dtype, ``[depth, n,
    width]``: row j of layer i is one small leaf, flattened and zero-padded to ``width``. ``slots`` says, for each
    leaf position, where its value is: ``(-1, k, shape)`` for the k-th large leaf, ``(g, j, shape)`` for row j of
    ``small[g]``."""

    large: tuple
    small: tuple
    slots: tuple = struct.field(pytree_node=False)

    @classmethod
    def pack(cls, layers: Sequence[Sequence[jax.Array]], small_size: int = SMALL_LEAF_SIZE) -> LayerLeaves:
        """``layers``: per layer, its leaves (same shapes and dtypes in every layer). ``small_size`` 0 packs
        nothing."""
        if not layers:
            raise ValueError("no layers to pack")
        first = layers[0]
        slots, groups, large_count = [], {}, 0  # groups: dtype -> leaf positions
        for position, leaf in enumerate(first):
            if 0 < leaf.size <= small_size and leaf.ndim <= 2:
                rows = groups.setdefault(jnp.dtype(leaf.dtype), [])
                slots.append((list(groups).index(jnp.dtype(leaf.dtype)), len(rows), tuple(leaf.shape)))
                rows.append(position)
            else:
                slots.append((-1, large_count, tuple(leaf.shape)))
                large_count += 1
        small = []
        for positions in groups.values():
            width = max(first[p].size for p in positions)
            small.append(
                jnp.stack(
                    [
                        jnp.stack([jnp.pad(layer[p].reshape(-1), (0, width - layer[p].size)) for p in positions])
                        for layer in layers
                    ]
                )
            )
        large = tuple(tuple(layer[p] for p, slot in enumerate(slots) if slot[0] < 0) for layer in layers)
        return cls(large=large, small=tuple(small), slots=tuple(slots))

    def __len__(self) -> int:
        return len(self.large)

    def layer(self, i: int) -> list[jax.Array]:
        """Layer ``i``'s leaves, in leaf order."""
        leaves = []
        for group, index, shape in self.slots:
            if group < 0:
                leaves.append(self.large[i][index])
            else:
                leaves.append(self.small[group][i, index, : int(np.prod(shape))].reshape(shape))
        return leaves

    def trees(self, treedef: jax.tree_util.PyTreeDef) -> tuple:
        """Every layer's leaves put back into ``treedef``, one tree per layer."""
        return tuple(jax.tree.unflatten(treedef, self.layer(i)) for i in range(len(self)))

    @property
    def arrays(self) -> int:
        """How many arrays a call is passed for these leaves."""
        return sum(len(layer) for layer in self.large) + len(self.small)
