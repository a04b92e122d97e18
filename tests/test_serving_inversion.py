"""The server's inversion option through the stock openpi client: invert the plan, reconstruct it, edit it."""

import numpy as np
import pytest
from openpi_client.websocket_client_policy import WebsocketClientPolicy

import textlatent
from tests.conftest import LIBERO_OVERRIDES, libero_obs
from textlatent.serving import PolicyServer, ServerConfig, ServerThread

H, D = 6, 32


@pytest.fixture(scope="module")
def pair(libero_checkpoint, tokenizer_path):
    """(served, reference) float32 policies: the round trip is exact to float32 rounding there."""
    overrides = {**LIBERO_OVERRIDES, "dtype": "float32"}
    return tuple(
        textlatent.load_policy("pi0_libero", libero_checkpoint[0], tokenizer=str(tokenizer_path), **overrides)
        for _ in range(2)
    )


@pytest.fixture(scope="module")
def client(pair):
    with ServerThread(PolicyServer(pair[0], ServerConfig(port=0))) as thread:
        yield WebsocketClientPolicy("127.0.0.1", thread.port)


def noise_for(seed):
    return np.random.default_rng(seed).normal(size=(H, D)).astype(np.float32)


def test_inversion_round_trips_the_plan(client, pair):
    obs, noise = libero_obs(3), noise_for(3)
    reply = client.infer({**obs, "noise": noise, "inversion": {}})
    expected = pair[1].infer(obs, noise=noise)["actions"]
    np.testing.assert_allclose(reply["actions"], expected, rtol=1e-5, atol=1e-5)  # plain π0's answer
    inversion = reply["inversion"]
    np.testing.assert_allclose(inversion["noise"], noise, atol=1e-4)
    np.testing.assert_allclose(inversion["source_noise"], noise, atol=0)
    np.testing.assert_allclose(inversion["reconstructed_actions"], reply["actions"], atol=1e-4)
    assert inversion["metrics"]["reconstruction"]["mse_model"] < 1e-8
    assert inversion["prefix_encodings"] == 1 and "edited_actions" not in inversion


def test_naive_inversion_is_reported_with_its_error(client):
    obs, noise = libero_obs(4), noise_for(4)
    exact = client.infer({**obs, "noise": noise, "inversion": {"method": "fixed_point"}})["inversion"]
    naive = client.infer({**obs, "noise": noise, "inversion": {"method": "naive"}})["inversion"]
    assert naive["metrics"]["reconstruction"]["mse_model"] > 100 * max(
        exact["metrics"]["reconstruction"]["mse_model"], 1e-12
    )


def test_editing_under_another_prompt_and_the_same_prompt(client):
    obs, noise = libero_obs(5), noise_for(5)
    other = client.infer({**obs, "noise": noise, "inversion": {"edit_prompt": "open the top drawer"}})["inversion"]
    assert other["prefix_encodings"] == 2
    assert np.abs(other["edited_actions"] - other["reconstructed_actions"]).max() > 1e-3
    assert other["metrics"]["edit"]["mse_robot"] > 0
    same = client.infer({**obs, "noise": noise, "inversion": {"edit_prompt": obs["prompt"]}})["inversion"]
    np.testing.assert_array_equal(same["edited_actions"], same["reconstructed_actions"])


def test_edit_window_is_per_episode_call(client):
    obs, noise = libero_obs(6), noise_for(6)
    edit = {"edit_prompt": "open the top drawer", "window": [2, 4]}
    before = client.infer({**obs, "noise": noise, "inversion": {**edit, "step": 1}})["inversion"]
    inside = client.infer({**obs, "noise": noise, "inversion": {**edit, "step": 2}})["inversion"]
    after = client.infer({**obs, "noise": noise, "inversion": {**edit, "step": 4}})["inversion"]
    assert (before["edit_applied"], inside["edit_applied"], after["edit_applied"]) == (False, True, False)
    assert "edited_actions" not in before and "edited_actions" in inside


@pytest.mark.parametrize(
    ("inversion", "extra", "message"),
    [
        ({"method": "exact"}, {}, "inversion.method must be one of"),
        ({"window": [1, 3]}, {}, "needs the policy-call index"),
        ({"window": [3, 3], "step": 0}, {}, "is empty"),
        ({"speed": 1}, {}, "unknown inversion fields"),
        ({"invert_to": 0}, {}, "(0, 1]"),
        ({"iterations": 0}, {}, "in [1, 200]"),
        ({"invert_to": 0.55}, {}, "a flow time of the sampler"),
        ("yes", {}, "inversion must be a map"),
        ({}, {"steering": {"mode": "blank"}}, "inside inversion.steering"),
    ],
)
def test_bad_inversion_requests_get_clear_errors(client, inversion, extra, message):
    with pytest.raises(RuntimeError, match="bad request") as info:
        client.infer({**libero_obs(0), **extra, "inversion": inversion})
    assert message in str(info.value)
    assert client.infer(libero_obs(0))["actions"].shape == (H, 7)  # the connection and server go on


def test_partial_inversion_to_a_grid_time(client):
    obs, noise = libero_obs(7), noise_for(7)
    inversion = client.infer({**obs, "noise": noise, "inversion": {"invert_to": 0.5}})["inversion"]
    np.testing.assert_allclose(
        inversion["reconstructed_actions"], client.infer({**obs, "noise": noise})["actions"], atol=1e-4
    )
    assert np.abs(inversion["noise"] - noise).max() > 0.1  # stopped half way: not the noise
