"""The policy server against the stock openpi-client: wire format, batching, steering, hostile input, shutdown."""

import http.client
import socket
import threading
import time

import numpy as np
import pytest
import websockets
from openpi_client import msgpack_numpy as openpi_msgpack
from openpi_client.websocket_client_policy import WebsocketClientPolicy
from websockets.sync.client import connect

from tests.conftest import libero_obs, load_libero_policy
from textlatent.latents import TextLatent
from textlatent.model import ResidualEdit, gemma_config
from textlatent.serving import PolicyServer, ServerConfig, ServerThread, packb, unpackb
from textlatent.serving.batching import bucket_sizes

H, D = 6, 32  # the tiny LIBERO policy's horizon and model action dims


@pytest.fixture(scope="module")
def policy(libero_checkpoint, tokenizer_path):
    return load_libero_policy(libero_checkpoint, tokenizer_path)


@pytest.fixture(scope="module")
def reference(libero_checkpoint, tokenizer_path):
    """A second policy from the same checkpoint, used only through ``Policy.infer``."""
    return load_libero_policy(libero_checkpoint, tokenizer_path)


@pytest.fixture(scope="module")
def f32_pair(libero_checkpoint, tokenizer_path):
    """(served, reference) float32 policies: batching may change rows only at float32 rounding."""
    import textlatent
    from tests.conftest import LIBERO_OVERRIDES

    return tuple(
        textlatent.load_policy(
            "pi0_libero",
            libero_checkpoint[0],
            tokenizer=str(tokenizer_path),
            **{**LIBERO_OVERRIDES, "dtype": "float32"},
        )
        for _ in range(2)
    )


@pytest.fixture(scope="module")
def f32_server(f32_pair):
    with ServerThread(PolicyServer(f32_pair[0], ServerConfig(port=0, max_batch=8, max_wait_ms=20))) as thread:
        yield thread


@pytest.fixture(scope="module")
def latents(policy):
    llm = gemma_config(policy.model.config.paligemma_variant)
    rng = np.random.default_rng(42)

    def make(prompt, slots):
        ids = np.asarray(policy.transforms.tokenizer.encode(prompt)[:slots], np.int32)
        return TextLatent(rng.normal(0, 2, (llm.depth, len(ids), llm.width)).astype(np.float32), ids, prompt)

    return {"plate": make("put the bowl on the plate", 9), "stove": make("put the bowl on the stove", 7)}


@pytest.fixture(scope="module")
def server(policy, latents):
    with ServerThread(
        PolicyServer(policy, ServerConfig(port=0, max_batch=8, max_wait_ms=20), latents=latents)
    ) as thread:
        yield thread


def noise_for(seed):
    return np.random.default_rng(seed).normal(size=(H, D)).astype(np.float32)


def raw_request(server, frame, *, timeout=30):
    """Send one frame on a fresh raw connection; return the reply (str for errors, decoded dict otherwise)."""
    with connect(server.url, compression=None, max_size=None, open_timeout=timeout) as ws:
        unpackb(ws.recv(timeout))
        ws.send(frame)
        reply = ws.recv(timeout)
    return reply if isinstance(reply, str) else unpackb(reply)


