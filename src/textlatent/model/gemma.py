"""Gemma as a mixture of experts that share attention: PaliGemma (stream 0) and the action expert (stream 1).

Parameter names and shapes are openpi's (``PaliGemma/llm/...``), with layers stacked on a leading depth axis and
run with ``lax.scan`` so that one block is traced. Stream ``i ≥ 1`` modules carry the suffix ``_i``.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx, struct
from jax import lax

from textlatent.model import ops
from textlatent.model.config import GemmaConfig
from textlatent.model.intervention import ResidualEdit

# (K, V), each [depth, B, S, num_kv_heads, head_dim].
KVCache = tuple[jax.Array, jax.Array]


@struct.dataclass
class LayerWeights:
    """Some streams' layer parameters cut into one state per layer (``Gemma.layer_weights``); the other streams'
    parameters stay stacked in ``rest`` and must not run.

    The states are kept as tuples of arrays (with their tree structure as static data): a jitted call flattens
    tuples in C++, while nnx states are flattened in Python, ~1 µs a leaf — about a millisecond a call for π0."""

    graphdef: nnx.GraphDef = struct.field(pytree_node=False)
    layers: tuple  # per layer: the leaves of its nnx.State
    rest_leaves: tuple
    gating: tuple  # per layer, per stream: (W_gate, W_up) or None (the stacked ``gating_einsum`` stays in ``rest``)
    streams: tuple[int, ...] = struct.field(pytree_node=False)
    layer_def: jax.tree_util.PyTreeDef = struct.field(pytree_node=False)
    rest_def: jax.tree_util.PyTreeDef = struct.field(pytree_node=False)

    @property
    def per_layer(self) -> tuple:
        """One nnx.State per layer."""
        return tuple(jax.tree.unflatten(self.layer_def, leaves) for leaves in self.layers)

    @property
    def rest(self) -> nnx.State:
        return jax.tree.unflatten(self.rest_def, self.rest_leaves)


_init_lecun = jax.nn.initializers.lecun_normal


def _suffix(name: str, stream: int) -> str:
    return name if stream == 0 else f"{name}_{stream}"


class Einsum(nnx.Module):
    """A weight ``w`` used through ``jnp.einsum`` after casting it to the activation dtype."""

    def __init__(self, shape: tuple[int, ...], init, rngs: nnx.Rngs):
        self.w = nnx.Param(init(rngs.params(), shape, jnp.float32))

    def __call__(self, eqn: str, x: jax.Array) -> jax.Array:
        return jnp.einsum(eqn, x, self.w[...].astype(x.dtype))


class RMSNorm(nnx.Module):
    def __init__(self, shape: tuple[int, ...]):
        self.scale = nnx.Param(jnp.zeros(shape, jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        return ops.rms_norm(x, self.scale[...])


class FeedForward(nnx.Module):
    """GeGLU: ``(gelu(x W_gate) * (x W_up)) W_down``, all in the activation dtype."""

    def __init__(self, depth: int, width: int, hidden: int, rngs: nnx.Rngs):
        self.gating_einsum = nnx.Param(
            _init_lecun(in_axis=-2, out_axis=-1, batch_axis=(0, 1))(rngs.params(), (depth, 2, width, hidden))
        )
        self.linear = nnx.Param(
            _init_lecun(in_axis=-2, out_axis=-1, batch_axis=(0,))(rngs.params(), (depth, hidden, width))
        )

    def __call__(self, x: jax.Array, gating: Sequence[jax.Array] | None = None) -> jax.Array:
        """``gating``: this layer's (W_gate, W_up), when already cut out of ``gating_einsum`` (``Gemma.layer_weights``)."""
        gating = self.gating_einsum[...] if gating is None else gating
        gate = ops.gelu(jnp.dot(x, gating[0].astype(x.dtype)))
        up = jnp.dot(x, gating[1].astype(x.dtype))
        return jnp.dot(gate * up, self.linear[...].astype(x.dtype))


