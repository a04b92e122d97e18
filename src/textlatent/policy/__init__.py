"""Turning a π0 checkpoint into a policy: configs by openpi name, LIBERO transforms, normalization."""

from textlatent.policy.config import PolicyConfig, config_names, get_config
from textlatent.policy.policy import Policy
from textlatent.policy.transforms import LiberoTransforms, ObservationError

__all__ = ["LiberoTransforms", "ObservationError", "Policy", "PolicyConfig", "config_names", "get_config"]
