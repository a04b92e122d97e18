"""textlatent: π0 exactly as openpi computes it, with its text latents read, written and steered."""

from __future__ import annotations

__version__ = "0.1.0"

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from textlatent.policy import Policy
    from textlatent.tokenizer import PaligemmaTokenizer


def load_policy(
    config_name: str,
    checkpoint,
    *,
    tokenizer: str | PaligemmaTokenizer | None = None,
    compact: bool = True,
    **config_overrides,
) -> Policy:
    """Load an openpi checkpoint as a policy.

    Args:
      config_name: openpi train-config name, e.g. ``"pi0_libero"``.
      checkpoint: checkpoint directory (with ``params/`` and ``assets/``): local path, ``gs://…`` or ``hf://…``.
      tokenizer: SentencePiece model path/URL or a ``PaligemmaTokenizer`` (default: PaliGemma's, downloaded once).
      compact: leave cameras masked in every row and prompt padding past a bucket out of the prefix, and turn on
        the model options that compute the same function with less work (``one_image_pass``,
        ``expert_weights_per_layer``; on accelerators ``weights_per_layer``: the layer weights read into host
        memory, cut once here and put on the device without the stacks they came from): actions equal to float
        rounding, about half the time per chunk of the full layout on an H100 (16.5 vs 35.7 ms at batch 1).
        False computes openpi's full 816-token layout and arithmetic, bit for bit. Options given in
        ``config_overrides`` win either way.
      config_overrides: fields of the policy or model config, e.g. ``paligemma_variant="dummy"``,
        ``dtype="float32"`` (float32 weights and activations instead of openpi's bf16 serving mode).
    """
    from textlatent.checkpoint import load_model, load_norm_stats, resolve_checkpoint
    from textlatent.policy import LiberoTransforms, Policy, get_config
    from textlatent.policy.policy import resolved_model_config
    from textlatent.tokenizer import PaligemmaTokenizer

    config = get_config(config_name, **config_overrides)
    directory = resolve_checkpoint(checkpoint)
    stats = load_norm_stats(directory, config.asset_id)
    if not isinstance(tokenizer, PaligemmaTokenizer):
        tokenizer = PaligemmaTokenizer(tokenizer, max_len=config.model.max_token_len)
    if tokenizer.vocab_size > config.model.vocab_size:
        raise ValueError(
            f"the tokenizer has {tokenizer.vocab_size} pieces but the model embeds only {config.model.vocab_size}"
        )
    # A policy that cuts every layer's weights (``weights_per_layer``) reads them into host memory and puts only the
    # cuts on the device: loading then peaks at one copy of the weights on the device instead of two.
    cuts = resolved_model_config(config.model, compact=compact).weights_per_layer
    model = load_model(config.model, directory / "params", on_host=bool(cuts))
    transforms = LiberoTransforms.for_config(config, tokenizer, stats)
    return Policy(
        model, config, transforms, metadata={"config": config.name, "checkpoint": str(checkpoint)}, compact=compact
    )


__all__ = ["__version__", "load_policy"]
