"""Importing the text-latent paper's pickles without running pickle code.

The files here are written the way the paper's ``scripts/text_latent.py`` wrote them: ``pickle.dump`` of a dict holding
real jax arrays and an openpi ``Observation`` (a flax struct dataclass), with a stand-in ``openpi.models.model`` module
that exists only while pickling, so loading cannot lean on it.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import os
import pickle
import pickletools
import subprocess
import sys
import time
import types
import zlib
from typing import Generic, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct

from textlatent.latents.latent import TextLatent, load_latents
from textlatent.latents.paper_pickle import (
    PaperObservation,
    PaperPickleError,
    import_paper_decodings,
    import_paper_directory,
    import_paper_latent,
    load_paper_pickle,
)
from textlatent.tokenizer import PaligemmaTokenizer

ArrayT = TypeVar("ArrayT")


@struct.dataclass
class Observation(Generic[ArrayT]):
    """The fields of openpi's ``openpi.models.model.Observation`` (``@at.typecheck @struct.dataclass``)."""

    images: dict
    image_masks: dict
    state: ArrayT
    tokenized_prompt: ArrayT | None = None
    tokenized_prompt_mask: ArrayT | None = None
    token_ar_mask: ArrayT | None = None
    token_loss_mask: ArrayT | None = None


Observation.__module__ = "openpi.models.model"
Observation.__qualname__ = "Observation"

IMAGE_KEYS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")
TEXT_LEN = 48
PROMPT = "put the cream cheese in the bowl"


@contextlib.contextmanager
def openpi_importable():
    """``openpi.models.model`` importable (as pickling a class by reference needs) only inside this block."""
    names = ["openpi", "openpi.models", "openpi.models.model"]
    saved = {name: sys.modules.get(name) for name in names}
    for name in names:
        sys.modules[name] = types.ModuleType(name)
    sys.modules["openpi.models.model"].Observation = Observation
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def formula_states(layers: int, prefix: int, width: int) -> np.ndarray:
    """Every entry names its own position (exact in float32), so a slice can be checked without slicing."""
    return np.fromfunction(lambda l, q, w: l * 10000 + q * 10 + w, (layers, prefix, width), dtype=np.float32)


def make_observation(tokens: np.ndarray, mask: np.ndarray) -> Observation:
    return Observation(
        images={k: jnp.full((1, 4, 4, 3), 0.5, jnp.float32) for k in IMAGE_KEYS},
        image_masks={k: jnp.asarray([k != IMAGE_KEYS[-1]]) for k in IMAGE_KEYS},
        state=jnp.zeros((1, 8), jnp.float32),
        tokenized_prompt=jnp.asarray(tokens[None], jnp.int32),
        tokenized_prompt_mask=jnp.asarray(mask[None]),
    )


def paper_dict(states, tokens, mask, *, task: int = 13, as_numpy: bool = False) -> dict:
    hidden = np.asarray(states, np.float32) if as_numpy else jnp.asarray(states)
    return {
        "hidden_states_avg": hidden,
        "last_obs": make_observation(tokens, mask),
        "frame_index_to_use": list(range(120)),
        "task_range": (task, task + 1),
    }


def write_pickle(path, value, protocol: int = pickle.DEFAULT_PROTOCOL):
    with openpi_importable(), open(path, "wb") as f:
        pickle.dump(value, f, protocol=protocol)
    return path


def prompt_tokens(tokenizer: PaligemmaTokenizer, prompt: str = PROMPT) -> tuple[np.ndarray, np.ndarray]:
    tokens, mask = tokenizer.tokenize(prompt)
    assert tokens.shape == (TEXT_LEN,)
    return tokens, mask


@pytest.fixture(scope="module")
def tokenizer(tokenizer_path):
    return PaligemmaTokenizer(tokenizer_path, max_len=TEXT_LEN)


