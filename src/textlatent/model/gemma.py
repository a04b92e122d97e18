"""Gemma as a mixture of experts that share attention: PaliGemma (stream 0) and the action expert (stream 1).

Parameter names and shapes are openpi's (``PaliGemma/llm/...``), with layers stacked on a leading depth axis and
run with ``lax.scan`` so that one block is traced. Stream ``i ≥ 1`` modules carry the suffix ``_i``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx, struct
from jax import lax

from textlatent.model import ops
from textlatent.model.config import GemmaConfig
from textlatent.model.intervention import ResidualEdit
from textlatent.model.packing import SMALL_LEAF_SIZE, STACKS_RELEASED, LayerLeaves, empty_stack, release_stacks

# (K, V), each [depth, B, S, num_kv_heads, head_dim].
KVCache = tuple[jax.Array, jax.Array]


@struct.dataclass
class SuffixBuffers:
    """Key/value buffers for repeated passes of new tokens over one cache (the flow steps over the prefix): per
    layer [B, S + T, K, H], the cache's S keys first, then room for the T new keys, which every pass writes in place
    (``lax.dynamic_update_slice``) instead of concatenating a fresh copy of the cache. The keys each query sees, and
    their order, are those of the concatenation. Straight-line layers only (``Gemma.forward(layer_weights=...)``)."""

    k: tuple  # per layer
    v: tuple
    start: int = struct.field(pytree_node=False)  # S: where the new keys go

    @classmethod
    def from_cache(cls, kv_cache: KVCache, new_tokens: int) -> SuffixBuffers:
        k, v = kv_cache
        widths = [(0, 0)] * (k.ndim - 1)
        widths[1] = (0, new_tokens)
        return cls(k=tuple(jnp.pad(a, widths) for a in k), v=tuple(jnp.pad(a, widths) for a in v), start=k.shape[2])


@struct.dataclass
class LayerWeights:
    """Some streams' layer parameters cut into one state per layer (``Gemma.layer_weights``); the other streams'
    parameters stay stacked in ``rest`` and must not run.

    The states are kept as tuples of arrays (with their tree structure as static data): a jitted call flattens
    tuples in C++, while nnx states are flattened in Python, ~1 µs a leaf — about a millisecond a call for π0."""

    graphdef: nnx.GraphDef = struct.field(pytree_node=False)
    layers: LayerLeaves  # the leaves of each layer's nnx.State, vectors packed
    rest_leaves: tuple
    fused: tuple  # per layer, per stream: ``FusedProjections`` or None (that stream's stacks stay in ``rest``)
    streams: tuple[int, ...] = struct.field(pytree_node=False)
    layer_def: jax.tree_util.PyTreeDef = struct.field(pytree_node=False)
    rest_def: jax.tree_util.PyTreeDef = struct.field(pytree_node=False)

    @property
    def per_layer(self) -> tuple:
        """One nnx.State per layer."""
        return self.layers.trees(self.layer_def)

    @property
    def rest(self) -> nnx.State:
        return jax.tree.unflatten(self.rest_def, self.rest_leaves)

    def without_rest_stacks(self) -> LayerWeights:
        """These weights with ``rest`` (the stacks the fused projections were laid out from, and streams that do not
        run) replaced by empty stand-ins: the straight-line layers never read them, and a holder that released the
        model's stacks (``Gemma.release_layer_stacks``) must not keep them alive here."""
        return self.replace(rest_leaves=tuple(empty_stack(a) for a in self.rest_leaves))


