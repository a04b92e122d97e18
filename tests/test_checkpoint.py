"""openpi checkpoint layout: write → read round trips, training-style trees, clear mismatch errors, downloads."""

import http.server
import json
import pathlib
import threading
import typing
import urllib.parse

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import traverse_util

from tests.conftest import tiny_config
from textlatent.checkpoint import (
    CheckpointMismatchError,
    NormStats,
    download,
    load_model,
    load_norm_stats,
    model_params,
    norm_stats,
    read_param_shapes,
    resolve_checkpoint,
    restore_params,
    write_checkpoint,
)
from textlatent.checkpoint.random import random_norm_stats


@pytest.fixture(scope="module")
def params(f32_model):
    return jax.tree.map(np.asarray, model_params(f32_model))


def test_round_trip_float32_and_bf16(tmp_path, params):
    config = tiny_config(dtype="float32")
    write_checkpoint(tmp_path / "ck", params, stats=random_norm_stats(8, 7), asset_id="org/data")
    assert (tmp_path / "ck" / "assets" / "org" / "data" / "norm_stats.json").exists()
    model = load_model(config, tmp_path / "ck" / "params")
    back = jax.tree.map(np.asarray, model_params(model))
    jax.tree.map(np.testing.assert_array_equal, back, params)
    bf16 = load_model(tiny_config(dtype="bfloat16"), tmp_path / "ck" / "params")
    leaves = jax.tree.leaves(model_params(bf16))
    assert all(leaf.dtype == jnp.bfloat16 for leaf in leaves)
    first = model_params(bf16)["state_proj"]["kernel"]
    np.testing.assert_array_equal(np.asarray(first), params["state_proj"]["kernel"].astype(jnp.bfloat16))


def test_training_checkpoint_value_suffix_is_dropped(tmp_path, params):
    # openpi training checkpoints store nnx.State, whose leaves all end in "value".
    flat = traverse_util.flatten_dict(params)
    with_value = traverse_util.unflatten_dict({(*k, "value"): v for k, v in flat.items()})
    with ocp.PyTreeCheckpointer() as ckptr:
        ckptr.save((tmp_path / "params").resolve(), {"params": with_value})
    restored = restore_params(tmp_path / "params")
    assert traverse_util.flatten_dict(restored).keys() == flat.keys()
    assert not any(k.endswith("/value") for k in read_param_shapes(tmp_path / "params"))


def test_mismatched_tree_lists_every_problem(tmp_path, params):
    flat = traverse_util.flatten_dict(params)
    del flat[("state_proj", "bias")]
    flat[("extra_head", "kernel")] = np.zeros((3, 3), np.float32)
    flat[("action_out_proj", "kernel")] = np.zeros((5, 5), np.float32)
    write_checkpoint(tmp_path / "bad", traverse_util.unflatten_dict(flat))
    with pytest.raises(CheckpointMismatchError) as err:
        load_model(tiny_config(dtype="float32"), tmp_path / "bad" / "params")
    text = str(err.value)
    assert "missing:    state_proj/bias" in text
    assert "unexpected: extra_head/kernel (3, 3)" in text
    assert "mis-shaped: action_out_proj/kernel: checkpoint (5, 5), model" in text
    assert text.count("\n  ") >= 3


def test_wrong_variant_suggests_overrides(tmp_path, params):
    write_checkpoint(tmp_path / "ck", params)
    with pytest.raises(CheckpointMismatchError, match="paligemma_variant='tiny'"):
        load_model(tiny_config(paligemma_variant="dummy", action_expert_variant="dummy"), tmp_path / "ck" / "params")