def pickle_globals(data: bytes) -> list[str]:
    """``module.name`` of every GLOBAL / STACK_GLOBAL, following the memo for STACK_GLOBAL's two strings."""
    memo: dict[int, object] = {}
    last: object = None
    strings: list[object] = []
    found = []
    for opcode, arg, _ in pickletools.genops(data):
        name = opcode.name
        if name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
            last = arg
            strings.append(arg)
        elif name in ("BINGET", "LONG_BINGET", "GET"):
            last = memo.get(int(arg))
            strings.append(last)
        elif name == "MEMOIZE":
            memo[len(memo)] = last
        elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
            memo[int(arg)] = last
        elif name == "STACK_GLOBAL":
            found.append(f"{strings[-2]}.{strings[-1]}")
            last = None
        elif name == "GLOBAL":
            found.append(arg.replace(" ", "."))
            last = None
        else:
            last = None
    return found


# ---------------------------------------------------------------------------------------------------------------
# Valid files


def test_jax_array_pickle_contains_exactly_these_globals():
    data = pickle.dumps({"hidden_states_avg": jnp.ones((2, 3), jnp.float32)})
    # numpy 2 spells the module numpy._core; the paper's numpy 1.x wrote numpy.core (see the paper-era test below).
    assert set(pickle_globals(data)) == {
        "jax._src.array._reconstruct_array",
        "numpy._core.multiarray._reconstruct",
        "numpy.ndarray",
        "numpy.dtype",
    }


def test_imports_text_slots_of_a_jax_pickle(tmp_path, tokenizer):
    layers, images, per_image, width = 3, 2, 4, 8
    offset = images * per_image  # text follows the image tokens
    prefix = offset + TEXT_LEN
    tokens, mask = prompt_tokens(tokenizer)
    n = int(mask.sum())
    assert 3 < n < TEXT_LEN
    path = write_pickle(
        tmp_path / "avg_states_13_14_frame_0_119.pkl", paper_dict(formula_states(layers, prefix, width), tokens, mask)
    )
    assert "openpi" not in sys.modules  # loading below has no openpi to fall back on

    latent = import_paper_latent(path, tokenizer=tokenizer)

    l, k, w = np.meshgrid(np.arange(layers), np.arange(n), np.arange(width), indexing="ij")
    np.testing.assert_array_equal(latent.states, l * 10000 + (offset + k) * 10 + w)
    assert latent.states.dtype == np.float32 and latent.states.shape == (layers, n, width)
    np.testing.assert_array_equal(latent.token_ids, tokenizer.encode(PROMPT))
    assert latent.prompt == PROMPT
    assert latent.metadata["imported_from"] == "paper pickle"
    assert latent.metadata["source_file"] == "avg_states_13_14_frame_0_119.pkl"
    assert latent.metadata["task_range"] == [13, 14]
    assert latent.metadata["frame_index_to_use"] == list(range(120))
    assert (latent.metadata["text_offset"], latent.metadata["prefix_len"]) == (offset, prefix)
    assert latent.metadata["prompt_tokens"] == latent.metadata["slots"] == n
    assert "openpi" not in sys.modules


def test_forced_slot_count_and_offset(tmp_path, tokenizer):
    tokens, mask = prompt_tokens(tokenizer, "turn on the stove")
    n = int(mask.sum())
    assert n < 9  # the paper's 9 slots then reach into padding
    path = write_pickle(tmp_path / "a.pkl", paper_dict(formula_states(2, 8 + TEXT_LEN, 4), tokens, mask))

    nine = import_paper_latent(path, slots=9)
    assert nine.states.shape == (2, 9, 4)
    np.testing.assert_array_equal(nine.states[1, :, 0], 10000 + (8 + np.arange(9)) * 10)
    np.testing.assert_array_equal(nine.token_ids, [*tokenizer.encode("turn on the stove"), *[0] * (9 - n)])
    assert nine.prompt == ""  # no tokenizer given
    assert (nine.metadata["slots"], nine.metadata["prompt_tokens"]) == (9, n)

    shifted = import_paper_latent(path, text_offset=3)
    np.testing.assert_array_equal(shifted.states[0, :, 0], (3 + np.arange(n)) * 10)


