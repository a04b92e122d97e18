"""Turning a π0 checkpoint into a policy: configs by openpi name, LIBERO transforms, normalization."""

from typing import TYPE_CHECKING

from textlatent._lazy import lazy_attributes
from textlatent.policy.transforms import LiberoTransforms, ObservationError

if TYPE_CHECKING:
    from textlatent.policy.config import PolicyConfig, config_names, get_config
    from textlatent.policy.policy import Policy

# Configs and the policy import the model (JAX, flax); the transforms alone do not, and simulator worker processes
# use only them.
_LAZY = {
    "PolicyConfig": "textlatent.policy.config",
    "config_names": "textlatent.policy.config",
    "get_config": "textlatent.policy.config",
    "Policy": "textlatent.policy.policy",
}


__getattr__ = lazy_attributes(__name__, globals(), _LAZY)


__all__ = ["LiberoTransforms", "ObservationError", "Policy", "PolicyConfig", "config_names", "get_config"]