def test_resolve_checkpoint_errors(tmp_path, params):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_checkpoint(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not an openpi checkpoint"):
        resolve_checkpoint(tmp_path / "empty")
    write_checkpoint(tmp_path / "ck", params)
    with pytest.raises(ValueError, match="params folder itself"):
        resolve_checkpoint(tmp_path / "ck" / "params")
    with pytest.raises(ValueError, match="unsupported location"):
        resolve_checkpoint("s3://bucket/ckpt")


def test_norm_stats_round_trip_and_errors(tmp_path):
    stats = random_norm_stats(8, 7, seed=3)
    norm_stats.save(tmp_path / "assets" / "a" / "b", stats)
    raw = json.loads((tmp_path / "assets" / "a" / "b" / "norm_stats.json").read_text())
    assert set(raw["norm_stats"]) == {"state", "actions"} and len(raw["norm_stats"]["state"]["mean"]) == 8
    back = load_norm_stats(tmp_path, "a/b")
    np.testing.assert_array_equal(back["actions"].std, stats["actions"].std)
    assert norm_stats.fingerprint(back) == norm_stats.fingerprint(stats)
    with pytest.raises(FileNotFoundError, match=r"has them for \['a/b'\]"):
        load_norm_stats(tmp_path, "physical-intelligence/libero")
    with pytest.raises(ValueError, match="NaN"):
        NormStats(mean=[np.nan], std=[1.0])


class _FakeGCS(http.server.BaseHTTPRequestHandler):
    """Serves the two GCS endpoints the downloader uses (object listing and media) from a dict."""

    objects: typing.ClassVar[dict[str, bytes]] = {}
    requests: typing.ClassVar[list[str]] = []

    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        self.requests.append(url.path)
        if url.path.startswith("/storage/v1/b/bucket/o"):
            prefix = urllib.parse.parse_qs(url.query)["prefix"][0]
            items = [{"name": k, "size": str(len(v))} for k, v in self.objects.items() if k.startswith(prefix)]
            body = json.dumps({"items": items}).encode()
        elif url.path.startswith("/bucket/"):
            body = self.objects.get(urllib.parse.unquote(url.path[len("/bucket/") :]))
            if body is None:
                self.send_error(404)
                return
        else:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_gcs_download_once_into_cache(tmp_path, monkeypatch):
    _FakeGCS.objects = {"ckpts/pi/params/a.bin": b"x" * 100, "ckpts/pi/assets/n.json": b"{}", "ckpts/pix/other": b"no"}
    _FakeGCS.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FakeGCS)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setattr(download, "_GCS_API", base + "/storage/v1/b/{bucket}/o")
    monkeypatch.setattr(download, "_GCS_MEDIA", base + "/{bucket}/{name}")
    monkeypatch.setenv(download.CACHE_ENV, str(tmp_path / "cache"))
    try:
        local = download.resolve("gs://bucket/ckpts/pi")
        assert local == tmp_path / "cache" / "gs" / "bucket" / "ckpts" / "pi"
        assert (local / "params" / "a.bin").read_bytes() == b"x" * 100
        assert not (local.parent / "pix").exists()  # a sibling with the same prefix is not fetched
        count = len(_FakeGCS.requests)
        assert download.resolve("gs://bucket/ckpts/pi") == local
        assert len(_FakeGCS.requests) == count  # cached: no second download
        single = download.resolve("gs://bucket/ckpts/pi/assets/n.json")
        assert single.read_bytes() == b"{}"
        with pytest.raises(FileNotFoundError, match="nothing found"):
            download.resolve("gs://bucket/missing")
    finally:
        server.shutdown()


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv(download.CACHE_ENV, str(tmp_path))
    assert download.cache_dir() == pathlib.Path(tmp_path)
    monkeypatch.delenv(download.CACHE_ENV)
    assert download.cache_dir() == pathlib.Path("~/.cache/textlatent").expanduser()


def test_hf_urls_map_to_snapshot_download(tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    def fake_snapshot_download(repo_id, *, repo_type, revision, local_dir, allow_patterns, force_download):
        calls.append((repo_id, repo_type, revision, allow_patterns))
        target = pathlib.Path(local_dir) / "ckpts" / "pi0" / "params"
        target.mkdir(parents=True, exist_ok=True)
        (target / "x").write_text("1")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    monkeypatch.setenv(download.CACHE_ENV, str(tmp_path))
    local = download.resolve("hf://org/repo/ckpts/pi0@v1")
    assert local == tmp_path / "hf" / "model" / "org/repo" / "v1" / "ckpts" / "pi0"
    assert calls == [("org/repo", "model", "v1", ["ckpts/pi0", "ckpts/pi0/**"])]
    assert download.resolve("hf://org/repo/ckpts/pi0@v1") == local
    assert len(calls) == 1  # complete trees are not fetched again
    download.resolve("hf://datasets/org/data/ckpts/pi0")
    assert calls[-1][:3] == ("org/data", "dataset", None)
    with pytest.raises(ValueError, match="owner/repo"):
        download.resolve("hf://justone")
    with pytest.raises(FileNotFoundError, match="not found"):
        download.resolve("hf://org/repo/missing")
