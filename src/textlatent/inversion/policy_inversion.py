"""Inversion of a policy's plan for one request: request dicts in, plans in model and robot space plus metrics out.

``PolicyInversion(policy).run(request, edit_prompt=…)`` samples the request's plan (from the policy's noise, or given
noise), inverts it, reconstructs it under the same prompt and regenerates it under an edit — another prompt, another
request, a ``ResidualEdit`` and/or an ``Intervention`` (e.g. TLI at a policy-call index) — in one compiled program
with one prefix pass for the request and one for the edit. Observations use the policy's own layout (compacted by
default), so the original plan is the one ``Policy.infer`` returns for the same noise.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from textlatent.inversion import flow
from textlatent.inversion.metrics import LIBERO_ACTION_DIMS, ChunkMetrics, chunk_metrics
from textlatent.latents.interventions import Intervention, ResolvedEdit, resolve, stack_edits
from textlatent.model import Observation, ResidualEdit, gemma_config
from textlatent.policy import Policy


@dataclasses.dataclass(frozen=True)
class InversionRecord:
    """One request's inversion. Every array keeps the batch axis (B = 1 for a single request; ``batched`` says which
    the request was). ``*_normalized`` and the noises are float32 model space [B, H, D]; ``*_actions`` are robot
    actions after the policy's output transform, float64 [B, H, A]."""

    original_normalized: np.ndarray
    reconstructed_normalized: np.ndarray
    edited_normalized: np.ndarray | None
    source_noise: np.ndarray | None  # what the original plan was sampled from (None when actions were given)
    noise: np.ndarray  # the inverted latent at invert_to (the noise when invert_to = 1)
    original_actions: np.ndarray
    reconstructed_actions: np.ndarray
    edited_actions: np.ndarray | None
    reconstruction: ChunkMetrics  # original vs reconstructed
    edit: ChunkMetrics | None  # original vs edited
    iterations: np.ndarray  # int32 [S'] velocity evaluations per inversion step
    step_change: np.ndarray  # float32 [S'] last fixed-point change per inversion step
    prefix_encodings: int
    batched: bool
    model_ms: float