# ------------------------------------------------------------------------------------------------ wire format
def test_encoding_is_byte_identical_to_openpi_client():
    message = {
        "observation/image": np.arange(24, dtype=np.uint8).reshape(2, 4, 3),
        "observation/state": np.linspace(-1, 1, 8),
        "flags": np.array([True, False]),
        "names": np.array(["ab", "c"]),
        "scalar": np.float32(1.5),
        "zero_d": np.array(3, np.int64),
        "nested": {"list": [1, 2.5, "x", None], "nan": np.array([np.nan, np.inf])},
        "prompt": "put the bowl on the plate",
    }
    assert packb(message) == openpi_msgpack.packb(message)
    ours, theirs = unpackb(openpi_msgpack.packb(message)), openpi_msgpack.unpackb(packb(message))
    for decoded in (ours, theirs):
        np.testing.assert_array_equal(decoded["observation/image"], message["observation/image"])
        np.testing.assert_array_equal(decoded["nested"]["nan"], message["nested"]["nan"])
        np.testing.assert_array_equal(decoded["names"], message["names"])
        assert decoded["scalar"] == np.float32(1.5) and decoded["scalar"].dtype == np.float32
        assert decoded["zero_d"].shape == () and decoded["nested"]["list"] == [1, 2.5, "x", None]


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (b"\xc1", "malformed"),
        (packb({"a": 1}) + b"\x00", "not a single msgpack message"),
        (
            openpi_msgpack.packb({"x": {b"__ndarray__": True, b"data": b"\0" * 3, b"dtype": "<f4", b"shape": [1]}}),
            "needs 4",
        ),
        (
            openpi_msgpack.packb({"x": {b"__ndarray__": True, b"data": b"", b"dtype": "|O", b"shape": [0]}}),
            "not allowed",
        ),
        (
            openpi_msgpack.packb({"x": {b"__ndarray__": True, b"data": b"", b"dtype": "<c8", b"shape": [0]}}),
            "not allowed",
        ),
        (openpi_msgpack.packb({"x": {b"__ndarray__": True, b"data": b"", b"dtype": "nope", b"shape": [0]}}), "dtype"),
        (
            openpi_msgpack.packb({"x": {b"__ndarray__": True, b"data": b"", b"dtype": "<f4", b"shape": [-1]}}),
            "non-negative",
        ),
        (
            openpi_msgpack.packb({"x": {b"__ndarray__": True, b"data": b"", b"dtype": "<f4", b"shape": [1 << 40] * 2}}),
            "elements",
        ),
        (openpi_msgpack.packb({"x": {b"__ndarray__": True, b"data": b""}}), "exactly the keys"),
        (openpi_msgpack.packb({"x": {b"__npgeneric__": True, b"data": 300, b"dtype": "|u1"}}), "does not fit"),
        (openpi_msgpack.packb({"x": {b"__npgeneric__": True, b"data": 1e300, b"dtype": "<f2"}}), "does not fit"),
    ],
)
def test_decoding_rejects_malformed_frames(frame, message):
    from textlatent.serving import WireError

    with pytest.raises(WireError, match=message):
        unpackb(frame)


def test_bucket_sizes():
    assert bucket_sizes(1) == (1,)
    assert bucket_sizes(8) == (1, 2, 4, 8)
    assert bucket_sizes(12) == (1, 2, 4, 8, 12)


# ------------------------------------------------------------------------------------------------ stock client
def test_stock_client_gets_policy_infer_actions(server, reference):
    client = WebsocketClientPolicy("127.0.0.1", server.port)
    metadata = client.get_server_metadata()
    assert metadata["config"] == "pi0_libero" and metadata["action_horizon"] == H
    assert metadata["latents"] == ["plate", "stove"]
    for seed in range(3):
        obs = libero_obs(seed)
        noise = noise_for(seed)
        reply = client.infer({**obs, "noise": noise})
        expected = reference.infer(obs, noise=noise)["actions"]
        assert reply["actions"].shape == (H, 7) and reply["actions"].dtype == np.float64
        np.testing.assert_array_equal(reply["actions"], expected)
        assert reply["policy_timing"]["infer_ms"] > 0 and reply["server_timing"]["infer_ms"] > 0
        assert ("prev_total_ms" in reply["server_timing"]) == (seed > 0)


def test_default_noise_follows_openpi_key_sequence(libero_checkpoint, tokenizer_path):
    """Without ``noise``, a fresh server answers a client exactly as a fresh ``Policy.infer`` (key split per call)."""
    served, fresh = (load_libero_policy(libero_checkpoint, tokenizer_path) for _ in range(2))
    with ServerThread(PolicyServer(served, ServerConfig(port=0))) as thread:
        client = WebsocketClientPolicy("127.0.0.1", thread.port)
        for seed in range(3):
            obs = libero_obs(seed)
            np.testing.assert_array_equal(client.infer(obs)["actions"], fresh.infer(obs)["actions"])


def test_batched_request(f32_server, f32_pair):
    server, reference = f32_server, f32_pair[1]
    obs = [libero_obs(s) for s in range(3)]
    batch = {k: np.stack([o[k] for o in obs]) for k in obs[0] if k != "prompt"}
    batch["prompt"] = [o["prompt"] for o in obs]
    noise = np.stack([noise_for(10 + s) for s in range(3)])
    reply = WebsocketClientPolicy("127.0.0.1", server.port).infer({**batch, "noise": noise})
    assert reply["actions"].shape == (3, H, 7)
    for i in range(3):
        expected = reference.infer(obs[i], noise=noise[i])["actions"]
        np.testing.assert_allclose(reply["actions"][i], expected, rtol=1e-5, atol=1e-5)


