"""`textlatent invert` on LIBERO through our server's inversion option (tiny float32 policy, real simulator)."""

from __future__ import annotations

import csv
import importlib.util
import json

import numpy as np
import pytest

from tests.conftest import LIBERO_OVERRIDES
from textlatent.libero.inversion_run import InversionSettings, call_noise, inversion_field, run_inversion
from textlatent.libero.sim import suite_tasks


def test_settings_and_request_field():
    task = suite_tasks("libero_goal_ood")[7]
    settings = InversionSettings(edit_steering="tli", window=(2, 5), method="naive", invert_to=0.5)
    field = inversion_field(settings, task, 3)
    assert field == {
        "method": "naive",
        "step": 3,
        "invert_to": 0.5,
        "steering": {
            "mode": "tli",
            "latents": ["put_the_cream_cheese_in_the_bowl", "put_the_bowl_on_the_plate"],
            "schedule": {"kind": "linear", "steps": 24},
            "step": 3,
        },
        "window": [2, 5],
    }
    assert settings.variants() == ("original", "reconstructed", "edited")
    assert InversionSettings(mode="open-loop").variants() == ("original",)
    assert InversionSettings().variants() == ("original", "reconstructed")
    for bad, match in (
        (dict(mode="loop"), "open-loop"),
        (dict(window=(4, 2)), "FIRST < END"),
        (dict(trials=0), "trials"),
    ):
        with pytest.raises(ValueError, match=match):
            InversionSettings(**bad)
    # Variants share the sampling noise of a call; calls and trials differ.
    a = call_noise(7, 0, 2, 50, 32)
    np.testing.assert_array_equal(a, call_noise(7, 0, 2, 50, 32))
    assert not np.array_equal(a, call_noise(7, 0, 3, 50, 32)) and not np.array_equal(a, call_noise(7, 1, 2, 50, 32))


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("libero") is None, reason="the LIBERO simulator group is not installed")
def test_closed_loop_inversion_run(tmp_path, libero_checkpoint, tokenizer_path):
    import imageio.v2 as imageio

    import textlatent
    from textlatent.serving import PolicyServer, ServerConfig, ServerThread

    policy = textlatent.load_policy(
        "pi0_libero", libero_checkpoint[0], tokenizer=str(tokenizer_path), **{**LIBERO_OVERRIDES, "dtype": "float32"}
    )
    settings = InversionSettings(edit_prompt="put the bowl on the plate", window=(1, 9), max_steps=10)
    with ServerThread(PolicyServer(policy, ServerConfig(port=0))) as server:
        results = run_inversion(settings, address=server.url, out=tmp_path / "run", progress=False)
    run = tmp_path / "run"
    chunks = list(csv.DictReader((run / "chunks.csv").open()))
    # 10 policy steps, replanning every 5: two calls per variant, three variants
    assert [(r["variant"], r["call"]) for r in chunks] == [
        (v, c) for v in ("original", "reconstructed", "edited") for c in ("0", "1")
    ]
    by = {(r["variant"], r["call"]): r for r in chunks}
    # float32 fixed-point inversion: the reconstructed plan is the original to float rounding...
    assert float(by["reconstructed", "0"]["executed_vs_original_max_abs"]) < 1e-4
    assert float(by["original", "0"]["reconstruction_mse_model"]) < 1e-8
    # ...the edit applies only inside its window [1, 9), and then changes the plan
    assert (
        by["edited", "0"]["edit_applied"] == "False" and float(by["edited", "0"]["executed_vs_original_max_abs"]) == 0
    )
    assert (
        by["edited", "1"]["edit_applied"] == "True" and float(by["edited", "1"]["executed_vs_original_max_abs"]) > 1e-3
    )
    episodes = list(csv.DictReader((run / "episodes.csv").open()))
    assert {e["variant"] for e in episodes} == {"original", "reconstructed", "edited"}
    assert all(e["steps"] == "20" and e["seed"] == episodes[0]["seed"] for e in episodes)
    saved = json.loads((run / "results.json").read_text())
    assert saved == json.loads(json.dumps(results)) and saved["policy_calls"] == 6
    assert saved["reconstruction_mse_robot"]["max"] < 1e-6
    reader = imageio.get_reader(run / "videos" / "trial00.mp4")
    assert reader.get_data(0).shape == (256, 3 * 256, 3)  # original | reconstructed | edited
    assert reader.count_frames() == 21  # the reset frame + 20 steps
    assert (run / "mse_per_chunk.png").stat().st_size > 10_000
    with pytest.raises(FileExistsError, match="already holds"):
        run_inversion(settings, address="ws://127.0.0.1:1", out=run, progress=False)