class Block(nnx.Module):
    """One transformer layer for all streams. Parameters are created stacked over ``depth``; ``Gemma`` scans them."""

    def __init__(self, configs: Sequence[GemmaConfig], rngs: nnx.Rngs):
        depth = configs[0].depth
        self.configs = tuple(configs)
        self.attn = Attention(configs, rngs)
        for i, c in enumerate(configs):
            setattr(self, _suffix("pre_attention_norm", i), RMSNorm((depth, c.width)))
            setattr(self, _suffix("pre_ffw_norm", i), RMSNorm((depth, c.width)))
            setattr(self, _suffix("mlp", i), FeedForward(depth, c.width, c.mlp_dim, rngs))

    def __call__(self, xs, positions, mask, kv_cache):
        out, kv_cache, _ = self.forward(xs, positions, mask, kv_cache)
        return out, kv_cache

    def forward(self, xs, positions, mask, kv_cache, attention_queries: jax.Array | None = None, gating=None):
        """The layer, plus stream-0 attention probabilities at ``attention_queries`` (see ``Attention.forward``).
        ``gating``: per stream, (W_gate, W_up) of this layer or None (``FeedForward``)."""
        normed = [None if x is None else getattr(self, _suffix("pre_attention_norm", i))(x) for i, x in enumerate(xs)]
        attn_out, kv_cache, probs = self.attn.forward(normed, positions, mask, kv_cache, attention_queries)
        xs = [None if x is None else x + y for x, y in zip(xs, attn_out, strict=True)]
        out = []
        for i, x in enumerate(xs):
            if x is None:
                out.append(None)
                continue
            mlp_gating = None if gating is None else gating[i]
            y = getattr(self, _suffix("mlp", i))(getattr(self, _suffix("pre_ffw_norm", i))(x), mlp_gating)
            out.append(x + y)
        return out, kv_cache, probs


