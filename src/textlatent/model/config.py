"""Sizes of the networks inside π0, by the variant names openpi uses."""

from __future__ import annotations

import dataclasses
from typing import Literal

PALIGEMMA_VOCAB_SIZE = 257_152

Dtype = Literal["bfloat16", "float32"]


@dataclasses.dataclass(frozen=True)
class GemmaConfig:
    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int


# The variants of openpi's `gemma.get_config`, plus smaller ones for fast tests.
GEMMA_VARIANTS: dict[str, GemmaConfig] = {
    "gemma_2b": GemmaConfig(width=2048, depth=18, mlp_dim=16_384, num_heads=8, num_kv_heads=1, head_dim=256),
    "gemma_300m": GemmaConfig(width=1024, depth=18, mlp_dim=4096, num_heads=8, num_kv_heads=1, head_dim=256),
    "dummy": GemmaConfig(width=64, depth=4, mlp_dim=128, num_heads=8, num_kv_heads=1, head_dim=16),
    # Test sizes: both streams must agree on depth, heads and head_dim.
    "tiny": GemmaConfig(width=32, depth=3, mlp_dim=64, num_heads=2, num_kv_heads=1, head_dim=8),
    "tiny_expert": GemmaConfig(width=16, depth=3, mlp_dim=32, num_heads=2, num_kv_heads=1, head_dim=8),
}


def gemma_config(variant: str) -> GemmaConfig:
    try:
        return GEMMA_VARIANTS[variant]
    except KeyError:
        raise ValueError(f"Unknown Gemma variant {variant!r}; choose one of {sorted(GEMMA_VARIANTS)}") from None


@dataclasses.dataclass(frozen=True)
class SiglipConfig:
    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    patch_size: int


_SIGLIP_SIZES = {
    # name: (width, depth, mlp_dim, num_heads), as big_vision's ViT table.
    "mu": (32, 1, 128, 2),
    "Ti": (192, 12, 768, 3),
    "S": (384, 12, 1536, 6),
    "M": (512, 12, 2048, 8),
    "B": (768, 12, 3072, 12),
    "L": (1024, 24, 4096, 16),
    "So400m": (1152, 27, 4304, 16),
    # Test size with more than one block, so scanning over depth is exercised.
    "tiny": (32, 2, 64, 2),
}


def siglip_config(variant: str) -> SiglipConfig:
    """Parse a variant such as ``"So400m/14"`` (size/patch)."""
    name, _, patch = variant.partition("/")
    if name not in _SIGLIP_SIZES or not patch.isdigit():
        raise ValueError(
            f"Unknown SigLIP variant {variant!r}; expected '<size>/<patch>' with size one of {sorted(_SIGLIP_SIZES)}, "
            "e.g. 'So400m/14'"
        )
    width, depth, mlp_dim, num_heads = _SIGLIP_SIZES[name]
    return SiglipConfig(width=width, depth=depth, mlp_dim=mlp_dim, num_heads=num_heads, patch_size=int(patch))


IMAGE_KEYS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")
IMAGE_RESOLUTION = (224, 224)


