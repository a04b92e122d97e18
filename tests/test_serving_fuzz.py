"""Hostile frames against a live server: every frame gets a reply, no reply is an internal error, and the server then
still serves a valid request. Frames are random bytes, random msgpack values, encoded arrays with random headers,
truncated or bit-flipped valid requests, and valid requests with one field replaced by something random."""

import math

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openpi_client.websocket_client_policy import WebsocketClientPolicy
from websockets.sync.client import connect

from tests.conftest import libero_obs, load_libero_policy
from textlatent.latents import TextLatent
from textlatent.model import gemma_config
from textlatent.serving import PolicyServer, ServerConfig, ServerThread, packb, unpackb

FIELDS = ["observation/image", "observation/wrist_image", "observation/state", "prompt", "noise", "steering"]
DTYPES = ["|u1", "<f4", "<f8", "|b1", "<i8", "<U4", "|S3", "|O", "<c8", "|V4", "<M8", "<f2", ">f4", "", "x", "<U0"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.binary(max_size=20),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(
            st.one_of(st.text(max_size=8), st.binary(max_size=8), st.integers(-(2**63), 2**63 - 1)), inner, max_size=4
        ),
    ),
    max_leaves=12,
)


@st.composite
def encoded_arrays(draw):
    """A map that claims to be an openpi ndarray or numpy scalar, with random (often inconsistent) fields."""
    if draw(st.booleans()):
        shape = draw(st.lists(st.integers(min_value=-2, max_value=300), max_size=4))
        count = math.prod(shape) if all(s >= 0 for s in shape) else 0
        length = draw(st.sampled_from([0, 1, min(count, 4096), min(count * 4, 4096), 7]))
        array = {b"__ndarray__": True, b"data": bytes(length), b"dtype": draw(st.sampled_from(DTYPES)), b"shape": shape}
        return {k: v for k, v in array.items() if draw(st.integers(0, 9)) > 0}  # sometimes drop a field
    return {b"__npgeneric__": True, b"data": draw(scalars), b"dtype": draw(st.sampled_from(DTYPES))}


random_arrays = st.builds(
    lambda shape, dtype, seed: np.random.default_rng(seed).normal(size=shape).astype(dtype),
    st.lists(st.integers(0, 6), max_size=4).map(tuple),
    st.sampled_from([np.uint8, np.float32, np.float64, np.int64, np.bool_, np.float16]),
    st.integers(0, 100),
)
steering = st.fixed_dictionaries(
    {},
    optional={
        "mode": st.sampled_from(["tli", "tei", "tei_tli", "single_layer", "reconstruction", "blank", "mask", "obscure"])
        | values,
        "latents": st.lists(st.sampled_from(["plate", "stove", "nope"]), max_size=3) | values,
        "schedule": st.fixed_dictionaries(
            {}, optional={"kind": st.sampled_from(["linear", "cosine", "switch", "constant", "x"]), "steps": values}
        )
        | values,
        "layer": st.integers(-2, 40) | values,
        "slots": st.integers(-1, 60) | values,
        "token_ids": st.lists(st.integers(-5, 300_000), max_size=60) | values,
        "episode_id": values,
        "step": st.integers(-3, 100) | values,
        "extra": values,
    },
)


@st.composite
def mutated_requests(draw):
    """A valid LIBERO request with one field replaced, removed or joined by another."""
    request = libero_obs(draw(st.integers(0, 3)), size=draw(st.sampled_from([1, 2, 17, 56])))
    field = draw(st.sampled_from(FIELDS))
    action = draw(st.sampled_from(["replace", "replace", "array", "delete", "steer", "extra_key"]))
    if action == "replace":
        request[field] = draw(values | encoded_arrays())
    elif action == "array":
        request[field] = draw(random_arrays)
    elif action == "delete":
        request.pop(field, None)
    elif action == "steer":
        request["steering"] = draw(steering)
    else:
        request[draw(st.text(max_size=10))] = draw(values)
    return packb(request) if all(isinstance(k, str) for k in request) else msgpack.packb(request, default=str)


@st.composite
def damaged_frames(draw):
    """A valid request, truncated or with bytes flipped."""
    frame = bytearray(packb(libero_obs(0, size=4)))
    if draw(st.booleans()):
        return bytes(frame[: draw(st.integers(0, len(frame) - 1))])
    for _ in range(draw(st.integers(1, 8))):
        frame[draw(st.integers(0, len(frame) - 1))] = draw(st.integers(0, 255))
    return bytes(frame)


frames = st.one_of(
    st.binary(max_size=200),
    values.map(lambda v: msgpack.packb(v, use_bin_type=True)),
    st.dictionaries(st.text(max_size=8), encoded_arrays(), max_size=3).map(msgpack.packb),
    mutated_requests(),
    damaged_frames(),
    st.text(max_size=50),  # a text frame
)


@pytest.fixture(scope="module")
def server(libero_checkpoint, tokenizer_path):
    policy = load_libero_policy(libero_checkpoint, tokenizer_path)
    llm = gemma_config(policy.model.config.paligemma_variant)
    rng = np.random.default_rng(0)
    latents = {
        name: TextLatent(rng.normal(size=(llm.depth, 7, llm.width)).astype(np.float32), np.arange(7) + 2, name)
        for name in ("plate", "stove")
    }
    config = ServerConfig(port=0, max_wait_ms=0, max_request_rows=8)
    with ServerThread(PolicyServer(policy, config, latents=latents)) as thread:
        yield thread


@pytest.mark.slow
def test_hostile_frames_never_break_the_server(server):
    outcomes = {"error": 0, "served": 0}
    ws = connect(server.url, compression=None, max_size=None)
    unpackb(ws.recv(30))  # metadata

    @settings(
        max_examples=1200,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(frame=frames)
    def throw(frame):
        ws.send(frame)
        reply = ws.recv(60)
        if isinstance(reply, str):
            # Every refusal names the caller's mistake; an internal error would be a bug of ours.
            assert reply.startswith("bad request: "), reply
            outcomes["error"] += 1
        else:
            decoded = unpackb(reply)  # the frame happened to be a valid request: a real reply
            assert np.all(np.isfinite(decoded["actions"]))
            outcomes["served"] += 1

    throw()
    ws.close()
    assert outcomes["error"] + outcomes["served"] >= 1000 and outcomes["error"] >= 900, outcomes
    client = WebsocketClientPolicy("127.0.0.1", server.port)
    assert client.infer(libero_obs(5))["actions"].shape[-1] == 7
    assert server.server.totals.errors == outcomes["error"]
