"""Interventions against a direct port of the paper's code (spec §4, §5, §7), in the paper's own layout.

The reference side builds ``H`` [depth, prefix, width] from "pickled" average states exactly as ``Policy.infer``
(policy.py, commit 194691b) does, and applies it as gemma.py does (layer-0 replacement of every text slot when
``H[0]`` is non-zero, else additions before each block). The served side translates what ``resolve`` returns
(tokens, mask, ``ResidualEdit`` slots/delta/replace) into the same layout. Small shapes: 3 images × 4 tokens, then 12
prompt slots (offset 12).
"""

import dataclasses
import math
import pathlib

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from textlatent.latents.interventions import Intervention, InterventionError, Schedule, resolve, slerp
from textlatent.latents.latent import TextLatent
from textlatent.latents.registry import load_registry, lookup
from textlatent.serving.steering import parse_steering

DEPTH, WIDTH = 4, 8
OFFSET, TEXT = 3 * 4, 12
PREFIX = OFFSET + TEXT
DTYPES = {"bfloat16": ml_dtypes.bfloat16, "float32": np.float32}
PROMPT = np.array([2, 31, 45, 12, 77, 9, 108, 0, 0, 0, 0, 0], np.int32)  # 7 real tokens: BOS … "\n"
MASK = np.arange(TEXT) < 7
BDDL = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "libero_ood_bddl"


def avg_states(seed):
    """A task's ``hidden_states_avg`` as the paper pickles it: float32 [depth, prefix, width], images included."""
    return np.random.default_rng(seed).normal(0, 2, (DEPTH, PREFIX, WIDTH)).astype(np.float32)


def latent_of(avg, slots):
    ids = np.random.default_rng(slots).integers(3, 250, slots)
    return TextLatent(avg[:, OFFSET : OFFSET + slots], ids, f"task with {slots} slots")


A_AVG, B_AVG = avg_states(1), avg_states(2)
A, B = latent_of(A_AVG, 9), latent_of(B_AVG, 9)


# ------------------------------------------------------------------------------------------ the paper, ported
def load_hidden_states(avg, num_valid_token, dtype):
    return avg[:, OFFSET : OFFSET + num_valid_token].astype(dtype)


def paper_policy(
    tokens,
    mask,
    *,
    dtype,
    step=0,
    mask_prompt_method=None,
    layer_to_intervene=None,
    use_tei_and_tli=False,
    task=None,
    pair=None,
    steps=0,
    num_valid_token=9,
    prompt_to_use=None,
):
    """One call of ``Policy.infer`` (spec §5): the prompt it runs and the ``hidden_states_to_add`` it passes."""
    dt = DTYPES[dtype]
    tokens, mask, window = tokens.copy(), mask.copy(), slice(OFFSET, OFFSET + num_valid_token)
    H = None
    if mask_prompt_method in ("blank", "blank_with_text_latent"):
        tokens[: mask.sum() - 1] = 2
    elif mask_prompt_method == "mask":
        mask[...] = 0
    if mask_prompt_method == "blank_with_text_latent":
        H = np.zeros((DEPTH, PREFIX, WIDTH), dt)
        H[:, window] += load_hidden_states(task, num_valid_token, dt)
        H[0] = 0
    if prompt_to_use is not None:
        tokens[: len(prompt_to_use)] = prompt_to_use
    if layer_to_intervene is not None:
        t1, t2 = (load_hidden_states(avg, num_valid_token, dt) for avg in pair)
        h1, h2 = np.zeros((DEPTH, PREFIX, WIDTH), dt), np.zeros((DEPTH, PREFIX, WIDTH), dt)
        h1[:, window] += t1
        h2[:, window] += t2
        h1[1:, window] += -t2[1:]
        h2[1:, window] += -t1[1:]
        alphas = np.asarray(jnp.linspace(0, 1, steps + 2, dtype=dt))
        alpha = alphas[step] if step < len(alphas) else alphas[-1]
        rep = (1 - alpha) * h1 + alpha * h2
        assert rep.dtype == dt  # every op rounded to the activation dtype, as in the paper's jnp code
        if layer_to_intervene == "all":
            H = rep
            if not use_tei_and_tli:
                H[0] = 0
        else:
            H = np.zeros_like(rep)
            H[layer_to_intervene] = rep[layer_to_intervene]
    return tokens, mask, H


