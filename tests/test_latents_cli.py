"""`textlatent latents …` end to end on a tiny checkpoint and a synthetic LeRobot dataset."""

import numpy as np
import pytest
from PIL import Image

from tests.conftest import LIBERO_OVERRIDES
from tests.test_lerobot_data import TASKS, write_v2
from textlatent.cli import main
from textlatent.latents import TextLatent
from textlatent.latents.capture import latent_file_name
from textlatent.model import gemma_config


@pytest.fixture(scope="module")
def setup(libero_checkpoint, tokenizer_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    write_v2(root / "dataset")
    policy_args = ["--checkpoint", str(libero_checkpoint[0]), "--tokenizer", str(tokenizer_path), "--override"]
    policy_args += [f"{k}={v!r}" for k, v in LIBERO_OVERRIDES.items()]
    return root, policy_args


@pytest.fixture(scope="module")
def captured(setup):
    root, policy_args = setup
    out = root / "latents"
    main(["latents", "capture", *policy_args, "--dataset", str(root / "dataset"), "--tasks", TASKS[0], "1",
          "--episodes", "2", "--frames", "0:3", "--batch-size", "4", "--out", str(out)])  # fmt: skip
    return out


def test_capture_writes_one_latent_per_task(captured, capsys):
    files = sorted(p.name for p in captured.glob("*.safetensors"))
    assert files == sorted(latent_file_name(t) for t in TASKS[:2])
    latent = TextLatent.load(captured / latent_file_name(TASKS[0]))
    assert latent.metadata["frames"] == 6 and latent.metadata["episodes_per_task"] == 2
    assert latent.num_layers == gemma_config("tiny").depth and latent.metadata["slots"] == len(latent.token_ids)


def test_decode_layer0_gives_back_the_prompt(setup, captured, capsys, tokenizer_path):
    """The paper's sanity check: layer-0 states are the scaled embeddings, so they decode to the prompt's own ids."""
    root, policy_args = setup
    out = root / "decoded.json"
    main(["latents", "decode", *policy_args, "--latents", str(captured), "--layers", "0", "1", "--out", str(out)])
    import json

    decoded = json.loads(out.read_text())
    latent = TextLatent.load(captured / latent_file_name(TASKS[0]))
    layer0 = decoded[TASKS[0]][0]
    assert layer0["layer"] == 0 and layer0["nearest"] == latent.token_ids.tolist()
    assert decoded[TASKS[0]][1]["token_ids"][0] == latent.token_ids[0]  # BOS forced
    assert decoded[TASKS[0]][1]["token_ids"][-1] == latent.token_ids[-1]  # the newline token forced
    assert "layer  1" in capsys.readouterr().out


def test_inspect_and_similarity(captured, tmp_path, capsys):
    main(["latents", "inspect", str(captured)])
    out = capsys.readouterr().out
    assert TASKS[0] in out and TASKS[1] in out
    png = tmp_path / "sim.png"
    main(["latents", "similarity", str(captured), "--out", str(png)])
    rows = [line for line in capsys.readouterr().out.splitlines() if "1.000" in line]
    assert len(rows) == 2  # each latent is identical to itself
    assert Image.open(png).format == "PNG"


def test_attention_overlays(setup, tmp_path):
    root, policy_args = setup
    main(["latents", "attention", *policy_args, "--dataset", str(root / "dataset"), "--task", TASKS[0],
          "--layers", "0", "2", "--out", str(tmp_path)])  # fmt: skip
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == ["attention_layer00.png", "attention_layer02.png"]
    assert np.asarray(Image.open(tmp_path / pngs[0])).ndim == 3


def test_capture_needs_a_dataset(setup):
    _, policy_args = setup
    with pytest.raises(SystemExit, match="--dataset is required"):
        main(["latents", "capture", *policy_args])


def test_bad_override_is_explained(setup):
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        main(["latents", "capture", "--checkpoint", "x", "--dataset", "y", "--override", "novalue"])