@pytest.mark.parametrize("as_numpy", [False, True], ids=["jax", "numpy"])
@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_every_pickle_protocol_and_plain_numpy_states(tmp_path, tokenizer, protocol, as_numpy):
    tokens, mask = prompt_tokens(tokenizer)
    path = write_pickle(
        tmp_path / "p.pkl", paper_dict(formula_states(2, 4 + TEXT_LEN, 4), tokens, mask, as_numpy=as_numpy), protocol
    )
    first_global = pickle_globals(path.read_bytes())[0]  # the one that rebuilds hidden_states_avg
    assert first_global.startswith("numpy." if as_numpy else "jax._src.array.")
    latent = import_paper_latent(path)
    n = int(mask.sum())
    np.testing.assert_array_equal(latent.states[1, :, 3], 10000 + (4 + np.arange(n)) * 10 + 3)
    np.testing.assert_array_equal(latent.token_ids, tokens[:n])


def test_older_layout_with_extra_accumulators(tmp_path, tokenizer):
    # Before commit 99519f3 the script also saved these three (ignored here; only hidden states are a text latent).
    tokens, mask = prompt_tokens(tokenizer)
    value = paper_dict(formula_states(2, 52, 4), tokens, mask)
    value["post_attn_avg"] = jnp.ones((2, 52, 4), jnp.float32)
    value["post_attn_embedding_avg"] = jnp.ones((2, 52, 4), jnp.float32)
    value["text_token_head_output_avg"] = jnp.ones((2, TEXT_LEN, 8, 4), jnp.float32)
    latent = import_paper_latent(write_pickle(tmp_path / "old.pkl", value))
    np.testing.assert_array_equal(latent.states[0, :, 1], (4 + np.arange(int(mask.sum()))) * 10 + 1)


# Written by jax 0.5.3 + numpy 1.26.4 + flax 0.10.4 (the paper's era), Python 3.11, default protocol 4:
#   states = jnp.asarray(arange(2*52*4, float32).reshape(2, 52, 4) / 8)   # 2 images x 2 tokens + 48 text slots
#   tokenized_prompt[0, :5] = [2, 11, 12, 13, 108], mask[0, :5] = True; two 1x2x2x3 images; state 1x3
#   pickle.dump({"hidden_states_avg": states, "last_obs": Observation(...), "frame_index_to_use": list(range(120)),
#                "task_range": (13, 14)}, f)
# then zlib-compressed and base64-encoded.
PAPER_ERA_PICKLE = """
eNrV1n2UVGMcwPHfvrbtbrVt7+9bbbW9Tdv7e227ve6vtiRJqtvMzt2dqd2ZMXO3t1PORm/LRXQjhBBCCCGERQghhBBCCCGEEPnu
bJ1TlHP4wzmecz77nXPPvfPce3fOeZ7y+NUtUyU6FjlZdl2f3+s1A0bEcltmxHDPKXbs2rPc81xGJFzocofD7vmOnW6EzcJgIGKF
ywoto/rgKi5uECgrDc13FQbDpqu0rMTyHzs/9cTzOdNOiJ7o2DUC3uNXqyx18mI8znInS2M0Vntp/HLHl2QneK35IbPqotiiXk7F
iuXORM6Is2MGOQUFBflHGdE/KpbjqcgtT5TjY4hIOSohQ0UykIOZKMdKrMMmVGIn9uIgJEckCWlojAxkIRv9kIPRmIApmAkfQpiH
cizBCthYCQdrsBbrsB4bsBGbsBlbsBWV2Ibt2IGd2IXd2IO92If9OICDOITDOAIZJhKLeCQiCclIRW2kIR310RCN0RTN0RIZaINM
tEcWOqELXMhGD/RCH/TDAAzCEOQgF8MxEqORj7EowARMxCRMxhRMxTTMwEx44EURfJiFEgQQQhgW5mAeFmAhzkc5FuMCXIglWIpl
WI4VqMBFuBg2LsGluAwrcTmuwCo4WI0rcRXW4Gpcg2uxFtfhetyAdbgRN+FmrMctuBW3YQNuxx24ExtxF+7GPdiEe3Ef7sdmPIAH
8RC24GE8gkexFY/hcTyBSjyJp/A0tuEZPIvnsB3P4wW8iB14CS/jFezEq3gNr2MX3sCbeAu78TbewbvYg/fwPj7AXnyIj/Ax9uET
fIrPsB+f4wt8iQP4Cl/jGxzEt/gO3+MQfsCP+AmH8TN+wa84gt/wO45CcqUcEkMhsRQSRyHxFJJAIYkUUoNCkiikJoUkU0gKhaRS
SC0KqU0hdSgkjULqUkg6hdSjkPoU0oBCGlJIIwppTCFNKKQphTSjkOYU0oJCWlJIKwrJoJDWFNKGQtpSSCaFtKOQ9hTSgUKyKKQj
hXSikM4U0oVCulKIi0K6UUg2hXSnkB4U0pNCelFIbwrpQyF9KaQfhfSnkAEUMpBCBlHIYAoZQiFDKSSHQoZRSC6F5FHIcAoZQSEj
KWQUhYymkDEUkk8hSiFjKWQchRRQyHg6PtexnEWOXXOu6Z5tRBeviojFqmUnlbgjlhH0RBy7XjBkBkJ+V2nQa5ZEquPYKeM9ETM8
x235gwFWvI6LnaolOdFf6i42I9HPyR53xDSyjXCxx/HFZ/lq+JKrFk5fanTZrF45YzXOcnz1KvKy5R+O6I37mhy73bQSs8gy5ob9
3PR/MmOZnRJ9VKPUHZkdfV5f5l+n1Bg+ptmxnu4n7gYWnmo3kBcTc9IEvq6n+brBFb6ck+8kIboBck51vsYtiz5s6t+8Ois42wz4
F5heIxQOloasU39R9rLok/hP2Nf46p/qOSpjmSIFVXPWQon8v8bJr6fBn19P9D9++nc0mF9WTNX41zPWis7IVrV6pgK7TvWBkmAk
cuxQmcdOLwq7S03DH/Ca8wwraJRFTGc69yHRX3mcxmuCJmoNTdKamqwpmqq1tLbW0TStq+laT+trA22ojbSxNtGm2kybawttqa00
Q1trG22rmdpO22sHzdKO2kk7axftqi7tptnaXXtoT/a8vbWP9tV+2l8H6EAdpIN1iA7VHB2muZqnw3WEjtRROlrHaL6qjtVxWqDj
dYKeoRP1TJ2kZ+lkPVun6Dk6Vc/VaTpdZ6ihM9WtHi1Ur5papMXqU7/O0tlaoqUa0KCG9DwNa0QtLdM5Ote0ky1eiRF2B4pNp+oZ
lzllrj8Aol7Jcg==
"""


