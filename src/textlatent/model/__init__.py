"""π0 in Flax NNX. Knows nothing of checkpoints, tokenizers or policies."""

from textlatent.model.config import GEMMA_VARIANTS, IMAGE_KEYS, Pi0Config, gemma_config, siglip_config
from textlatent.model.intervention import ResidualEdit
from textlatent.model.pi0 import Observation, Pi0, PrefixCache

__all__ = [
    "GEMMA_VARIANTS",
    "IMAGE_KEYS",
    "Observation",
    "Pi0",
    "Pi0Config",
    "PrefixCache",
    "ResidualEdit",
    "gemma_config",
    "siglip_config",
]