class FusedProjections(NamedTuple):
    """One layer's input projections of one stream, each as a single matrix (``Gemma.layer_weights``): a layer then
    runs one matrix product for q, k and v and one for gate and up, reading weights laid out for it, instead of
    several products whose weights XLA would concatenate or slice again in every call. Every output column is the
    same dot product as in the separate projections."""

    qkv: jax.Array  # [D, (N + 2K)·H]: q heads, then k heads, then v heads, each head's H columns together
    gate_up: jax.Array  # [D, 2F]: W_gate then W_up


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

    def __call__(self, x: jax.Array, gate_up: jax.Array | None = None) -> jax.Array:
        """``gate_up``: this layer's [W_gate | W_up] as one matrix (``FusedProjections``), or None to read them from
        ``gating_einsum``."""
        if gate_up is None:
            gating = self.gating_einsum[...]
            gate, up = jnp.dot(x, gating[0].astype(x.dtype)), jnp.dot(x, gating[1].astype(x.dtype))
        else:
            both = jnp.dot(x, gate_up.astype(x.dtype))
            gate, up = jnp.split(both, 2, axis=-1)
        return jnp.dot(ops.gelu(gate) * up, self.linear[...].astype(x.dtype))


class Block(nnx.Module):
    """One transformer layer for all streams. Parameters are created stacked over ``depth``; ``Gemma`` scans them."""

    def __init__(
        self,
        configs: Sequence[GemmaConfig],
        rngs: nnx.Rngs,
        *,
        token_major_attention: bool = False,
        flash_attention: bool = False,
    ):
        depth = configs[0].depth
        self.configs = tuple(configs)
        self.attn = Attention(configs, rngs, token_major=token_major_attention, flash=flash_attention)
        for i, c in enumerate(configs):
            setattr(self, _suffix("pre_attention_norm", i), RMSNorm((depth, c.width)))
            setattr(self, _suffix("pre_ffw_norm", i), RMSNorm((depth, c.width)))
            setattr(self, _suffix("mlp", i), FeedForward(depth, c.width, c.mlp_dim, rngs))

    def __call__(self, xs, positions, mask, kv_cache):
        out, kv_cache, _ = self.forward(xs, positions, mask, kv_cache)
        return out, kv_cache

    def forward(
        self,
        xs,
        positions,
        mask,
        kv_cache,
        attention_queries: jax.Array | None = None,
        fused=None,
        query_rows: jax.Array | None = None,
    ):
        """The layer, plus stream-0 attention probabilities at ``attention_queries`` (see ``Attention.forward``).
        ``fused``: per stream, this layer's ``FusedProjections`` or None (read the stacks). ``query_rows``: compute the
        layer's output only at these token rows (all tokens still give keys and values; see ``Attention.forward``)."""
        normed = [None if x is None else getattr(self, _suffix("pre_attention_norm", i))(x) for i, x in enumerate(xs)]
        qkv = None if fused is None else [None if f is None else f.qkv for f in fused]
        attn_out, kv_cache, probs = self.attn.forward(
            normed, positions, mask, kv_cache, attention_queries, query_rows=query_rows, qkv=qkv
        )
        if query_rows is not None:
            xs = [jnp.take(xs[0], query_rows, axis=1), *xs[1:]]
        xs = [None if x is None else x + y for x, y in zip(xs, attn_out, strict=True)]
        out = []
        for i, x in enumerate(xs):
            if x is None:
                out.append(None)
                continue
            gate_up = None if fused is None or fused[i] is None else fused[i].gate_up
            y = getattr(self, _suffix("mlp", i))(getattr(self, _suffix("pre_ffw_norm", i))(x), gate_up)
            out.append(x + y)
        return out, kv_cache, probs