def paper_alpha(steps, step, dtype):
    alphas = np.asarray(jnp.linspace(0, 1, steps + 2, dtype=DTYPES[dtype]))
    return float(alphas[min(step, steps + 1)])


def paper_gemma(H):
    """gemma.py's use of H as (replaced embeddings, NaN where kept; additions before each block)."""
    replaced, added = np.full((PREFIX, WIDTH), np.nan, np.float32), np.zeros((DEPTH, PREFIX, WIDTH), np.float32)
    if H is None:
        return replaced, added
    H = H.astype(np.float32)
    for layer in range(DEPTH):
        if layer == 0 and np.any(np.abs(H[0]) > 1e-3):
            replaced[OFFSET:] = H[0, OFFSET:]  # all text slots, not only the latent's window
        else:
            added[layer] = H[layer]
    return replaced, added


def served(edit):
    """What ``ResidualEdit(positions=OFFSET + slots, delta, replace_embeddings)`` does, in the same layout."""
    replaced, added = np.full((PREFIX, WIDTH), np.nan, np.float32), np.zeros((DEPTH, PREFIX, WIDTH), np.float32)
    if edit is None:
        return replaced, added
    positions = OFFSET + edit.slots
    assert edit.delta is None or edit.delta.shape == (DEPTH, 1, len(positions), WIDTH)
    if edit.replace is not None:
        replaced[positions] = edit.replace[0]
    if edit.delta is not None:
        added[:, positions] = edit.delta[:, 0]
    return replaced, added


def assert_matches_paper(intervention, step, dtype, **paper):
    """Resolve at this call; the prompt and the residual-stream effect must equal the paper's bit for bit."""
    tokens, mask, edit, alpha = resolve(intervention, step, PROMPT, MASK, depth=DEPTH, width=WIDTH, dtype=dtype)
    paper_tokens, paper_mask, H = paper_policy(PROMPT, MASK, dtype=dtype, step=step, **paper)
    np.testing.assert_array_equal(tokens, paper_tokens)
    np.testing.assert_array_equal(mask, paper_mask)
    ours, theirs = served(edit), paper_gemma(H)
    np.testing.assert_array_equal(ours[0], theirs[0], err_msg="layer-0 replacement")
    np.testing.assert_array_equal(ours[1], theirs[1], err_msg="additions")
    return edit, alpha


def rounded(x, dtype):
    return np.asarray(x, np.float32).astype(DTYPES[dtype]).astype(np.float32)


def tli(a=A, b=B, steps=24, **options):
    return Intervention("tli", (a, b), Schedule("linear", steps), **options)


# ------------------------------------------------------------------------------------------------ modes
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("step", [0, 1, 12, 13, 25, 40])
def test_tli(dtype, step):
    edit, alpha = assert_matches_paper(tli(), step, dtype, layer_to_intervene="all", pair=(A_AVG, B_AVG), steps=24)
    assert alpha == paper_alpha(24, step, dtype)
    assert edit.replace is None and not np.any(edit.delta[0])
    np.testing.assert_array_equal(edit.slots, np.arange(9))