def test_pickle_written_by_the_papers_jax_and_numpy_versions(tmp_path):
    data = zlib.decompress(base64.b64decode(PAPER_ERA_PICKLE))
    assert pickle_globals(data) == [
        "jax._src.array._reconstruct_array",
        "numpy.core.multiarray._reconstruct",
        "numpy.ndarray",
        "numpy.dtype",
        "openpi.models.model.Observation",
    ]
    path = tmp_path / "avg_states_13_14_frame_0_119.pkl"
    path.write_bytes(data)

    raw = load_paper_pickle(path)
    assert isinstance(raw["last_obs"], PaperObservation)
    assert sorted(raw["last_obs"].fields["images"]) == ["base_0_rgb", "left_wrist_0_rgb"]
    latent = import_paper_latent(path)
    assert latent.states.shape == (2, 5, 4) and latent.metadata["text_offset"] == 4
    # entry [l, q, w] of the saved array is (l*52*4 + q*4 + w) / 8; the text starts at q = 4
    l, k, w = np.meshgrid(np.arange(2), np.arange(5), np.arange(4), indexing="ij")
    np.testing.assert_array_equal(latent.states, (l * 208 + (4 + k) * 4 + w) / 8)
    np.testing.assert_array_equal(latent.token_ids, [2, 11, 12, 13, 108])
    assert latent.metadata["task_range"] == [13, 14]


