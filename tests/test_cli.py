import csv
import importlib.util

import pytest

from textlatent.checkpoint import model_params, write_checkpoint
from textlatent.cli import main


def test_checkpoint_command_describes_a_checkpoint(tmp_path, f32_model, capsys):
    write_checkpoint(tmp_path / "ck", model_params(f32_model))
    main(["checkpoint", str(tmp_path / "ck")])
    out = capsys.readouterr().out
    assert "50 leaves" in out
    assert "paligemma_variant = 'tiny'" in out
    assert "siglip_variant = 'tiny/14'" in out


def test_demo_runs_end_to_end(tmp_path, capsys):
    main(["demo", "--quick", "--out", str(tmp_path), "--repeats", "1"])
    out = capsys.readouterr().out
    assert "actions: shape (50, 7), dtype float64" in out
    assert (tmp_path / "checkpoint" / "params").is_dir()
    assert (tmp_path / "checkpoint" / "assets" / "physical-intelligence" / "libero" / "norm_stats.json").exists()
    assert "random" in out


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("libero") is None, reason="the LIBERO simulator group is not installed")
def test_demo_runs_the_whole_chain(tmp_path, capsys):
    """The README's main job, shortened: random π0, latents from simulator frames, server, one TLI episode."""
    main(["demo", "--out", str(tmp_path), "--max-steps", "5"])
    out = capsys.readouterr().out
    assert "RANDOM-weight" in out and "success will be 0%" in out
    for name in ("put_the_cream_cheese_in_the_bowl", "put_the_bowl_on_the_plate"):
        assert (tmp_path / "latents" / f"{name}.safetensors").exists()
    assert "| tli | 7 | put the cream cheese on the plate | 0/1 | 0.0% |" in out
    (video,) = (tmp_path / "eval" / "videos").rglob("*.mp4")
    assert f"video: {video}" in out
    (row,) = list(csv.DictReader((tmp_path / "eval" / "episodes.csv").open()))
    assert row["label"] == "tli" and row["steps"] == "15" and row["error"] == ""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_random_answers_the_stock_client_and_stops_on_sigterm(tmp_path):
    """`textlatent serve --random` as a user runs it: a separate process, /healthz, the stock client, SIGTERM."""
    import http.client
    import os
    import signal
    import subprocess
    import sys
    import time

    import numpy as np
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    port = _free_port()
    env = {**os.environ, "TEXTLATENT_CACHE": str(tmp_path / "cache")}
    command = [
        sys.executable,
        "-c",
        "from textlatent.cli import main; main()",
        "serve",
        "--random",
        "--port",
        str(port),
    ]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 600
        while True:
            assert process.poll() is None, process.stdout.read()
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.5)
        client = WebsocketClientPolicy("127.0.0.1", port)
        assert client.get_server_metadata()["action_horizon"] == 50
        rng = np.random.default_rng(0)
        obs = {
            "observation/image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
            "observation/wrist_image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
            "observation/state": rng.normal(size=8),
            "prompt": "put the bowl on the plate",
        }
        assert client.infer(obs)["actions"].shape == (50, 7)
    finally:
        process.send_signal(signal.SIGINT if process.poll() is not None else signal.SIGTERM)
        output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output
    assert "serving RANDOM weights" in output and "stopped after 1 requests, 0 errors" in output, output


def test_bddl_command_writes_a_suite(tmp_path, capsys):
    main(["bddl", "libero_goal_ood", "--out", str(tmp_path)])
    files = sorted((tmp_path / "libero_goal_ood").glob("*.bddl"))
    assert len(files) == 10 and "put_the_cream_cheese_in_the_basket.bddl" in {f.name for f in files}
    text = (tmp_path / "libero_goal_ood" / "put_the_cream_cheese_in_the_basket.bddl").read_text()
    assert "put the cream cheese in the basket" in text and "(:goal" in text
    assert str(files[0]) in capsys.readouterr().out