def _concurrent(port, clients, rounds=3):
    """``clients`` stock clients in threads, released together each round; {(client, round): reply}."""
    barrier = threading.Barrier(clients)
    replies, errors = {}, []

    def run(i):
        try:
            client = WebsocketClientPolicy("127.0.0.1", port)
            for round_ in range(rounds):
                barrier.wait(timeout=60)
                seed = 100 * i + round_
                replies[(i, round_)] = client.infer({**libero_obs(seed), "noise": noise_for(seed)})
        except Exception as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert len(replies) == rounds * clients
    return replies


@pytest.mark.parametrize("clients", [8, 16])
def test_concurrent_clients_are_batched_and_correct(f32_server, f32_pair, clients):
    engine = f32_server.server.engine
    before = dict(engine.stats.sizes)
    replies = _concurrent(f32_server.port, clients)
    shared = {size: n - before.get(size, 0) for size, n in engine.stats.sizes.items() if size > 1}
    assert sum(shared.values()) > 0, f"no request shared a model call: {engine.stats.sizes}"
    assert max(r["policy_timing"]["batch_size"] for r in replies.values()) > 1
    for (i, round_), reply in replies.items():
        seed = 100 * i + round_
        expected = f32_pair[1].infer(libero_obs(seed), noise=noise_for(seed))["actions"]
        # Batch size changes XLA's matmul blocking: rows agree to float32 rounding, not bit for bit.
        np.testing.assert_allclose(reply["actions"], expected, rtol=1e-5, atol=1e-5)


def test_batch_invariant_server_is_bit_identical_to_serving_alone(policy):
    """bf16 (openpi's serving arithmetic): with --batch-invariant, 8 concurrent clients get exactly the actions each
    request gets when it is the only one on the server."""
    config = ServerConfig(port=0, max_batch=8, max_wait_ms=50, batch_invariant=True)
    with ServerThread(PolicyServer(policy, config)) as thread:
        replies = _concurrent(thread.port, 8, rounds=2)
        assert max(r["policy_timing"]["batch_size"] for r in replies.values()) > 1
        alone = WebsocketClientPolicy("127.0.0.1", thread.port)
        for (i, round_), reply in replies.items():
            seed = 100 * i + round_
            single = alone.infer({**libero_obs(seed), "noise": noise_for(seed)})
            assert single["policy_timing"]["batch_size"] == 1
            np.testing.assert_array_equal(reply["actions"], single["actions"])


def test_rows_of_a_batch_do_not_depend_on_their_neighbours(policy):
    """The same request in two different batches of the same bucket gives bit-identical actions."""
    from textlatent.serving.batching import BatchingEngine, Job

    engine = BatchingEngine(policy, max_batch=4, max_wait_ms=200).start()
    results = {}

    def submit(tag, seed):
        inputs = policy.transforms.inputs(libero_obs(seed))
        inputs.pop("batched")
        engine.submit(Job(inputs, noise_for(seed)[None], None, lambda r, tag=tag: results.__setitem__(tag, r)))

    for tag, seed in [("a", 1), ("b", 2), ("c", 3), ("d", 4)]:
        submit(tag, seed)
    for tag, seed in [("e", 5), ("a2", 1), ("f", 6), ("g", 7)]:
        submit(tag, seed)
    engine.stop()
    assert results["a"]["policy_timing"]["bucket"] == results["a2"]["policy_timing"]["bucket"] == 4
    np.testing.assert_array_equal(results["a"]["actions"], results["a2"]["actions"])


# ------------------------------------------------------------------------------------------------ steering
def _bf16(x):
    import ml_dtypes

    return np.asarray(x, np.float32).astype(ml_dtypes.bfloat16)