@dataclasses.dataclass(frozen=True)
class Pi0Config:
    """π0's model configuration; defaults are openpi's ``Pi0Config()``."""

    dtype: Dtype = "bfloat16"
    paligemma_variant: str = "gemma_2b"
    action_expert_variant: str = "gemma_300m"
    siglip_variant: str = "So400m/14"
    action_dim: int = 32
    action_horizon: int = 50
    max_token_len: int = 48
    vocab_size: int = PALIGEMMA_VOCAB_SIZE
    image_keys: tuple[str, ...] = IMAGE_KEYS
    image_resolution: tuple[int, int] = IMAGE_RESOLUTION
    unroll_layers: bool = False
    """Compile the Gemma layers as straight-line code instead of a loop: the same arithmetic, ~13 % faster sampling
    at batch 1 on an H100, ~4× longer compilation (``benchmarks/NOTES-gpu.md``). For servers that compile once."""
    expert_weights_per_layer: bool | None = None
    """``sample_actions`` cuts the action expert's stacked layer weights (and the feed-forward gate/up halves) into
    per-layer arrays once per chunk and runs its layers as straight-line code in every flow step, instead of copying
    each layer's weights out of the stacks in every step. The same arithmetic (equal in float32 on the CPU; bf16 may
    round differently where XLA fuses differently). With ``one_image_pass``: 30.7 → 23.4 ms per chunk at batch 1 on
    an H100, 76.0 → 71.0 ms at batch 8 (``benchmarks/NOTES-gpu.md``). None (the default): off in the model itself;
    ``Policy`` turns it on with its compact layout (``load_policy(..., compact=True)``, the default) and off with
    ``compact=False`` (openpi's arithmetic, bit for bit). An explicit True/False always wins."""
    one_image_pass: bool | None = None
    """Run SigLIP once over all present cameras stacked on the batch axis instead of once per camera (the weights are
    read once): the same function, rows are independent, but matrix products over more rows may round differently in
    bf16. Prefix pass at batch 1 on an H100: 13.8 → 11.6 ms. None: as ``expert_weights_per_layer``."""
    aligned_attention: bool | None = None
    """Attention laid out for the GPU: query heads as token-major rows (``Attention(token_major=True)``: the softmax
    runs along contiguous rows and the output projection reads the attention output without a transpose), and the
    prefix cache padded with masked zero keys so that prefix + suffix keys are a multiple of ``KEY_MULTIPLE`` (the
    flow steps' matrix products need no padding copy). The same function: every logit is the same dot product and a
    masked key gets exactly zero weight; sums run in another order. None: as ``expert_weights_per_layer``."""
    flash_attention: bool | None = None
    """On a GPU, the prefix's attention (SigLIP's and PaliGemma's) runs as cuDNN's fused flash attention: the
    logits never go through device memory. The same function up to rounding (SigLIP's logits are then float32 where
    openpi rounds them to bf16; the softmax normalises the output instead of the probabilities). The flow steps keep
    their matrix products. Only for passes of ``ops.FLASH_MIN_QUERIES`` queries or more, on Hopper or newer GPUs;
    a no-op elsewhere. None: ``Policy`` turns it on with its compact layout on accelerators."""
    siglip_command_buffer_breaks: tuple[int, ...] = ()
    """SigLIP blocks after which the recorded GPU command buffer ends (``ops.command_buffer_break``), when the
    blocks run as straight-line code (``weights_per_layer``): the same function (bit for bit in float32; in bf16 a
    block's output is then rounded where XLA could otherwise carry it unrounded into the next block's fusion). XLA
    records the kernels between the patch-embedding convolution and the flow loop (≈ 1000 at batch 1) as one CUDA
    graph, whose launch keeps the host busy 1.1–1.7 ms while the GPU waits (``benchmarks/NOTES-gpu.md``, tenth
    round); breaks after blocks such as (1, 4, 13) let the GPU start on the first blocks while the host launches the
    rest. Not measured yet, so off by default."""
    weights_per_layer: bool | None = None
    """For whoever holds the model for many calls (``Policy``): cut every layer's weights (SigLIP, PaliGemma and the
    expert; q/k/v and gate/up each laid out as one matrix, ``FusedProjections``) out of the stacks once at load time and pass them to
    ``sample_actions(..., layer_weights=Pi0.layer_weights())``, so that no call copies weights; the layers then run as
    straight-line code. The same arithmetic. ``Policy`` then drops the stacks (``Pi0.split_layer_weights``), so the
    weights are held once; ``load_policy`` reads them into host memory first, so that the device never holds the
    stacks and their cuts together (a model loaded onto the device first peaks at both: +5 GiB for π0). None:
    ``Policy`` turns it on with its compact layout on accelerators (not on the CPU, where slices are not the cost),
    off otherwise. The model itself never reads this field."""

    def __post_init__(self):
        if self.dtype not in ("bfloat16", "float32"):
            raise ValueError(f"dtype must be 'bfloat16' or 'float32', got {self.dtype!r}")
        prefix, expert = gemma_config(self.paligemma_variant), gemma_config(self.action_expert_variant)
        for field in ("depth", "num_heads", "num_kv_heads", "head_dim"):
            if getattr(prefix, field) != getattr(expert, field):
                raise ValueError(
                    f"paligemma_variant {self.paligemma_variant!r} and action_expert_variant "
                    f"{self.action_expert_variant!r} must share {field} to share attention"
                )
        depth = siglip_config(self.siglip_variant).depth
        breaks = self.siglip_command_buffer_breaks
        if not isinstance(breaks, tuple) or not all(isinstance(b, int) and 0 <= b < depth - 1 for b in breaks):
            raise ValueError(
                f"siglip_command_buffer_breaks must be a tuple of SigLIP block indices in [0, {depth - 2}] (a break "
                f"after block i, before block i + 1), got {breaks!r}"
            )
        for size in self.image_resolution:
            if size % siglip_config(self.siglip_variant).patch_size:
                raise ValueError(f"image_resolution {self.image_resolution} is not a multiple of the patch size")

    def resolved(self, fast: bool, *, accelerator: bool = True) -> Pi0Config:
        """This config with the options left at None decided: on where ``fast`` (for ``weights_per_layer`` only
        on an ``accelerator``), off otherwise. Options set explicitly are kept."""
        choices = {
            "one_image_pass": fast,
            "expert_weights_per_layer": fast,
            "aligned_attention": fast,
            "flash_attention": fast and accelerator,
            "weights_per_layer": fast and accelerator,
        }
        return dataclasses.replace(self, **{k: v for k, v in choices.items() if getattr(self, k) is None})

    @property
    def paligemma(self) -> GemmaConfig:
        return gemma_config(self.paligemma_variant)

    @property
    def action_expert(self) -> GemmaConfig:
        return gemma_config(self.action_expert_variant)

    @property
    def siglip(self) -> SiglipConfig:
        return siglip_config(self.siglip_variant)

    @property
    def tokens_per_image(self) -> int:
        patch = self.siglip.patch_size
        return (self.image_resolution[0] // patch) * (self.image_resolution[1] // patch)

    @property
    def prefix_len(self) -> int:
        return len(self.image_keys) * self.tokens_per_image + self.max_token_len

    @property
    def text_start(self) -> int:
        """Prefix position of the first prompt-token slot (768 for the LIBERO layout)."""
        return len(self.image_keys) * self.tokens_per_image