class Attention(nnx.Module):
    """Joint multi-query attention: each stream has its own projections; tokens of all streams attend together.

    ``token_major``: the query heads that share a key/value head are laid out as rows in token order
    (``[B, K, T·G, S]``, which for multi-query attention is ``q`` as it comes out of its projection, reshaped) rather
    than openpi's head order (``[B, K, G·T, S]``). Every logit and every output is the same dot product; the layout
    just lets XLA on a GPU run the softmax along contiguous rows and feed the output projection without transposes.
    Off (openpi's layout) by default.

    ``flash``: on a GPU, passes without a cache (the prefix) run cuDNN's fused attention (``ops.flash_attention``).
    Passes over a cache (the flow steps' few queries) keep the matrix products, which are faster there."""

    def __init__(
        self, configs: Sequence[GemmaConfig], rngs: nnx.Rngs, *, token_major: bool = False, flash: bool = False
    ):
        self.configs = tuple(configs)
        self.token_major = token_major
        self.flash = flash
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

    def forward(
        self,
        xs,
        positions,
        mask,
        kv_cache,
        attention_queries: jax.Array | None = None,
        *,
        query_rows: jax.Array | None = None,
        qkv: Sequence[jax.Array | None] | None = None,
    ):
        """``__call__``, and also the attention probabilities of the queries at ``attention_queries``.

        attention_queries: int[Q] indices into the present tokens (stream 0 comes first, so these are stream-0
        positions when stream 0 runs), or None. Returns (outputs per stream, (K, V), probabilities float32
        [B, num_heads, Q, S] over all S keys, or None when not asked — then nothing extra is computed).
        query_rows: int[R] token rows whose outputs are wanted (stream 0 alone), or None for all: every token still
        gives its key and value, but only these rows query — each output row is the one the full layer computes.
        qkv: per stream, this layer's fused q/k/v matrix (``FusedProjections.qkv``) or None (read the stacks).
        """
        if query_rows is not None and (len(xs) < 1 or xs[0] is None or any(x is not None for x in xs[1:])):
            raise ValueError("query_rows is for a pass of stream 0 alone")
        qkvs = []
        for i, x in enumerate(xs):
            if x is None:
                continue
            if qkv is None or qkv[i] is None:
                q = getattr(self, _suffix("q_einsum", i))("BTD,NDH->BTNH", x)
                k, v = getattr(self, _suffix("kv_einsum", i))("BSD,2KDH->2BSKH", x)
            else:
                c = self.configs[i]
                y = jnp.dot(x, qkv[i].astype(x.dtype))
                q, k, v = jnp.split(y, [c.num_heads * c.head_dim, (c.num_heads + c.num_kv_heads) * c.head_dim], -1)
                q = q.reshape(*x.shape[:2], c.num_heads, c.head_dim)
                k = k.reshape(*x.shape[:2], c.num_kv_heads, c.head_dim)
                v = v.reshape(*x.shape[:2], c.num_kv_heads, c.head_dim)
            qkvs.append((q, k, v))
        q, k, v = (jnp.concatenate(y, axis=1) for y in zip(*qkvs, strict=True))

        head_dim = self.configs[0].head_dim
        q = ops.apply_rope(q, positions)
        q *= head_dim**-0.5
        k = ops.apply_rope(k, positions)

        if isinstance(kv_cache, SuffixBuffers):  # one layer's buffers: write the new keys in place
            k = lax.dynamic_update_slice_in_dim(kv_cache.k[0], k, kv_cache.start, axis=1)
            v = lax.dynamic_update_slice_in_dim(kv_cache.v[0], v, kv_cache.start, axis=1)
        elif kv_cache is not None:
            cache_k, cache_v = kv_cache
            k = jnp.concatenate([cache_k, k], axis=1)
            v = jnp.concatenate([cache_v, v], axis=1)
        if query_rows is not None:
            q = jnp.take(q, query_rows, axis=1)
            mask = jnp.take(mask, query_rows, axis=2)

        b, t, n, h = q.shape
        if mask.shape != (b, 1, t, k.shape[1]):
            raise ValueError(f"attention mask has shape {mask.shape}, expected {(b, 1, t, k.shape[1])}")
        if kv_cache is None and attention_queries is None and ops.flash_attention_available(self.flash, b * t):
            return self._project_out(xs, ops.flash_attention(q, k, v, mask), query_rows), (k, v), None
        kv_heads = self.configs[0].num_kv_heads
        q = q.reshape(b, t, kv_heads, n // kv_heads, h)
        # Logit layout: token-major rows [B, K, T, G, S] or openpi's head-major [B, K, G, T, S].
        scores, mask = ("BKTGS", mask[:, :, :, None, :]) if self.token_major else ("BKGTS", mask[:, :, None, :, :])
        logits = jnp.einsum(f"BTKGH,BSKH->{scores}", q, k, preferred_element_type=jnp.float32)
        logits = jnp.where(mask, logits, ops.ATTENTION_MASK_VALUE)
        probs_f32 = jax.nn.softmax(logits, axis=-1)
        probs = probs_f32.astype(k.dtype)
        if self.token_major:
            # probs first: the product's rows come out token-major, [B, K, T, G, H], which (for one key head) is
            # the output projection's input as it is laid out. ``jnp.einsum`` would put v first and leave a
            # transpose that XLA then folds, slowly, into the output projection.
            encoded = lax.dot_general(probs, v, (((4,), (1,)), ((0, 1), (0, 2))))
            encoded = jnp.transpose(encoded, (0, 2, 1, 3, 4)).reshape(b, t, n, h)
        else:
            encoded = jnp.einsum(f"{scores},BSKH->BTKGH", probs, v).reshape(b, t, n, h)
        queried = None
        if attention_queries is not None:
            # The float32 softmax, before the cast to the value dtype; heads in q_einsum order (kv head major).
            head_major = jnp.swapaxes(probs_f32, 2, 3) if self.token_major else probs_f32
            queried = head_major[:, :, :, attention_queries, :].reshape(b, n, -1, k.shape[1])

        kv_out = SuffixBuffers((k,), (v,), kv_cache.start) if isinstance(kv_cache, SuffixBuffers) else (k, v)
        return self._project_out(xs, encoded, query_rows), kv_out, queried

    def _project_out(self, xs, encoded, query_rows) -> list:
        """Each stream's rows of ``encoded`` [B, T, N, H] through its output projection."""
        out, start = [], 0
        for i, x in enumerate(xs):
            if x is None:
                out.append(None)
                continue
            end = start + (x.shape[1] if query_rows is None else encoded.shape[1])
            projection = getattr(self, _suffix("attn_vec_einsum", i))
            if self.token_major:  # one product over the flattened heads: [B, T, N·H] @ [N·H, D]
                rows = encoded[:, start:end]
                w = projection.w[...]
                flat = rows.reshape(*rows.shape[:2], -1)
                out.append(jnp.dot(flat, w.reshape(-1, w.shape[-1]).astype(flat.dtype)))
            else:
                out.append(projection("BTNH,NHD->BTD", encoded[:, start:end]))
            start = end
        return out


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
        token_major_attention: bool = False,
        flash_attention: bool = False,
    ):
        self.configs = tuple(configs)
        self.unroll_layers = unroll_layers
        self.embed_dtype = jnp.dtype(embed_dtype)
        self.embedder = Embedder(vocab_size, configs[0].width, rngs)
        self.layers = Block(configs, rngs, token_major_attention=token_major_attention, flash_attention=flash_attention)
        for i, c in enumerate(configs):
            setattr(self, _suffix("final_norm", i), RMSNorm((c.width,)))
        self.layer_stacks_released = False

    def release_layer_stacks(self) -> None:
        """Replace the stacked layer weights by empty stand-ins (``packing.release_stacks``), for a holder of this
        model's ``layer_weights`` that wants one copy of the weights in memory. Passes then need ``layer_weights``;
        without them they raise."""
        release_stacks(self.layers)
        self.layer_stacks_released = True

    @property
    def depth(self) -> int:
        return self.configs[0].depth

    def layer_weights(self, streams: Sequence[int], small_size: int = SMALL_LEAF_SIZE) -> LayerWeights:
        """The layer parameters of ``streams`` cut into one state per layer, for ``forward(..., layer_weights=...)``,
        the layers' vectors (norm scales) packed into one array (``LayerLeaves``; ``small_size`` 0 packs nothing).

        Slicing a layer out of the stacked weights is a copy on GPU, and inside a loop over passes (the flow steps)
        it is repeated every pass. Cut once here, outside that loop, every pass reads the same per-layer copies. The
        input projections are laid out here as one matrix each for q/k/v and gate/up (``FusedProjections``): XLA
        would otherwise transpose or concatenate those weights again in every pass."""
        if self.layer_stacks_released:
            raise ValueError(STACKS_RELEASED)
        streams = tuple(sorted(set(streams)))

        def stream_of(path) -> int:
            for key in path:
                name, _, number = str(key).rpartition("_")
                if name and number.isdigit():
                    return int(number)
            return 0

        fused_names = {"gating_einsum", "q_einsum", "kv_einsum"}

        def cut(path, _) -> bool:
            names = {str(key).rstrip("0123456789").rstrip("_") for key in path}
            return stream_of(path) in streams and not names & fused_names

        graphdef, sliced, rest = nnx.split(self.layers, cut, ...)
        leaves, layer_def = jax.tree.flatten(sliced)
        layers = LayerLeaves.pack([[a[i] for a in leaves] for i in range(self.depth)], small_size)
        rest_leaves, rest_def = jax.tree.flatten(rest)

        def fused_of(stream: int, layer: int) -> FusedProjections:
            attn = self.layers.attn
            q = getattr(attn, _suffix("q_einsum", stream)).w[...][layer]  # [N, D, H]
            k, v = getattr(attn, _suffix("kv_einsum", stream)).w[...][layer]  # [K, D, H] each
            columns = [w.transpose(1, 0, 2).reshape(w.shape[1], -1) for w in (q, k, v)]
            gate, up = getattr(self.layers, _suffix("mlp", stream)).gating_einsum[...][layer]
            return FusedProjections(qkv=jnp.concatenate(columns, axis=1), gate_up=jnp.concatenate([gate, up], axis=1))

        fused = tuple(
            tuple(fused_of(s, i) if s in streams else None for s in range(len(self.configs))) for i in range(self.depth)
        )
        return LayerWeights(
            graphdef=graphdef,
            layers=layers,
            rest_leaves=tuple(rest_leaves),
            fused=fused,
            streams=streams,
            layer_def=layer_def,
            rest_def=rest_def,
        )

    def _capture_rows(self, x, positions, mask, edit, capture_positions, layer_weights: LayerWeights) -> jax.Array:
        """``forward(..., capture_only=True)`` over per-layer weights: stream 0's residual entering every block at
        ``capture_positions``, [depth, B, P, D]. The residual entering the last block needs the block before it
        only at those rows, and nothing of the last block."""
        tokens = x.shape[1]
        valid = (capture_positions >= 0) & (capture_positions < tokens)
        rows = jnp.clip(capture_positions, 0, tokens - 1)
        graphdef, rest, captured = layer_weights.graphdef, layer_weights.rest, []

        def with_delta(x, i, rows=None):
            if edit is None:
                return x
            added = edit.delta[i].astype(x.dtype)
            if rows is None:
                return x.at[:, edit.positions].add(added, mode="drop")
            # The edit written into full-length zeros, then read at the rows: the same single add per element.
            full = jnp.zeros((x.shape[0], tokens, x.shape[2]), x.dtype).at[:, edit.positions].add(added, mode="drop")
            return x + jnp.take(full, rows, axis=1)

        last = self.depth - 1
        for i, (weights, fused) in enumerate(zip(layer_weights.per_layer, layer_weights.fused, strict=True)):
            if i == last:
                x = with_delta(x, i, rows)
                captured.append(jnp.where(valid[None, :, None], x, jnp.nan))
                break
            x = with_delta(x, i)
            captured.append(jnp.take(x, capture_positions, axis=1, mode="fill", fill_value=jnp.nan))
            block = nnx.merge(graphdef, weights, rest)
            (x, *_), _, _ = block.forward(
                [x] + [None] * (len(self.configs) - 1),
                positions,
                mask,
                None,
                None,
                fused,
                query_rows=rows if i == last - 1 else None,
            )
        return jnp.stack(captured)

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
        capture_only: bool = False,
    ) -> tuple[list[jax.Array | None], KVCache, jax.Array | None, jax.Array | None]:
        """Run all layers.

        Args:
          embedded: per stream [B, T_i, D_i] or None (stream not run).
          positions: int[B, T] RoPE positions of the present tokens.
          mask: bool[B, T, S] — which of the S keys (cache first, then present tokens) each query sees.
          kv_cache: keys/values of earlier tokens, [depth, B, S_cache, K, H] each, or ``SuffixBuffers`` (with
            ``layer_weights``; the updated buffers are then returned in place of the stacked (K, V)).
          edit: additions/replacement in stream 0's residual stream (see ``ResidualEdit``).
          capture_positions: int[P] stream-0 positions whose residual stream entering each block is returned.
          attention_queries: int[Q] stream-0 positions whose attention rows are returned, or None. The option is
            static (Python-level): with None nothing extra is traced or returned.
          layer_weights: this model's ``layer_weights(streams)`` for every stream that runs: the layers then run as
            straight-line code over those per-layer weights (the same arithmetic) instead of a scan over the stacks.
          capture_only: only ``captured`` is wanted (outputs and (K, V) are returned as None). With
            ``layer_weights``, the last block is then not run and the one before it computes only the captured rows
            (their values are those of the full pass); without, every block runs as usual.

        Returns:
          (final-normed outputs per stream, (K, V) of all keys per layer, captured [depth, B, P, D_0] or None,
          attention float32 [depth, B, num_heads, Q, S] — softmax probabilities over all S keys, exactly 0 on keys
          the mask hides — or None).
        """
        if layer_weights is None and self.layer_stacks_released:
            raise ValueError(STACKS_RELEASED)
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
            state, cache, layer_delta, fused = layer_in
            if layer_delta is not None:
                xs = [xs[0].at[:, edit.positions].add(layer_delta.astype(xs[0].dtype), mode="drop"), *xs[1:]]
            captured = (
                None
                if capture_positions is None
                else jnp.take(xs[0], capture_positions, axis=1, mode="fill", fill_value=jnp.nan)
            )
            block = nnx.merge(graphdef, *state) if layer_weights is not None else nnx.merge(graphdef, state)
            xs, cache, attention = block.forward(xs, positions, mask, cache, attention_queries, fused)
            # ``attention`` is None unless asked: a None leaf adds no scan output.
            return xs, (cache, captured, attention)

        if capture_only and (
            capture_positions is None or attention_queries is not None or any(x is not None for x in xs[1:])
        ):
            raise ValueError("capture_only needs capture_positions, stream 0 alone and no attention_queries")
        if isinstance(kv_cache, SuffixBuffers) and layer_weights is None:
            raise ValueError("SuffixBuffers need layer_weights (straight-line layers)")
        if layer_weights is None:
            xs, (kv_cache, captured, attention) = lax.scan(
                run_layer, xs, (layer_state, kv_cache, delta, None), unroll=self.unroll_layers
            )
        elif capture_only:
            captured = self._capture_rows(xs[0], positions, mask, edit, capture_positions, layer_weights)
            return [None] * len(xs), None, captured, None
        else:
            running = [i for i, x in enumerate(xs) if x is not None]
            if not set(running) <= set(layer_weights.streams):
                raise ValueError(f"layer_weights cover streams {layer_weights.streams}, but streams {running} run")
            graphdef, outs, rest = layer_weights.graphdef, [], layer_weights.rest
            buffers = kv_cache if isinstance(kv_cache, SuffixBuffers) else None
            for i, (weights, fused) in enumerate(zip(layer_weights.per_layer, layer_weights.fused, strict=True)):
                if buffers is not None:
                    cache = SuffixBuffers((buffers.k[i],), (buffers.v[i],), buffers.start)
                else:
                    cache = None if kv_cache is None else jax.tree.map(lambda a, i=i: a[i], kv_cache)
                layer_delta = None if delta is None else delta[i]
                xs, out = run_layer(xs, ((weights, rest), cache, layer_delta, fused))
                outs.append(out)
            caches = [cache for cache, _, _ in outs]
            _, captured, attention = jax.tree.map(lambda *a: jnp.stack(a), *[(None, *out[1:]) for out in outs])
            if buffers is not None:  # each layer's updated buffers, kept per layer
                kv_cache = SuffixBuffers(tuple(c.k[0] for c in caches), tuple(c.v[0] for c in caches), buffers.start)
            else:
                kv_cache = jax.tree.map(lambda *a: jnp.stack(a), *caches)
        outputs = [None if x is None else getattr(self, _suffix("final_norm", i))(x) for i, x in enumerate(xs)]
        return outputs, kv_cache, captured, attention