class Attention(nnx.Module):
    """Joint multi-query attention: each stream has its own projections; tokens of all streams attend together."""

    def __init__(self, configs: Sequence[GemmaConfig], rngs: nnx.Rngs):
        self.configs = tuple(configs)
        depth = configs[0].depth
        for i, c in enumerate(configs):
            if c.num_kv_heads == c.num_heads:
                raise NotImplementedError("multi-head (qkv_einsum) Gemma variants are not used by π0")
            q_init = _init_lecun(in_axis=-2, out_axis=-1, batch_axis=(0, 1))
            kv_init = _init_lecun(in_axis=-2, out_axis=-1, batch_axis=(0, 1, 2))
            out_init = _init_lecun(in_axis=(-3, -2), out_axis=-1, batch_axis=(0,))
            setattr(self, _suffix("q_einsum", i), Einsum((depth, c.num_heads, c.width, c.head_dim), q_init, rngs))
            setattr(
                self, _suffix("kv_einsum", i), Einsum((depth, 2, c.num_kv_heads, c.width, c.head_dim), kv_init, rngs)
            )
            setattr(
                self, _suffix("attn_vec_einsum", i), Einsum((depth, c.num_heads, c.head_dim, c.width), out_init, rngs)
            )

    def __call__(self, xs, positions, mask, kv_cache):
        """xs: per stream [B, T_i, D_i] or None; positions int[B, T]; mask bool[B, 1, T, S]."""
        out, kv_cache, _ = self.forward(xs, positions, mask, kv_cache)
        return out, kv_cache

    def forward(self, xs, positions, mask, kv_cache, attention_queries: jax.Array | None = None):
        """``__call__``, and also the attention probabilities of the queries at ``attention_queries``.

        attention_queries: int[Q] indices into the present tokens (stream 0 comes first, so these are stream-0
        positions when stream 0 runs), or None. Returns (outputs per stream, (K, V), probabilities float32
        [B, num_heads, Q, S] over all S keys, or None when not asked — then nothing extra is computed).
        """
        qkvs = []
        for i, x in enumerate(xs):
            if x is None:
                continue
            q = getattr(self, _suffix("q_einsum", i))("BTD,NDH->BTNH", x)
            k, v = getattr(self, _suffix("kv_einsum", i))("BSD,2KDH->2BSKH", x)
            qkvs.append((q, k, v))
        q, k, v = (jnp.concatenate(y, axis=1) for y in zip(*qkvs, strict=True))

        head_dim = self.configs[0].head_dim
        q = ops.apply_rope(q, positions)
        q *= head_dim**-0.5
        k = ops.apply_rope(k, positions)

        if kv_cache is not None:
            cache_k, cache_v = kv_cache
            k = jnp.concatenate([cache_k, k], axis=1)
            v = jnp.concatenate([cache_v, v], axis=1)

        b, t, n, h = q.shape
        kv_heads = self.configs[0].num_kv_heads
        q = q.reshape(b, t, kv_heads, n // kv_heads, h)
        logits = jnp.einsum("BTKGH,BSKH->BKGTS", q, k, preferred_element_type=jnp.float32)
        if mask.shape != (b, 1, t, k.shape[1]):
            raise ValueError(f"attention mask has shape {mask.shape}, expected {(b, 1, t, k.shape[1])}")
        logits = jnp.where(mask[:, :, None, :, :], logits, ops.ATTENTION_MASK_VALUE)
        probs_f32 = jax.nn.softmax(logits, axis=-1)
        probs = probs_f32.astype(k.dtype)
        encoded = jnp.einsum("BKGTS,BSKH->BTKGH", probs, v).reshape(b, t, n, h)
        queried = None
        if attention_queries is not None:
            # The float32 softmax, before the cast to the value dtype; heads in q_einsum order (kv head major).
            queried = probs_f32[:, :, :, attention_queries, :].reshape(b, n, -1, k.shape[1])

        out, start = [], 0
        for i, x in enumerate(xs):
            if x is None:
                out.append(None)
                continue
            end = start + x.shape[1]
            out.append(getattr(self, _suffix("attn_vec_einsum", i))("BTNH,NHD->BTD", encoded[:, start:end]))
            start = end
        return out, (k, v), queried


class Embedder(nnx.Module):
    def __init__(self, vocab_size: int, width: int, rngs: nnx.Rngs):
        self.input_embedding = nnx.Param(jax.nn.initializers.normal(1.0)(rngs.params(), (vocab_size, width)))

    def encode(self, tokens: jax.Array) -> jax.Array:
        table = self.input_embedding[...]
        x = table[(tokens,)]
        # sqrt(width) is rounded to the table dtype: 45.25 for bf16 params, 45.254833 for float32.
        x *= jnp.sqrt(table.shape[-1]).astype(x.dtype)
        return x


class Gemma(nnx.Module):
    """The shared-attention transformer. Named ``llm`` inside ``PaliGemma``."""

    def __init__(
        self,
        configs: Sequence[GemmaConfig],
        *,
        vocab_size: int,
        embed_dtype: str,
        rngs: nnx.Rngs,
        unroll_layers: bool = False,
    ):
        self.configs = tuple(configs)
        self.unroll_layers = unroll_layers
        self.embed_dtype = jnp.dtype(embed_dtype)
        self.embedder = Embedder(vocab_size, configs[0].width, rngs)
        self.layers = Block(configs, rngs)
        for i, c in enumerate(configs):
            setattr(self, _suffix("final_norm", i), RMSNorm((c.width,)))

    @property
    def depth(self) -> int:
        return self.configs[0].depth

    def layer_weights(self, streams: Sequence[int]) -> LayerWeights:
        """The layer parameters of ``streams`` cut into one state per layer, for ``forward(..., layer_weights=...)``.

        Slicing a layer out of the stacked weights is a copy on GPU, and inside a loop over passes (the flow steps)
        it is repeated every pass. Cut once here, outside that loop, every pass reads the same per-layer copies. The
        feed-forward gate and up matrices are cut apart here too (their split is a copy as well)."""
        streams = tuple(sorted(set(streams)))

        def stream_of(path) -> int:
            for key in path:
                name, _, number = str(key).rpartition("_")
                if name and number.isdigit():
                    return int(number)
            return 0

        def cut(path, _) -> bool:
            return stream_of(path) in streams and "gating_einsum" not in (str(key) for key in path)

        graphdef, sliced, rest = nnx.split(self.layers, cut, ...)
        leaves, layer_def = jax.tree.flatten(sliced)
        layers = tuple(tuple(a[i] for a in leaves) for i in range(self.depth))
        rest_leaves, rest_def = jax.tree.flatten(rest)
        mlps = [getattr(self.layers, _suffix("mlp", s)) for s in range(len(self.configs))]
        stacked = [mlp.gating_einsum[...] if s in streams else None for s, mlp in enumerate(mlps)]
        gating = tuple(tuple(None if g is None else (g[i, 0], g[i, 1]) for g in stacked) for i in range(self.depth))
        return LayerWeights(
            graphdef=graphdef,
            layers=layers,
            rest_leaves=tuple(rest_leaves),
            gating=gating,
            streams=streams,
            layer_def=layer_def,
            rest_def=rest_def,
        )

    def embed(self, tokens: jax.Array) -> jax.Array:
        return self.embedder.encode(tokens).astype(self.embed_dtype)

    def __call__(
        self,
        embedded: Sequence[jax.Array | None],
        positions: jax.Array,
        mask: jax.Array,
        *,
        kv_cache: KVCache | None = None,
        edit: ResidualEdit | None = None,
        capture_positions: jax.Array | None = None,
    ) -> tuple[list[jax.Array | None], KVCache, jax.Array | None]:
        """``forward`` without attention probabilities: (outputs per stream, (K, V), captured or None)."""
        outputs, kv_cache, captured, _ = self.forward(
            embedded, positions, mask, kv_cache=kv_cache, edit=edit, capture_positions=capture_positions
        )
        return outputs, kv_cache, captured

    def forward(
        self,
        embedded: Sequence[jax.Array | None],
        positions: jax.Array,
        mask: jax.Array,
        *,
        kv_cache: KVCache | None = None,
        edit: ResidualEdit | None = None,
        capture_positions: jax.Array | None = None,
        attention_queries: jax.Array | None = None,
        layer_weights: LayerWeights | None = None,
    ) -> tuple[list[jax.Array | None], KVCache, jax.Array | None, jax.Array | None]:
        """Run all layers.

        Args:
          embedded: per stream [B, T_i, D_i] or None (stream not run).
          positions: int[B, T] RoPE positions of the present tokens.
          mask: bool[B, T, S] — which of the S keys (cache first, then present tokens) each query sees.
          kv_cache: keys/values of earlier tokens, [depth, B, S_cache, K, H] each.
          edit: additions/replacement in stream 0's residual stream (see ``ResidualEdit``).
          capture_positions: int[P] stream-0 positions whose residual stream entering each block is returned.
          attention_queries: int[Q] stream-0 positions whose attention rows are returned, or None. The option is
            static (Python-level): with None nothing extra is traced or returned.
          layer_weights: this model's ``layer_weights(streams)`` for every stream that runs: the layers then run as
            straight-line code over those per-layer weights (the same arithmetic) instead of a scan over the stacks.

        Returns:
          (final-normed outputs per stream, (K, V) of all keys per layer, captured [depth, B, P, D_0] or None,
          attention float32 [depth, B, num_heads, Q, S] — softmax probabilities over all S keys, exactly 0 on keys
          the mask hides — or None).
        """
        xs = [None if e is None else e.astype(self.embed_dtype) for e in embedded]
        stream0_options = edit is not None or capture_positions is not None or attention_queries is not None
        if stream0_options and xs[0] is None:
            raise ValueError(
                "residual edits, captures and attention probabilities apply to the PaliGemma (prefix) stream, "
                "which is not run"
            )
        if attention_queries is not None:
            attention_queries = jnp.asarray(attention_queries, jnp.int32)
            if attention_queries.ndim != 1:
                raise ValueError(f"attention_queries must be 1-D int positions, got shape {attention_queries.shape}")
        if edit is not None:
            edit.validate(self.depth, xs[0].shape[1], self.configs[0].width)
            if edit.replace_embeddings is not None:
                xs[0] = (
                    xs[0]
                    .at[:, edit.positions]
                    .set(
                        jnp.broadcast_to(
                            edit.replace_embeddings.astype(xs[0].dtype),
                            (xs[0].shape[0], *edit.replace_embeddings.shape[1:]),
                        ),
                        mode="drop",
                    )
                )
        delta = None if edit is None else edit.delta
        mask = jnp.asarray(mask)[:, None, :, :]

        graphdef, layer_state = nnx.split(self.layers)

        def run_layer(xs, layer_in):
            state, cache, layer_delta, gating = layer_in
            if layer_delta is not None:
                xs = [xs[0].at[:, edit.positions].add(layer_delta.astype(xs[0].dtype), mode="drop"), *xs[1:]]
            captured = (
                None
                if capture_positions is None
                else jnp.take(xs[0], capture_positions, axis=1, mode="fill", fill_value=jnp.nan)
            )
            block = nnx.merge(graphdef, *state) if layer_weights is not None else nnx.merge(graphdef, state)
            xs, cache, attention = block.forward(xs, positions, mask, cache, attention_queries, gating)
            # ``attention`` is None unless asked: a None leaf adds no scan output.
            return xs, (cache, captured, attention)

        if layer_weights is None:
            xs, (kv_cache, captured, attention) = lax.scan(
                run_layer, xs, (layer_state, kv_cache, delta, None), unroll=self.unroll_layers
            )
        else:
            running = [i for i, x in enumerate(xs) if x is not None]
            if not set(running) <= set(layer_weights.streams):
                raise ValueError(f"layer_weights cover streams {layer_weights.streams}, but streams {running} run")
            graphdef, outs, rest = layer_weights.graphdef, [], layer_weights.rest
            for i, (weights, gating) in enumerate(zip(layer_weights.per_layer, layer_weights.gating, strict=True)):
                cache = None if kv_cache is None else jax.tree.map(lambda a, i=i: a[i], kv_cache)
                layer_delta = None if delta is None else delta[i]
                xs, out = run_layer(xs, ((weights, rest), cache, layer_delta, gating))
                outs.append(out)
            kv_cache, captured, attention = jax.tree.map(lambda *a: jnp.stack(a), *outs)
        outputs = [None if x is None else getattr(self, _suffix("final_norm", i))(x) for i, x in enumerate(xs)]
        return outputs, kv_cache, captured, attention