def test_tli_steering_adds_the_papers_term(server, reference, latents, policy):
    """TLI at call s: (1-α)(T_A-T_B) + α(T_B-T_A) in bf16, α = bf16(min(s, N+1)/(N+1)), before blocks 1…L-1 on the
    first 7 slots (the shorter latent); α = 0.5 adds nothing."""
    client = WebsocketClientPolicy("127.0.0.1", server.port)
    obs, noise = libero_obs(7), noise_for(7)
    t_a, t_b = latents["plate"].states[:, :7], latents["stove"].states[:, :7]
    n = 3
    for step in (0, 1, 2, 5):
        steering = {
            "mode": "tli",
            "latents": ["plate", "stove"],
            "schedule": {"kind": "linear", "steps": n},
            "step": step,
        }
        reply = client.infer({**obs, "noise": noise, "steering": steering})
        alpha = min(step, n + 1) / (n + 1)
        assert reply["steering"] == {"mode": "tli", "step": step, "alpha": pytest.approx(float(_bf16(alpha)))}
        a = _bf16(alpha)
        diff = _bf16(_bf16(t_a) - _bf16(t_b))
        term = _bf16(_bf16((_bf16(1) - a) * diff) + _bf16(a * _bf16(-diff.astype(np.float32))))
        delta = term.astype(np.float32)
        delta[0] = 0
        text_start = policy.model.config.text_start
        edit = ResidualEdit(positions=np.arange(7) + text_start, delta=delta[:, None])
        expected = reference.infer(obs, noise=noise, edit=edit)["actions"]
        np.testing.assert_allclose(reply["actions"], expected, rtol=1e-5, atol=1e-5)
        plain = reference.infer(obs, noise=noise)["actions"]
        if step == 2:  # α = 0.5
            np.testing.assert_array_equal(reply["actions"], plain)
        else:
            assert np.abs(reply["actions"] - plain).max() > 1e-4


def test_reconstruction_blanks_the_prompt_and_adds_the_latent(server, reference, latents, policy):
    client = WebsocketClientPolicy("127.0.0.1", server.port)
    obs, noise = libero_obs(8), noise_for(8)
    reply = client.infer({**obs, "noise": noise, "steering": {"mode": "reconstruction", "latents": ["plate"]}})
    # Independently: blank tokens (BOS everywhere but the last real token), latent added before blocks 1…L-1.
    observation, _, _ = reference.prepare(obs)
    tokens = np.asarray(observation.tokenized_prompt).copy()
    valid = int(np.asarray(observation.tokenized_prompt_mask).sum())
    tokens[0, : valid - 1] = 2
    delta = _bf16(latents["plate"].states).astype(np.float32)
    delta[0] = 0
    slots = latents["plate"].num_slots
    edit = ResidualEdit(positions=np.arange(slots) + policy.model.config.text_start, delta=delta[:, None])
    import dataclasses

    import jax.numpy as jnp

    blank = dataclasses.replace(observation, tokenized_prompt=jnp.asarray(tokens))
    from textlatent.policy.policy import _sample

    sample = reference.jitted(_sample, 1, static_argnums=(0,), static_argnames=("num_steps",))
    expected_raw = sample(
        reference._graphdef, reference._state, None, blank, jnp.asarray(noise)[None], edit, num_steps=10
    )
    expected = reference.transforms.outputs(np.asarray(expected_raw), np.asarray(observation.state))[0]
    np.testing.assert_allclose(reply["actions"], expected, rtol=1e-5, atol=1e-5)


def test_episode_id_numbers_policy_calls(server):
    client = WebsocketClientPolicy("127.0.0.1", server.port)
    steps = []
    for _ in range(3):
        steering = {"mode": "tli", "latents": ["plate", "stove"], "schedule": {"steps": 4}, "episode_id": "ep-9"}
        steps.append(client.infer({**libero_obs(1), "steering": steering})["steering"]["step"])
    other = client.infer({**libero_obs(1), "steering": {**steering, "episode_id": "ep-10"}})
    assert steps == [0, 1, 2] and other["steering"]["step"] == 0