def test_real_paper_shape(tmp_path, tokenizer):
    tokens, mask = prompt_tokens(tokenizer)
    n = int(mask.sum())
    states = np.random.default_rng(0).standard_normal((18, 816, 2048), dtype=np.float32)
    path = write_pickle(tmp_path / "avg_states_13_14_frame_0_119.pkl", paper_dict(states, tokens, mask))
    assert path.stat().st_size > 18 * 816 * 2048 * 4

    start = time.perf_counter()
    latent = import_paper_latent(path)
    elapsed = time.perf_counter() - start

    assert latent.states.shape == (18, n, 2048) and latent.metadata["text_offset"] == 768
    np.testing.assert_array_equal(latent.states, states[:, 768 : 768 + n])
    assert latent.states.base is None or latent.states.base.size == latent.states.size  # not a view of 120 MB
    assert elapsed < 5, f"import took {elapsed:.1f} s"


def test_saved_latent_loads_back(tmp_path, tokenizer):
    tokens, mask = prompt_tokens(tokenizer)
    path = write_pickle(
        tmp_path / "avg_states_13_14_frame_0_119.pkl", paper_dict(formula_states(3, 56, 8), tokens, mask)
    )
    latent = import_paper_latent(path, tokenizer=tokenizer)

    loaded = TextLatent.load(latent.save(tmp_path / "out" / "cheese.safetensors"))

    np.testing.assert_array_equal(loaded.states, latent.states)
    np.testing.assert_array_equal(loaded.token_ids, latent.token_ids)
    assert loaded.prompt == PROMPT
    assert loaded.metadata == latent.metadata


# ---------------------------------------------------------------------------------------------------------------
# Files that try to run code, or are not what they claim


