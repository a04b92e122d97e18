"""Text latents: capture them, store them, write them back into π0's residual stream, decode them."""

from textlatent.latents.capture import LatentCapture, capture_dataset, capture_observations
from textlatent.latents.decoding import decode_latent
from textlatent.latents.interventions import Intervention, InterventionError, ResolvedEdit, Schedule, resolve
from textlatent.latents.latent import LatentFileError, TextLatent, load_latents
from textlatent.latents.paper_pickle import PaperPickleError, import_paper_directory, import_paper_latent
from textlatent.latents.registry import TliTask, load_registry

__all__ = [
    "Intervention",
    "InterventionError",
    "LatentCapture",
    "LatentFileError",
    "PaperPickleError",
    "ResolvedEdit",
    "Schedule",
    "TextLatent",
    "TliTask",
    "capture_dataset",
    "capture_observations",
    "decode_latent",
    "import_paper_directory",
    "import_paper_latent",
    "load_latents",
    "load_registry",
    "resolve",
]