@pytest.mark.parametrize(
    ("steering", "message"),
    [
        ({"mode": "tli", "latents": ["plate", "nope"], "step": 0}, "unknown latent"),
        ({"mode": "tli", "latents": ["plate"], "step": 0}, "takes 2 latent"),
        ({"mode": "tli", "latents": ["plate", "stove"]}, "send steering.step"),
        ({"mode": "warp", "latents": []}, "steering.mode must be one of"),
        ({"mode": "tli", "latents": ["plate", "stove"], "step": -1}, "integer >= 0"),
        ({"mode": "tli", "latents": ["plate", "stove"], "step": 0, "colour": 1}, "unknown steering fields"),
        ({"mode": "tli", "latents": ["plate", "stove"], "step": 0, "schedule": {"kind": "zigzag"}}, "unknown schedule"),
        ({"mode": "single_layer", "latents": ["plate", "stove"], "step": 0, "layer": 0}, "layer in 1.."),
        ({"mode": "single_layer", "latents": ["plate", "stove"], "step": 0}, "'layer' is required"),
        ({"mode": "tli", "latents": ["plate", "stove"], "step": 0, "slots": 20}, "only 7 slots"),
        ("tli", "must be a map"),
        ({"mode": "obscure", "token_ids": [2, 10**6]}, "below the model's vocabulary size"),
    ],
)
def test_bad_steering_gets_a_clear_error(server, steering, message):
    reply = raw_request(server, packb({**libero_obs(0), "steering": steering}))
    assert isinstance(reply, str) and reply.startswith("bad request:") and message in reply, reply


# ------------------------------------------------------------------------------------------------ hostile input
@pytest.mark.parametrize(
    ("frame", "message"),
    [
        ("hello", "text frames are not requests"),
        (b"\x93\x01\x02\x03", "must be a msgpack map"),
        (b"\xc1 not msgpack at all", "malformed"),
        (packb({1: 2}), "keys must be strings"),
        (packb({**libero_obs(), "extra": 1}), "unknown request keys ['extra']"),
        (packb({k: v for k, v in libero_obs().items() if k != "observation/state"}), "lacks ['observation/state']"),
        (packb({**libero_obs(), "observation/state": np.full(8, np.nan)}), "NaN or inf"),
        (packb({**libero_obs(), "observation/state": np.zeros(5)}), "must have 8 values"),
        (packb({**libero_obs(), "observation/image": np.zeros((4, 4), np.uint8)}), "must have shape"),
        (packb({**libero_obs(), "observation/image": np.zeros((8, 8, 3), np.int64)}), "must be uint8"),
        (packb({**libero_obs(), "observation/image": np.zeros((1, 9000, 3), np.uint8)}), "limit is 4096"),
        (packb({**libero_obs(), "prompt": 3}), "must be a string"),
        (
            packb(
                {
                    "observation/image": np.zeros((2, 4, 4, 3), np.uint8),
                    "observation/wrist_image": np.zeros((2, 4, 4, 3), np.uint8),
                    "observation/state": np.zeros((2, 8)),
                    "prompt": 7,
                }
            ),
            "string or a list of strings",
        ),
        (packb({**libero_obs(), "observation/state": [[1, 2], [3]]}), "rectangular numeric array"),
        (packb({**libero_obs(), "observation/image": {"a": 1}}), "must be an array, got dict"),
        (packb({**libero_obs(), "observation/image": [1, "a"]}), "must be a numeric"),
        (
            packb(
                {
                    "observation/image": np.zeros((65, 2, 2, 3), np.uint8),
                    "observation/wrist_image": np.zeros((65, 2, 2, 3), np.uint8),
                    "observation/state": np.zeros((65, 8)),
                }
            ),
            "at most 64 observations",
        ),
        (packb({**libero_obs(), "noise": [[1.0, 2.0], [3.0]]}), "noise must be a rectangular numeric array"),
        (packb({**libero_obs(), "noise": np.zeros((2, 2))}), "noise must be float"),
        (packb({**libero_obs(), "noise": np.full((H, D), np.inf)}), "NaN or inf"),
    ],
)
def test_bad_requests_get_a_text_error_and_the_connection_survives(server, frame, message):
    with connect(server.url, compression=None, max_size=None) as ws:
        unpackb(ws.recv(10))
        ws.send(frame)
        reply = ws.recv(30)
        assert isinstance(reply, str) and message in reply, reply
        ws.send(packb(libero_obs()))
        assert unpackb(ws.recv(30))["actions"].shape == (H, 7)


