"""Text latents: stored values, and interventions that write them back into π0's residual stream."""

from textlatent.latents.interventions import Intervention, InterventionError, ResolvedEdit, Schedule, resolve
from textlatent.latents.latent import LatentFileError, TextLatent, load_latents

__all__ = [
    "Intervention",
    "InterventionError",
    "LatentFileError",
    "ResolvedEdit",
    "Schedule",
    "TextLatent",
    "load_latents",
    "resolve",
]