@pytest.mark.parametrize("dtype", DTYPES)
def test_tli_runs_from_a_minus_b_to_b_minus_a_and_flips_sign_between_calls_12_and_13(dtype):
    diff = rounded(A.states[1:], dtype) - rounded(B.states[1:], dtype)

    def added(step):
        return resolve(tli(), step, PROMPT, MASK, depth=DEPTH, width=WIDTH, dtype=dtype)[2].delta[1:, 0]

    np.testing.assert_array_equal(added(0), rounded(diff, dtype))
    for step in (25, 26, 100):
        np.testing.assert_array_equal(added(step), rounded(-diff, dtype))
    # (1-2α)(T_A-T_B) with α = 12/25 then 13/25: same sign as T_A-T_B, then the opposite (rounding may give zeros).
    assert np.all(added(12) * diff >= 0) and np.any(added(12) * diff > 0)
    assert np.all(added(13) * diff <= 0) and np.any(added(13) * diff < 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_tli_at_alpha_half_adds_nothing(dtype):
    edit, alpha = assert_matches_paper(tli(steps=3), 2, dtype, layer_to_intervene="all", pair=(A_AVG, B_AVG), steps=3)
    assert alpha == 0.5 and not np.any(edit.delta)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layer", [1, 2, 3])
def test_single_layer(dtype, layer):
    intervention = Intervention("single_layer", (A, B), Schedule("linear", 24), layer=layer)
    for step in (0, 7, 30):
        edit, _ = assert_matches_paper(
            intervention, step, dtype, layer_to_intervene=layer, pair=(A_AVG, B_AVG), steps=24
        )
        assert [bool(np.any(d)) for d in edit.delta] == [i == layer for i in range(DEPTH)]


@pytest.mark.parametrize("layer", [0, DEPTH])
def test_single_layer_refuses_layer_0_and_layers_past_the_model(layer):
    # The paper's layer_to_intervene=0 is TEI (a replacement, not an addition): mode "tei" here.
    intervention = Intervention("single_layer", (A, B), Schedule("linear", 24), layer=layer)
    with pytest.raises(InterventionError, match=r"layer in 1\.\.3"):
        resolve(intervention, 0, PROMPT, MASK, depth=DEPTH, width=WIDTH)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("step", [0, 5, 25])
def test_tei(dtype, step):
    intervention = Intervention("tei", (A, B), Schedule("linear", 24))
    edit, _ = assert_matches_paper(intervention, step, dtype, layer_to_intervene=0, pair=(A_AVG, B_AVG), steps=24)
    assert edit.delta is None
    np.testing.assert_array_equal(edit.slots, np.arange(TEXT))
    assert np.all(np.any(edit.replace[0, :9], axis=-1)) and not np.any(edit.replace[0, 9:])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("step", [0, 13, 25])
def test_tei_tli(dtype, step):
    intervention = Intervention("tei_tli", (A, B), Schedule("linear", 24))
    edit, _ = assert_matches_paper(
        intervention, step, dtype, layer_to_intervene="all", use_tei_and_tli=True, pair=(A_AVG, B_AVG), steps=24
    )
    assert edit.replace is not None and not np.any(edit.delta[0])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("slots", [None, 5])
def test_reconstruction(dtype, slots):
    intervention = Intervention("reconstruction", (A,), slots=slots)
    k = slots or A.num_slots
    edit, alpha = assert_matches_paper(
        intervention, 3, dtype, mask_prompt_method="blank_with_text_latent", task=A_AVG, num_valid_token=k
    )
    tokens = resolve(intervention, 3, PROMPT, MASK, depth=DEPTH, width=WIDTH, dtype=dtype)[0]
    np.testing.assert_array_equal(tokens, [2] * 6 + [108] + [0] * 5)
    assert alpha is None and edit.replace is None and not np.any(edit.delta[0])
    np.testing.assert_array_equal(edit.delta[1:, 0], rounded(A.states[1:, :k], dtype))


def test_blank_and_mask():
    for intervention, paper in [
        (Intervention("blank"), {"mask_prompt_method": "blank"}),
        (Intervention("mask"), {"mask_prompt_method": "mask"}),
    ]:
        edit, alpha = assert_matches_paper(intervention, 0, "bfloat16", **paper)
        assert edit is None and alpha is None
    tokens, mask, _, _ = resolve(Intervention("mask"), 0, PROMPT, MASK, depth=DEPTH, width=WIDTH)
    np.testing.assert_array_equal(tokens, PROMPT)
    assert not mask.any()


def test_obscure():
    ids = (2, 250, 17, 3, 64, 200, 108)  # as long as the prompt, like a decoded latent of the same task
    edit, _ = assert_matches_paper(Intervention("obscure", token_ids=ids), 0, "bfloat16", prompt_to_use=ids)
    assert edit is None
    # A different length is not the paper's use; here the mask follows the ids instead of keeping the old prompt's.
    tokens, mask, _, _ = resolve(
        Intervention("obscure", token_ids=(2, 9, 108)), 0, PROMPT, MASK, depth=DEPTH, width=WIDTH
    )
    np.testing.assert_array_equal(tokens, [2, 9, 108] + [0] * 9)
    np.testing.assert_array_equal(mask, np.arange(TEXT) < 3)
    with pytest.raises(InterventionError, match="do not fit"):
        resolve(Intervention("obscure", token_ids=(5,) * 13), 0, PROMPT, MASK, depth=DEPTH, width=WIDTH)


@pytest.mark.parametrize("dtype", DTYPES)
def test_slots_option_is_the_papers_token_window(dtype):
    # Latents over all 12 prompt slots (the paper's pickles hold all 48), used through the first 9.
    a, b = latent_of(A_AVG, TEXT), latent_of(B_AVG, TEXT)
    for mode, paper in [("tli", {}), ("tei_tli", {"use_tei_and_tli": True})]:
        intervention = Intervention(mode, (a, b), Schedule("linear", 24), slots=9)
        assert_matches_paper(intervention, 4, dtype, layer_to_intervene="all", pair=(A_AVG, B_AVG), steps=24, **paper)
    with pytest.raises(InterventionError, match="only 12 slots"):
        resolve(tli(a, b, slots=13), 0, PROMPT, MASK, depth=DEPTH, width=WIDTH)


@pytest.mark.parametrize("dtype", DTYPES)
def test_latents_of_different_lengths_use_their_common_slots(dtype):
    b = latent_of(B_AVG, 7)
    paper = {"pair": (A_AVG, B_AVG), "steps": 24, "num_valid_token": 7}
    edit, _ = assert_matches_paper(tli(A, b), 3, dtype, layer_to_intervene="all", **paper)
    np.testing.assert_array_equal(edit.slots, np.arange(7))
    assert_matches_paper(Intervention("tei", (A, b), Schedule("linear", 24)), 3, dtype, layer_to_intervene=0, **paper)


# ------------------------------------------------------------------------------------------------ schedules
@pytest.mark.parametrize(("steps", "flip"), [(12, 6), (14, 7), (24, 12), (30, 15)])
def test_linear_schedule_is_the_papers_bf16_linspace(steps, flip):
    schedule = Schedule("linear", steps)
    alphas = np.asarray(jnp.linspace(0, 1, steps + 2, dtype=jnp.bfloat16))
    got = [schedule.alpha(s, ml_dtypes.bfloat16) for s in range(steps + 6)]
    assert got == [float(alphas[min(s, steps + 1)]) for s in range(steps + 6)]
    # The spec's closed form, min(s, N+1)/(N+1) rounded to bf16, and its table (§5.1): sign flip, α = 1 at N+1.
    assert got == [float(rounded(min(s, steps + 1) / (steps + 1), "bfloat16")) for s in range(steps + 6)]
    assert got[flip] < 0.5 < got[flip + 1]
    assert got[steps] < 1 and got[steps + 1] == 1


def test_linear_schedule_in_float32_is_the_float32_linspace():
    alphas = np.asarray(jnp.linspace(0, 1, 26, dtype=jnp.float32))
    assert [Schedule("linear", 24).alpha(s) for s in range(30)] == [float(alphas[min(s, 25)]) for s in range(30)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("steps", [0, 3, 24])
def test_cosine_switch_and_constant_schedules(dtype, steps):
    dt = DTYPES[dtype]
    for s in range(steps + 4):
        r = min(s, steps + 1) / (steps + 1)
        cosine = float(np.asarray((1 - math.cos(math.pi * r)) / 2).astype(dt))
        assert Schedule("cosine", steps).alpha(s, dt) == cosine
        linear = Schedule("linear", steps).alpha(s, dt)
        # The paper's switch_interp takes B from α = 0.5 on (steps = 3 reaches exactly 0.5 at call 2).
        assert Schedule("switch", steps).alpha(s, dt) == float(linear >= 0.5)
        assert Schedule("constant", steps, value=0.3).alpha(s, dt) == float(np.asarray(0.3).astype(dt))


def test_cosine_eases_and_switch_jumps_at_the_tli_sign_flip():
    assert [Schedule("cosine", 3).alpha(s) for s in (0, 2, 4, 9)] == [0.0, 0.5, 1.0, 1.0]
    assert [Schedule("switch", 24).alpha(s) for s in range(12, 15)] == [0.0, 1.0, 1.0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": -1}, "non-negative integer"),
        ({"steps": 2.5}, "non-negative integer"),
        ({"kind": "constant", "value": 1.5}, r"in \[0, 1\]"),
        ({"kind": "constant", "value": -0.1}, r"in \[0, 1\]"),
        ({"kind": "constant", "value": math.nan}, r"in \[0, 1\]"),
        ({"kind": "zigzag"}, "unknown schedule"),
    ],
)
def test_bad_schedules_are_refused(kwargs, message):
    with pytest.raises(InterventionError, match=message):
        Schedule(**kwargs)


def test_negative_call_index_is_refused():
    with pytest.raises(InterventionError, match=">= 0"):
        Schedule("linear", 3).alpha(-1)


# ------------------------------------------------------------------------------------------------ slerp
def rotation(h1, h2, alpha):
    """Slerp written as a rotation: turn û₁ by αΩ towards û₂ in their plane; the norm goes linearly."""
    n1, n2 = np.linalg.norm(h1, axis=-1, keepdims=True), np.linalg.norm(h2, axis=-1, keepdims=True)
    u1, u2 = h1 / n1, h2 / n2
    cos = np.sum(u1 * u2, axis=-1, keepdims=True)
    towards = u2 - cos * u1
    towards /= np.linalg.norm(towards, axis=-1, keepdims=True)
    angle = alpha * np.arccos(cos)
    return ((1 - alpha) * n1 + alpha * n2) * (np.cos(angle) * u1 + np.sin(angle) * towards)


def test_slerp_turns_the_direction_and_interpolates_the_norm():
    rng = np.random.default_rng(0)
    h1, h2 = rng.normal(size=(2, 5, 3, 64)).astype(np.float32)
    for alpha in (0.1, 0.25, 0.5, 0.9):
        np.testing.assert_allclose(slerp(h1, h2, alpha), rotation(h1, h2, alpha), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(slerp(h1, h2, 0.0), h1, rtol=1e-6)
    np.testing.assert_allclose(slerp(h1, h2, 1.0), h2, rtol=1e-6)


def test_slerp_falls_back_to_lerp_without_a_great_circle():
    rng = np.random.default_rng(1)
    h = rng.normal(0, 2, (64, 2048)).astype(np.float32)
    zero = np.zeros_like(h)
    for other in (3 * h, -h, -2 * h, zero):
        for alpha in (0.04, 0.25, 0.5, 0.75):
            np.testing.assert_array_equal(slerp(h, other, alpha), (1 - alpha) * h + alpha * other)


@pytest.mark.parametrize("dtype", DTYPES)
def test_slerp_changes_only_the_tei_mix(dtype):
    """TLI's endpoints at layers ≥ 1 are T_A−T_B and T_B−T_A: exactly antiparallel, so there is no great circle and
    slerp must give the lerp bit for bit. Only layer 0 (the two prompts' embeddings, a real angle) turns."""
    for mode in ("tli", "single_layer", "tei", "tei_tli"):
        layer = 2 if mode == "single_layer" else None
        lerp = Intervention(mode, (A, B), Schedule("linear", 24), layer=layer)
        spherical = dataclasses.replace(lerp, interpolation="slerp")
        for step in (0, 1, 7, 13, 25):
            _, _, ours, _ = resolve(spherical, step, PROMPT, MASK, depth=DEPTH, width=WIDTH, dtype=dtype)
            _, _, base, _ = resolve(lerp, step, PROMPT, MASK, depth=DEPTH, width=WIDTH, dtype=dtype)
            if base.delta is not None:
                np.testing.assert_array_equal(ours.delta, base.delta)
            if base.replace is None:
                continue
            alpha = Schedule("linear", 24).alpha(step, DTYPES[dtype])
            ends = rounded(A.states[0], dtype), rounded(B.states[0], dtype)
            np.testing.assert_array_equal(ours.replace[0, 9:], 0)
            tol = 1e-2 if dtype == "bfloat16" else 1e-5
            np.testing.assert_allclose(ours.replace[0, :9], rotation(*ends, alpha), rtol=tol, atol=tol)
            if 0 < alpha < 1:
                assert not np.array_equal(ours.replace, base.replace)
            else:
                np.testing.assert_array_equal(ours.replace, base.replace)


# ------------------------------------------------------------------------------------------------ registry
BASE = {
    10: "put the bowl on the plate",
    13: "put the cream cheese in the bowl",
    14: "put the wine bottle on top of the cabinet",
    17: "put the bowl on the stove",
    18: "put the bowl on top of the cabinet",
    32: "pick up the black bowl on the ramekin and place it on the plate",
    35: "pick up the black bowl on the cookie box and place it on the plate",
    36: "pick up the black bowl next to the plate and place it on the plate",
    38: "pick up the black bowl from table center and place it on the plate",
}
# Spec §7.2 / §7.3: prompt → (A, B, N), base tasks by LeRobot task index (§3.3).
OOD = {
    "libero_goal_ood": {
        "put the cream cheese in the basket": (13, 17, 24),
        "put the orange juice on the stove": (14, 17, 24),
        "put the bbq source on the plate": (13, 10, 24),
        "put the tomato sauce on top of the cabinet": (13, 18, 24),
        "put the wine bottle on the stove": (14, 17, 24),
        "put the wine bottle on the plate": (14, 10, 24),
        "put the wine bottle in the bowl": (14, 13, 12),
        "put the cream cheese on the plate": (13, 10, 24),
        "put the cream cheese on the stove": (13, 17, 24),
        "put the cream cheese on top of the cabinet": (13, 18, 24),
    },
    "libero_spatial_ood": {
        "put the butter on the plate": (13, 35, 24),
        "put the chocolate pudding on the plate": (13, 35, 24),
        "put the milk on the plate": (14, 32, 24),
        "put the orange juice on the plate": (14, 32, 24),
        "put the bowl on cookie box on the stove": (35, 17, 24),
        "put the bowl on cookie box on the cabinet": (35, 18, 14),
        "put the bowl next to the plate on the cabinet": (36, 18, 24),
        "put the bowl next to the plate on the stove": (36, 17, 30),
        "put the bowl at table center on the cabinet": (38, 18, 24),
        "put the bowl at table center on the stove": (38, 17, 24),
    },
}


def test_registry_holds_the_papers_20_tasks():
    registry = load_registry()
    assert len(registry) == 20
    for suite, tasks in OOD.items():
        assert {p for p, t in registry.items() if t.suite == suite} == set(tasks)
        for prompt, (a, b, steps) in tasks.items():
            task = registry[prompt]
            assert (task.a, task.b, task.steps) == (BASE[a], BASE[b], steps), prompt


@pytest.mark.skipif(not BDDL.is_dir(), reason=f"no LIBERO-OOD BDDL files at {BDDL}")
@pytest.mark.parametrize("suite", list(OOD))
def test_registry_prompts_are_the_bddl_file_names(suite):
    # LIBERO-OOD's task language is the file name with "_" → " " (spec §7.1), not the BDDL's (:language) field.
    names = {path.stem.replace("_", " ") for path in (BDDL / suite).glob("*.bddl")}
    assert names == {p for p, t in load_registry().items() if t.suite == suite}


def test_steering_of_every_task_is_accepted_by_the_server():
    rng = np.random.default_rng(0)
    registry = load_registry()
    latents = {}
    for task in registry.values():
        for name, prompt in zip(task.latent_names, (task.a, task.b), strict=True):
            assert name == prompt.replace(" ", "_")
            latents[name] = TextLatent(rng.normal(size=(DEPTH, 9, WIDTH)), np.arange(9), prompt)
    for task in registry.values():
        steering = parse_steering(task.steering(step=3), latents)
        intervention = steering.intervention
        assert (intervention.mode, steering.step) == ("tli", 3)
        assert intervention.schedule == Schedule("linear", task.steps)
        assert intervention.latents == tuple(latents[n] for n in task.latent_names)
        assert parse_steering(task.steering("tei_tli", episode_id="ep-1"), latents).episode_id == "ep-1"


def test_lookup():
    assert lookup("put_the_wine_bottle_in_the_bowl ").steps == 12
    with pytest.raises(KeyError, match="did you mean 'put the wine bottle in the bowl'"):
        lookup("put the wine bottle in a bowl")
    with pytest.raises(KeyError) as info:
        lookup("stack the blocks")
    assert "did you mean" not in str(info.value)