def test_oversized_requests(policy):
    config = ServerConfig(port=0, max_request_mb=0.05)  # 52 kB: error reply; over 210 kB: refused unread
    with ServerThread(PolicyServer(policy, config)) as thread:
        with connect(thread.url, compression=None, max_size=None) as ws:
            unpackb(ws.recv(10))
            ws.send(packb({**libero_obs(), "observation/image": np.zeros((150, 150, 3), np.uint8)}))
            reply = ws.recv(10)
            assert isinstance(reply, str) and "exceeds the server's limit" in reply and "--max-request-mb" in reply
            ws.send(packb(libero_obs()))
            assert unpackb(ws.recv(30))["actions"].shape == (H, 7)
        with connect(thread.url, compression=None, max_size=None) as ws:
            unpackb(ws.recv(10))
            ws.send(b"\x00" * 300_000)
            with pytest.raises(websockets.ConnectionClosedError) as info:
                ws.recv(10)
            assert info.value.rcvd.code == 1009
        assert WebsocketClientPolicy("127.0.0.1", thread.port).infer(libero_obs())["actions"].shape == (H, 7)


def test_abrupt_disconnects_and_slow_clients_do_not_disturb_others(server):
    # A client that sends a request and vanishes before the reply.
    ws = connect(server.url, compression=None, max_size=None)
    ws.recv(10)
    ws.send(packb(libero_obs()))
    ws.socket.close()
    # A client that opens a TCP connection and sends half a handshake; another that sends half a frame.
    stalled = socket.create_connection(("127.0.0.1", server.port))
    stalled.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
    half = connect(server.url, compression=None, max_size=None)
    half.recv(10)
    half.socket.sendall(b"\x82\x7e\x10\x00" + b"\x00" * 100)  # header of a 4 kB binary frame, then silence
    try:
        client = WebsocketClientPolicy("127.0.0.1", server.port)
        assert client.infer(libero_obs(3))["actions"].shape == (H, 7)
    finally:
        stalled.close()
        half.socket.close()


def test_healthz_and_api_key(policy):
    with ServerThread(PolicyServer(policy, ServerConfig(port=0, api_key="s3cret"))) as thread:
        conn = http.client.HTTPConnection("127.0.0.1", thread.port, timeout=10)
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        assert response.status == 200 and response.read() == b"OK\n"
        with pytest.raises(websockets.InvalidStatus) as info:
            connect(thread.url, open_timeout=10)
        assert info.value.response.status_code == 401 and b"Api-Key" in info.value.response.body
        client = WebsocketClientPolicy("127.0.0.1", thread.port, api_key="s3cret")
        assert client.infer(libero_obs())["actions"].shape == (H, 7)


def test_graceful_shutdown_answers_requests_in_flight(policy):
    thread = ServerThread(PolicyServer(policy, ServerConfig(port=0, max_wait_ms=500))).start()
    client = WebsocketClientPolicy("127.0.0.1", thread.port)
    client.infer(libero_obs())  # compiled
    reply = {}
    # max_wait 500 ms with 2 clients connected: this request waits in the batcher when stop() is called.
    other = connect(thread.url)
    other.recv(10)  # metadata
    worker = threading.Thread(target=lambda: reply.setdefault("r", client.infer(libero_obs(2))))
    worker.start()
    time.sleep(0.1)
    thread.stop()
    worker.join(30)
    assert reply["r"]["actions"].shape == (H, 7)
    with pytest.raises(websockets.ConnectionClosed) as info:
        other.recv(5)
    assert info.value.rcvd.code == 1001
    with pytest.raises(OSError):
        connect(f"ws://127.0.0.1:{thread.port}", open_timeout=2)


def test_warmup_compiles_the_program_real_requests_use(libero_checkpoint, tokenizer_path):
    """After warm-up, a real request (its camera masked, its prompt bucketed) triggers no XLA compilation."""
    import jax

    compiles = []
    jax.monitoring.register_event_duration_secs_listener(
        lambda event, *_, **__: (
            compiles.append(event) if event == "/jax/core/compile/backend_compile_duration" else None
        )
    )
    served = load_libero_policy(libero_checkpoint, tokenizer_path)
    server = PolicyServer(served, ServerConfig(port=0, max_batch=2))
    with ServerThread(server) as thread:
        server.engine.warmup()
        client = WebsocketClientPolicy("127.0.0.1", thread.port)
        before = len(compiles)
        client.infer({**libero_obs(1), "noise": noise_for(1)})
        assert len(compiles) == before  # the warm-up compiled exactly what requests run