class Payload:
    """Pickles as ``func(*args)``: what a tampered file would run on ``pickle.load``."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def payloads(marker) -> dict[str, Payload]:
    return {
        "os.system": Payload(os.system, f"echo pwned > {marker}"),
        "builtins.eval": Payload(builtins.eval, f"open({str(marker)!r}, 'w').write('pwned')"),
        "subprocess.Popen": Payload(subprocess.Popen, ["touch", str(marker)]),
        "numpy.load": Payload(np.load, str(marker)),
        "builtins.exec": Payload(builtins.exec, f"open({str(marker)!r}, 'w').write('pwned')"),
    }


@pytest.mark.parametrize("name", ["os.system", "builtins.eval", "builtins.exec", "subprocess.Popen", "numpy.load"])
@pytest.mark.parametrize("where", ["frame_index_to_use", "inside_observation", "whole_file"])
def test_code_in_a_pickle_is_refused_and_never_runs(tmp_path, tokenizer, name, where):
    marker = tmp_path / "marker"
    payload = payloads(marker)[name]
    tokens, mask = prompt_tokens(tokenizer)
    value = paper_dict(formula_states(2, 52, 4), tokens, mask)
    if where == "frame_index_to_use":
        value["frame_index_to_use"] = payload
    elif where == "inside_observation":
        value["last_obs"] = value["last_obs"].replace(images={"base_0_rgb": payload})
    else:
        value = payload
    path = write_pickle(tmp_path / "avg_states_13_14_frame_0_119.pkl", value)

    with pytest.raises(PaperPickleError, match=r"refusing to load (\S+) from avg_states_13_14") as info:
        import_paper_latent(path)

    refused = info.value.args[0].split()[3]
    assert refused == {"os.system": os.system.__module__ + ".system"}.get(
        name, name
    )  # os.system pickles as posix.system
    assert "this file is not a text-latent pickle" in str(info.value)
    time.sleep(0.05 if name == "subprocess.Popen" else 0)  # a spawned process would have had time to write
    assert not marker.exists()


def test_payload_written_by_hand_as_os_system_is_refused_and_would_have_run(tmp_path):
    marker = tmp_path / "marker"
    evil = b"cos\nsystem\n(V" + f"echo pwned > {marker}".encode() + b"\ntR."
    path = tmp_path / "evil.pkl"
    path.write_bytes(evil)

    with pytest.raises(PaperPickleError, match=r"refusing to load os\.system from evil\.pkl"):
        load_paper_pickle(path)
    assert not marker.exists()

    pickle.loads(evil)  # the control: the same bytes given to pickle do run the command
    assert marker.read_text().strip() == "pwned"


def test_eval_payload_is_live_under_plain_pickle(tmp_path):
    marker = tmp_path / "marker"
    data = pickle.dumps(payloads(marker)["builtins.eval"])
    (tmp_path / "e.pkl").write_bytes(data)
    with pytest.raises(PaperPickleError, match=r"builtins\.eval"):
        load_paper_pickle(tmp_path / "e.pkl")
    assert not marker.exists()
    pickle.loads(data)
    assert marker.exists()


def test_other_openpi_classes_are_refused(tmp_path):
    class Policy:
        pass

    Policy.__module__, Policy.__qualname__ = "openpi.models.model", "Policy"
    with openpi_importable():
        sys.modules["openpi.models.model"].Policy = Policy
        data = pickle.dumps({"last_obs": Policy()})
    (tmp_path / "p.pkl").write_bytes(data)
    with pytest.raises(PaperPickleError, match=r"refusing to load openpi\.models\.model\.Policy"):
        load_paper_pickle(tmp_path / "p.pkl")


def test_object_arrays_are_refused(tmp_path):
    (tmp_path / "o.pkl").write_bytes(pickle.dumps({"hidden_states_avg": np.array([1, None], dtype=object)}))
    with pytest.raises(PaperPickleError, match="numpy dtype 'O8' is not allowed"):
        load_paper_pickle(tmp_path / "o.pkl")


def test_numpy_reconstruct_cannot_allocate_a_huge_array(tmp_path):
    bomb = Payload(np._core.multiarray._reconstruct, np.ndarray, (1 << 40,), b"b")
    (tmp_path / "b.pkl").write_bytes(pickle.dumps(bomb))
    with pytest.raises(PaperPickleError, match=r"unexpected numpy _reconstruct\(\(1099511627776,\)"):
        load_paper_pickle(tmp_path / "b.pkl")


def test_array_and_file_size_limits(tmp_path, tokenizer):
    tokens, mask = prompt_tokens(tokenizer)
    path = write_pickle(tmp_path / "a.pkl", paper_dict(formula_states(2, 52, 4), tokens, mask))
    with pytest.raises(PaperPickleError, match=r"shape \(2, 52, 4\) has 416 elements.*max_array_elements"):
        import_paper_latent(path, max_array_elements=415)
    assert import_paper_latent(path, max_array_elements=416).num_slots == mask.sum()
    size = path.stat().st_size
    with pytest.raises(PaperPickleError, match=f"{size} bytes.*max_file_bytes"):
        import_paper_latent(path, max_file_bytes=size - 1)


def test_array_bytes_cannot_exceed_the_file(tmp_path):
    from jax._src.array import _reconstruct_array

    # jax's record for one array: (_reconstruct_array, (numpy _reconstruct, (ndarray, (0,), b"b"), state, aval)).
    state = (1, (1024,), np.dtype("f4"), False, np.arange(1024, dtype=np.float32).tobytes())

    def jax_record():
        return Payload(_reconstruct_array, np._core.multiarray._reconstruct, (np.ndarray, (0,), b"b"), state, {})

    (tmp_path / "one.pkl").write_bytes(pickle.dumps([jax_record()]))
    np.testing.assert_array_equal(load_paper_pickle(tmp_path / "one.pkl")[0], np.arange(1024))

    # 1000 records sharing one 4 KB state through the memo: a 24 KB file that would decode to 4 MB.
    data = pickle.dumps([jax_record() for _ in range(1000)])
    assert len(data) < 30_000
    (tmp_path / "many.pkl").write_bytes(data)
    with pytest.raises(PaperPickleError, match="more bytes than the file holds"):
        load_paper_pickle(tmp_path / "many.pkl")


@pytest.mark.parametrize("keep", [0, 1, 10, 0.5, 0.99])
def test_truncated_files(tmp_path, tokenizer, keep):
    tokens, mask = prompt_tokens(tokenizer)
    full = write_pickle(tmp_path / "full.pkl", paper_dict(formula_states(2, 52, 4), tokens, mask)).read_bytes()
    cut = tmp_path / "cut.pkl"
    cut.write_bytes(full[: int(len(full) * keep) if isinstance(keep, float) else keep])
    with pytest.raises(PaperPickleError, match=r"cut\.pkl"):
        import_paper_latent(cut)


def test_trailing_bytes_are_refused(tmp_path):
    (tmp_path / "t.pkl").write_bytes(pickle.dumps({"a": 1}) + b"extra")
    with pytest.raises(PaperPickleError, match="data after the end"):
        load_paper_pickle(tmp_path / "t.pkl")


@pytest.mark.parametrize("missing", ["hidden_states_avg", "last_obs"])
def test_missing_keys(tmp_path, tokenizer, missing):
    tokens, mask = prompt_tokens(tokenizer)
    value = paper_dict(formula_states(2, 52, 4), tokens, mask)
    del value[missing]
    path = write_pickle(tmp_path / "m.pkl", value)
    with pytest.raises(PaperPickleError, match=f"lacks '{missing}'"):
        import_paper_latent(path)


def test_observation_without_prompt_mask(tmp_path, tokenizer):
    tokens, mask = prompt_tokens(tokenizer)
    value = paper_dict(formula_states(2, 52, 4), tokens, mask)
    value["last_obs"] = value["last_obs"].replace(tokenized_prompt_mask=None)
    path = write_pickle(tmp_path / "m.pkl", value)
    with pytest.raises(PaperPickleError, match="tokenized_prompt_mask is not an array"):
        import_paper_latent(path)


def test_wrong_shapes_and_arguments(tmp_path, tokenizer):
    tokens, mask = prompt_tokens(tokenizer)
    flat = write_pickle(tmp_path / "flat.pkl", paper_dict(formula_states(2, 52, 4)[0], tokens, mask))
    with pytest.raises(PaperPickleError, match=r"hidden_states_avg must be a float array.*\(52, 4\)"):
        import_paper_latent(flat)
    short = write_pickle(tmp_path / "short.pkl", paper_dict(formula_states(2, 40, 4), tokens, mask))
    with pytest.raises(PaperPickleError, match="longer than the saved prefix"):
        import_paper_latent(short)
    ok = write_pickle(tmp_path / "ok.pkl", paper_dict(formula_states(2, 52, 4), tokens, mask))
    n = int(mask.sum())
    with pytest.raises(PaperPickleError, match=f"text_offset {52 - n + 1} does not fit"):
        import_paper_latent(ok, text_offset=52 - n + 1)
    assert import_paper_latent(ok, text_offset=52 - n).num_slots == n
    for slots in (0, TEXT_LEN + 1):
        with pytest.raises(PaperPickleError, match="slots must be an int"):
            import_paper_latent(ok, slots=slots)
    ragged = mask.copy()
    ragged[1] = False
    holes = write_pickle(tmp_path / "holes.pkl", paper_dict(formula_states(2, 52, 4), tokens, ragged))
    with pytest.raises(PaperPickleError, match="leading True"):
        import_paper_latent(holes)
    nan_states = formula_states(2, 52, 4)
    nan_states[1, 4 + 1, 0] = np.nan
    nan = write_pickle(tmp_path / "nan.pkl", paper_dict(nan_states, tokens, mask))
    with pytest.raises(PaperPickleError, match="NaN"):
        import_paper_latent(nan)


def test_not_a_dict(tmp_path):
    (tmp_path / "l.pkl").write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(PaperPickleError, match="holds a list"):
        import_paper_latent(tmp_path / "l.pkl")


# ---------------------------------------------------------------------------------------------------------------
# reconstruct_prompt.pkl and whole directories


def test_decodings(tmp_path):
    layer0 = [2, 11, 12, 13, 108]
    value = {
        "put_the_cream_cheese_in_the_bowl": {
            # the paper stores jnp.argmax(...).tolist(); arrays of either kind are accepted too
            "token_indices": [layer0, np.array([2, 40, 41, 42, 108]), jnp.array([2, 5, 6, 7, 108]), [9, 8, 7, 6, 5]],
            "decoding_result": ["put the cream cheese in the bowl\n", "a", "b", "c"],
        },
        "turn_on_the_stove": {"token_indices": [[2, 3], [4, 5], [6, 7], [8, 9]], "decoding_result": ["", "", "", ""]},
    }
    path = write_pickle(tmp_path / "reconstruct_prompt.pkl", value)
    decodings = import_paper_decodings(path)
    assert decodings == {
        "put_the_cream_cheese_in_the_bowl": [layer0, [2, 40, 41, 42, 108], [2, 5, 6, 7, 108], [9, 8, 7, 6, 5]],
        "turn_on_the_stove": [[2, 3], [4, 5], [6, 7], [8, 9]],
    }
    assert all(type(i) is int for layers in decodings.values() for ids in layers for i in ids)

    del value["turn_on_the_stove"]["token_indices"]
    broken = write_pickle(tmp_path / "broken.pkl", value)
    with pytest.raises(PaperPickleError, match="'turn_on_the_stove' lacks 'token_indices'"):
        import_paper_decodings(broken)
    floats = write_pickle(tmp_path / "floats.pkl", {"k": {"token_indices": [np.ones(3, np.float32)]}})
    with pytest.raises(PaperPickleError, match="other than id lists"):
        import_paper_decodings(floats)


def test_directory_conversion(tmp_path, tokenizer):
    source = tmp_path / "exp_data" / "pi0"
    source.mkdir(parents=True)
    prompts = {13: PROMPT, 16: "turn on the stove"}
    for task, prompt in prompts.items():
        tokens, mask = prompt_tokens(tokenizer, prompt)
        states = formula_states(2, 52, 4) + task  # tell the tasks apart
        write_pickle(
            source / f"avg_states_{task}_{task + 1}_frame_0_119.pkl", paper_dict(states, tokens, mask, task=task)
        )
    write_pickle(source / "reconstruct_prompt.pkl", {"x": {"token_indices": [[1]]}})  # not a latent: skipped

    unnamed = import_paper_directory(source, tmp_path / "by_task")
    assert [p.name for p in unnamed] == ["task_13.safetensors", "task_16.safetensors"]

    named = import_paper_directory(source, tmp_path / "by_prompt", tokenizer=tokenizer, slots=9)
    assert sorted(p.name for p in named) == [
        "put_the_cream_cheese_in_the_bowl.safetensors",
        "turn_on_the_stove.safetensors",
    ]
    latents = load_latents([tmp_path / "by_prompt"])
    stove = latents["turn_on_the_stove"]
    assert stove.prompt == "turn on the stove" and stove.num_slots == 9
    np.testing.assert_array_equal(stove.states[1, :, 2], 16 + 10000 + (4 + np.arange(9)) * 10 + 2)
    assert latents["put_the_cream_cheese_in_the_bowl"].metadata["task_range"] == [13, 14]


def test_directory_refuses_two_files_with_one_name(tmp_path, tokenizer):
    tokens, mask = prompt_tokens(tokenizer)
    for task in (13, 14):
        write_pickle(
            tmp_path / f"avg_states_{task}_{task + 1}_frame_0_119.pkl",
            paper_dict(formula_states(2, 52, 4), tokens, mask, task=task),
        )
    with pytest.raises(PaperPickleError, match="would both be written as put_the_cream_cheese_in_the_bowl"):
        import_paper_directory(tmp_path, tmp_path / "out", tokenizer=tokenizer)
    assert not (tmp_path / "out").exists()  # nothing written when one file fails


def test_jax_is_not_asked_to_rebuild_arrays(tmp_path, tokenizer, monkeypatch):
    # The import must not call jax's own _reconstruct_array (which would device_put 120 MB).
    from jax._src import array as jax_array

    def fail(*args):
        raise AssertionError("jax's _reconstruct_array was called")

    tokens, mask = prompt_tokens(tokenizer)
    path = write_pickle(tmp_path / "a.pkl", paper_dict(formula_states(2, 52, 4), tokens, mask))
    monkeypatch.setattr(jax_array, "_reconstruct_array", fail)
    assert isinstance(load_paper_pickle(path)["hidden_states_avg"], np.ndarray)
    assert jax.__version__  # jax itself stays importable; only its reconstruction is bypassed