class PolicyInversion:
    """Invert, reconstruct and edit a ``Policy``'s plans with fixed settings (each distinct request structure compiles
    once). ``num_steps`` defaults to the policy's; ``invert_to`` < 1 inverts only part of the way (partial
    inversion: the edit then regenerates only the last ``invert_to`` of the flow)."""

    def __init__(
        self,
        policy: Policy,
        *,
        method: flow.Method = "fixed_point",
        iterations: int = flow.DEFAULT_ITERATIONS,
        tolerance: float = flow.DEFAULT_TOLERANCE,
        invert_to: float = 1.0,
        num_steps: int | None = None,
    ):
        self.policy = policy
        self.method = method
        self.iterations = iterations
        self.tolerance = tolerance
        self.num_steps = policy.config.num_steps if num_steps is None else num_steps
        self.invert_to = float(invert_to)
        if method not in flow.METHODS:
            raise ValueError(f"unknown inversion method {method!r}; choose one of {list(flow.METHODS)}")
        flow.grid_index(self.invert_to, self.num_steps)  # fail now, not at the first request

    def run(
        self,
        request: dict,
        *,
        noise: np.ndarray | None = None,
        actions: np.ndarray | None = None,
        edit_prompt: str | list[str] | None = None,
        edit_request: dict | None = None,
        edit: ResidualEdit | None = None,
        intervention: Intervention | None = None,
        call: int = 0,
    ) -> InversionRecord:
        """Invert the plan of ``request`` (a policy request dict, single or batched).

        The plan is sampled from ``noise`` ([H, D] or [B, H, D]; default: drawn from the policy's key as that many
        consecutive single ``infer`` calls would), or ``actions`` (normalized model actions [H, D] or [B, H, D]) are
        inverted as given. The edit target is ``request`` with its prompt replaced by ``edit_prompt``, or
        ``edit_request``, or ``request`` itself; ``edit`` is written into its residual stream, and ``intervention``
        resolved at policy call ``call`` (its prompt changes and residual edit; not together with ``edit``). No edit
        target and no edit: no edited plan.
        """
        if edit_prompt is not None and edit_request is not None:
            raise ValueError("give edit_prompt or edit_request, not both")
        if edit is not None and intervention is not None:
            raise ValueError("give edit or intervention, not both (an intervention resolves to its own edit)")
        observation, state, batched = self.policy.prepare(request)
        batch = state.shape[0]
        if noise is not None and actions is not None:
            raise ValueError("give noise or actions, not both")
        if actions is None:
            noise = self.policy.draw_noises(batch) if noise is None else self._chunk(noise, batch, "noise")
        else:
            actions = self._chunk(actions, batch, "actions")

        edit_observation, edit_state = None, state
        if edit_prompt is not None:
            edit_request = {**request, "prompt": edit_prompt}
        if edit_request is not None or intervention is not None:
            if edit_request is None:
                edit_observation = observation
            else:
                edit_observation, edit_state, _ = self.policy.prepare(edit_request)
                if edit_state.shape[0] != batch:
                    raise ValueError(f"the edit request has {edit_state.shape[0]} rows, the request {batch}")
            if intervention is not None:
                edit_observation, edit = self._apply_intervention(edit_observation, intervention, call)

        graphdef, params = self.policy.model_split
        model_start = time.monotonic()
        result = flow.invert_and_edit_split(
            graphdef,
            params,
            self.policy.model_observation(observation),
            noise=None if noise is None else jnp.asarray(noise),
            actions=None if actions is None else jnp.asarray(actions),
            edit_obs=None if edit_observation is None else self.policy.model_observation(edit_observation),
            edit=edit,
            tolerance=self.tolerance,
            num_steps=self.num_steps,
            method=self.method,
            iterations=self.iterations,
            invert_to=self.invert_to,
            layer_weights=self.policy.layer_weights,
        )
        result = jax.device_get(result)  # waits for the device: the timing below is the real one
        model_ms = (time.monotonic() - model_start) * 1000

        to_robot = self.policy.transforms.outputs
        original = np.asarray(result.original_actions)
        reconstructed = np.asarray(result.reconstructed_actions)
        original_robot, reconstructed_robot = to_robot(original, state), to_robot(reconstructed, state)
        real_dims = min(LIBERO_ACTION_DIMS, original_robot.shape[-1])
        edited = edited_robot = edit_metrics = None
        if result.edited_actions is not None:
            edited = np.asarray(result.edited_actions)
            edited_robot = to_robot(edited, edit_state)
            edit_metrics = chunk_metrics(original, edited, original_robot, edited_robot, real_dims=real_dims)
        return InversionRecord(
            original_normalized=original,
            reconstructed_normalized=reconstructed,
            edited_normalized=edited,
            source_noise=None if result.source_noise is None else np.asarray(result.source_noise),
            noise=np.asarray(result.noise),
            original_actions=original_robot,
            reconstructed_actions=reconstructed_robot,
            edited_actions=edited_robot,
            reconstruction=chunk_metrics(
                original, reconstructed, original_robot, reconstructed_robot, real_dims=real_dims
            ),
            edit=edit_metrics,
            iterations=np.asarray(result.iterations),
            step_change=np.asarray(result.step_change),
            prefix_encodings=result.prefix_encodings,
            batched=batched,
            model_ms=model_ms,
        )

    def _chunk(self, chunk, batch: int, name: str) -> np.ndarray:
        """[H, D], [1, H, D] or [B, H, D] float → float32 [B, H, D]."""
        chunk = np.asarray(chunk)
        horizon, dim = self.policy.model.config.action_horizon, self.policy.model.config.action_dim
        if chunk.ndim == 2:
            chunk = chunk[None]
        if chunk.shape not in ((batch, horizon, dim), (1, horizon, dim)) or not np.issubdtype(chunk.dtype, np.floating):
            raise ValueError(
                f"{name} must be float [{horizon}, {dim}] or [{batch}, {horizon}, {dim}], got {chunk.shape}"
            )
        if not np.all(np.isfinite(chunk)):
            raise ValueError(f"{name} contains NaN or inf")
        return np.broadcast_to(chunk, (batch, horizon, dim)).astype(np.float32)

    def _apply_intervention(
        self, observation: Observation, intervention: Intervention, call: int
    ) -> tuple[Observation, ResidualEdit | None]:
        """Resolve ``intervention`` per row (as the server does): the observation with its prompt changes and the
        rows' residual edits stacked into one ``ResidualEdit`` (None for prompt-only modes)."""
        config = self.policy.model.config
        llm = gemma_config(config.paligemma_variant)
        tokens = np.array(observation.tokenized_prompt)
        mask = np.array(observation.tokenized_prompt_mask)
        edits: list[ResolvedEdit | None] = []
        for i in range(tokens.shape[0]):
            tokens[i], mask[i], resolved, _ = resolve(
                intervention, call, tokens[i], mask[i], depth=llm.depth, width=llm.width, dtype=config.dtype
            )
            edits.append(resolved)
        observation = observation.replace(tokenized_prompt=tokens, tokenized_prompt_mask=mask)
        if edits[0] is None:
            return observation, None
        return observation, stack_edits(edits, config.text_start)
