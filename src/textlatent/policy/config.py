"""Policy configurations by openpi train-config name, with field overrides."""

from __future__ import annotations

import dataclasses

from textlatent.model import Pi0Config


@dataclasses.dataclass(frozen=True)
class PolicyConfig:
    """Everything needed to turn a checkpoint into a robot policy.

    Attributes:
      name: the openpi train-config name.
      model: π0 model configuration.
      asset_id: where the norm stats live under ``<checkpoint>/assets/``.
      delta_action_mask: action dims stored relative to the state (openpi's ``extra_delta_transform``).
      action_dims: number of robot action dims returned (the model's 32 are sliced).
      state_dims: robot state dims expected in requests.
      default_prompt: used when a request has no prompt (None = prompt required).
      num_steps: Euler steps of the flow.
    """

    name: str
    model: Pi0Config
    asset_id: str
    delta_action_mask: tuple[bool, ...] = ()
    action_dims: int = 7
    state_dims: int = 8
    default_prompt: str | None = None
    num_steps: int = 10

    def __post_init__(self):
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be ≥ 1, got {self.num_steps}")
        if not 0 < self.action_dims <= self.model.action_dim or not 0 < self.state_dims <= self.model.action_dim:
            raise ValueError(f"action_dims and state_dims must be in 1..{self.model.action_dim}")


_CONFIGS = {
    # π0 fine-tuned on LIBERO (openpi `pi0_libero`): LIBERO transforms, z-score norm, delta actions on dims 0-5.
    "pi0_libero": PolicyConfig(
        name="pi0_libero",
        model=Pi0Config(),
        asset_id="physical-intelligence/libero",
        delta_action_mask=(True,) * 6 + (False,),
    ),
    # Same network and inputs without the extra delta transform (checkpoints trained with extra_delta_transform=False).
    "pi0_libero_absolute": PolicyConfig(
        name="pi0_libero_absolute",
        model=Pi0Config(),
        asset_id="physical-intelligence/libero",
    ),
}


def config_names() -> list[str]:
    return sorted(_CONFIGS)


def get_config(name: str, **overrides) -> PolicyConfig:
    """The config ``name`` with ``overrides`` applied to the policy or model fields (e.g. ``paligemma_variant="dummy"``,
    ``dtype="float32"``, ``asset_id=...``)."""
    if name not in _CONFIGS:
        raise ValueError(f"unknown config {name!r}; available: {config_names()}")
    config = _CONFIGS[name]
    policy_fields = {f.name for f in dataclasses.fields(PolicyConfig)} - {"name", "model"}
    model_fields = {f.name for f in dataclasses.fields(Pi0Config)}
    unknown = sorted(set(overrides) - policy_fields - model_fields)
    if unknown:
        raise ValueError(
            f"unknown config override(s) {unknown}; policy fields: {sorted(policy_fields)}, "
            f"model fields: {sorted(model_fields)}"
        )
    model_over = {k: v for k, v in overrides.items() if k in model_fields}
    policy_over = {k: v for k, v in overrides.items() if k in policy_fields}
    return dataclasses.replace(config, model=dataclasses.replace(config.model, **model_over), **policy_over)
