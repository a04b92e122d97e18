"""Independent float64 numpy implementations of π0's pieces, written from the model's definition (not from the
package's code), used as oracles in the tests."""

from __future__ import annotations

import math

import numpy as np


def f64(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def rms_norm(x, scale, eps=1e-6):
    x = f64(x)
    return x / np.sqrt(np.mean(x**2, axis=-1, keepdims=True) + eps) * (1.0 + f64(scale))


def layer_norm(x, scale, bias, eps=1e-6):
    x = f64(x)
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * f64(scale) + f64(bias)


def gelu_tanh(x):
    x = f64(x)
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def softmax(x, axis=-1):
    x = f64(x)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def rope(x, positions, max_wavelength=10_000):
    """Rotate pair (x[j], x[j + H/2]) by angle position / max_wavelength^(2j/H). x: [B, T, N, H]."""
    x = f64(x)
    half = x.shape[-1] // 2
    out = np.empty_like(x)
    for j in range(half):
        angle = f64(positions)[..., None] / max_wavelength ** (2.0 * j / x.shape[-1])  # [B, T, 1]
        c, s = np.cos(angle), np.sin(angle)
        a, b = x[..., j], x[..., j + half]
        out[..., j] = a * c - b * s
        out[..., j + half] = b * c + a * s
    return out


def attn_mask(valid, ar):
    """mask[b, i, j] = valid[b,i] and valid[b,j] and block(j) <= block(i), block = number of ar flags up to here."""
    valid = np.asarray(valid, bool)
    ar = np.broadcast_to(np.asarray(ar, bool), valid.shape)
    b, n = valid.shape
    out = np.zeros((b, n, n), bool)
    for bi in range(b):
        block = np.cumsum(ar[bi])
        for i in range(n):
            for j in range(n):
                out[bi, i, j] = valid[bi, i] and valid[bi, j] and block[j] <= block[i]
    return out


def gemma_attention(xs, weights, positions, mask, head_dim):
    """Joint MQA over streams. weights[i] = (q [N,D,H], kv [2,1,D,H], out [N,H,D]). mask [B, T, T]."""
    qs, ks, vs = [], [], []
    for x, (wq, wkv, _) in zip(xs, weights, strict=True):
        x = f64(x)
        qs.append(np.einsum("btd,ndh->btnh", x, f64(wq)))
        ks.append(np.einsum("btd,dh->bth", x, f64(wkv)[0, 0]))
        vs.append(np.einsum("btd,dh->bth", x, f64(wkv)[1, 0]))
    q, k, v = (np.concatenate(a, axis=1) for a in (qs, ks, vs))
    q = rope(q, positions) / math.sqrt(head_dim)
    k = rope(k[:, :, None, :], positions)[:, :, 0, :]
    logits = np.einsum("btnh,bsh->bnts", q, k)
    logits = np.where(np.asarray(mask)[:, None], logits, -np.inf)
    # Rows with no visible key: uniform attention over all keys (what a large finite mask value gives).
    empty = ~np.asarray(mask).any(-1)[:, None, :, None]
    logits = np.where(empty, 0.0, logits)
    probs = softmax(logits)
    enc = np.einsum("bnts,bsh->btnh", probs, v)
    outs, start = [], 0
    for x, (_, _, wo) in zip(xs, weights, strict=True):
        end = start + x.shape[1]
        outs.append(np.einsum("btnh,nhd->btd", enc[:, start:end], f64(wo)))
        start = end
    return outs


def geglu(x, gating, linear):
    x = f64(x)
    return (gelu_tanh(x @ f64(gating)[0]) * (x @ f64(gating)[1])) @ f64(linear)


def gemma_layer(xs, layer, positions, mask, head_dim):
    """One block for all streams. layer[i] = dict(pre_attn, pre_ffw, q, kv, out, gating, linear)."""
    normed = [rms_norm(x, p["pre_attn"]) for x, p in zip(xs, layer, strict=True)]
    attn = gemma_attention(normed, [(p["q"], p["kv"], p["out"]) for p in layer], positions, mask, head_dim)
    xs = [f64(x) + a for x, a in zip(xs, attn, strict=True)]
    return [x + geglu(rms_norm(x, p["pre_ffw"]), p["gating"], p["linear"]) for x, p in zip(xs, layer, strict=True)]


def gemma_layers_from_params(llm: dict, depth: int, streams: int) -> list[list[dict]]:
    """Per-layer, per-stream weight dicts from the openpi-named ``PaliGemma/llm`` tree."""
    layers = llm["layers"]

    def sfx(name, i):
        return name if i == 0 else f"{name}_{i}"

    out = []
    for l in range(depth):
        out.append(
            [
                dict(
                    pre_attn=layers[sfx("pre_attention_norm", i)]["scale"][l],
                    pre_ffw=layers[sfx("pre_ffw_norm", i)]["scale"][l],
                    q=layers["attn"][sfx("q_einsum", i)]["w"][l],
                    kv=layers["attn"][sfx("kv_einsum", i)]["w"][l],
                    out=layers["attn"][sfx("attn_vec_einsum", i)]["w"][l],
                    gating=layers[sfx("mlp", i)]["gating_einsum"][l],
                    linear=layers[sfx("mlp", i)]["linear"][l],
                )
                for i in range(streams)
            ]
        )
    return out


def siglip(image, img: dict, num_heads: int, patch: int):
    """ViT forward in float64: patchify, project, + position, pre-norm blocks, final LayerNorm, head."""
    x = f64(image)
    b, h, w, c = x.shape
    gh, gw = h // patch, w // patch
    patches = x.reshape(b, gh, patch, gw, patch, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, gh * gw, patch * patch * c)
    kernel = f64(img["embedding"]["kernel"]).reshape(patch * patch * c, -1)
    x = patches @ kernel + f64(img["embedding"]["bias"]) + f64(img["pos_embedding"])[0]
    blk = img["Transformer"]["encoderblock"]
    depth = np.shape(blk["LayerNorm_0"]["scale"])[0]
    for l in range(depth):

        def p(*path, l=l):
            node = blk
            for k in path:
                node = node[k]
            return f64(node)[l]

        y = layer_norm(x, p("LayerNorm_0", "scale"), p("LayerNorm_0", "bias"))
        att = "MultiHeadDotProductAttention_0"
        q = np.einsum("btd,dnh->btnh", y, p(att, "query", "kernel")) + p(att, "query", "bias")
        k = np.einsum("btd,dnh->btnh", y, p(att, "key", "kernel")) + p(att, "key", "bias")
        v = np.einsum("btd,dnh->btnh", y, p(att, "value", "kernel")) + p(att, "value", "bias")
        probs = softmax(np.einsum("bqnh,bknh->bnqk", q / math.sqrt(q.shape[-1]), k))
        enc = np.einsum("bnqk,bknh->bqnh", probs, v)
        x = x + np.einsum("bqnh,nhd->bqd", enc, p(att, "out", "kernel")) + p(att, "out", "bias")
        y = layer_norm(x, p("LayerNorm_1", "scale"), p("LayerNorm_1", "bias"))
        hdn = gelu_tanh(y @ p("MlpBlock_0", "Dense_0", "kernel") + p("MlpBlock_0", "Dense_0", "bias"))
        x = x + hdn @ p("MlpBlock_0", "Dense_1", "kernel") + p("MlpBlock_0", "Dense_1", "bias")
    x = layer_norm(x, img["Transformer"]["encoder_norm"]["scale"], img["Transformer"]["encoder_norm"]["bias"])
    return x @ f64(img["head"]["kernel"]) + f64(img["head"]["bias"])


def posemb_sincos(t, dim, min_period=4e-3, max_period=4.0):
    frac = np.linspace(0.0, 1.0, dim // 2)
    period = min_period * (max_period / min_period) ** frac
    arg = f64(t)[:, None] * (2 * np.pi / period)[None]
    return np.concatenate([np.sin(arg), np.cos(arg)], -1)


def prefix_forward(params: dict, config, obs) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, list]:
    """The whole prefix pass in float64 from the openpi-named parameter tree and a preprocessed observation:
    (residual stream entering each Gemma block [B, P, D] per layer, attention mask bool[B, P, P], RoPE positions
    int[B, P], per-layer weights). SigLIP per camera, then the text embeddings scaled by √width."""
    images = [siglip(obs.images[k], params["PaliGemma"]["img"], config.siglip.num_heads, 14) for k in config.image_keys]
    table = params["PaliGemma"]["llm"]["embedder"]["input_embedding"]
    x = np.concatenate([*images, f64(table[np.asarray(obs.tokenized_prompt)]) * math.sqrt(table.shape[1])], axis=1)
    valid = prefix_valid(config, obs)
    mask, positions = attn_mask(valid, np.zeros(valid.shape[1], bool)), np.cumsum(valid, 1) - 1
    layers = gemma_layers_from_params(params["PaliGemma"]["llm"], config.paligemma.depth, streams=1)
    states = []
    for layer in layers:
        states.append(x)
        (x,) = gemma_layer([x], layer, positions, mask, config.paligemma.head_dim)
    return states, mask, positions, layers


def prefix_valid(config, obs) -> np.ndarray:
    """bool[B, P]: which prefix tokens are real (camera masks repeated over its patches, then the prompt mask)."""
    return np.concatenate(
        [np.repeat(np.asarray(obs.image_masks[k])[:, None], config.tokens_per_image, 1) for k in config.image_keys]
        + [np.asarray(obs.tokenized_prompt_mask)],
        axis=1,
    )
