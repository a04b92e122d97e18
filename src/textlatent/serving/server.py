"""An openpi-compatible websocket policy server that batches concurrent clients and never blocks its event loop.

Wire protocol (as openpi's ``WebsocketPolicyServer``): on connect the server sends one binary msgpack frame with the
policy metadata; then each binary msgpack request (an observation dict) gets a binary msgpack reply ``{"actions",
"policy_timing", "server_timing"}``. A request that cannot be served gets a *text* frame saying why (openpi's client
raises it as ``RuntimeError``) and the connection stays open. ``GET /healthz`` answers ``OK``.

Beyond openpi: requests of all connections share batched model calls (``BatchingEngine``); a request may carry
``noise`` ([H, 32] or [B, H, 32]) to fix the flow's start, a leading batch axis, and ``steering`` (see
:mod:`textlatent.serving.steering`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import hmac
import http
import itertools
import logging
import threading
import time
from typing import Any

import numpy as np
import websockets
from websockets.asyncio.server import ServerConnection, serve

from textlatent.latents.interventions import InterventionError, resolve
from textlatent.latents.latent import TextLatent
from textlatent.model import gemma_config
from textlatent.policy import ObservationError, Policy
from textlatent.policy.transforms import PROMPT_KEY, REQUIRED_KEYS, STATE_KEY, as_array
from textlatent.serving.batching import BatchingEngine, Job, task_job
from textlatent.serving.inversion import INVERSION_KEY, InversionRequest, inversion_reply, parse_inversion
from textlatent.serving.steering import STEERING_KEY, EpisodeCounter, SteeringError, parse_steering
from textlatent.serving.wire import WireError, packb, unpackb

logger = logging.getLogger("textlatent.serving")
NOISE_KEY = "noise"
REQUEST_KEYS = (*REQUIRED_KEYS, PROMPT_KEY, STEERING_KEY, NOISE_KEY, INVERSION_KEY)


class RequestError(ValueError):
    """A request the server refuses; the text goes back to the client."""


@dataclasses.dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    """0 picks a free port (see ``PolicyServer.port``)."""
    max_batch: int = 8
    """Most requests per model call; batches are padded to powers of two up to this (bounded recompiles)."""
    max_wait_ms: float = 5.0
    """How long the oldest waiting request waits for company before its batch runs."""
    batch_invariant: bool = False
    """Run every model call at ``max_batch`` rows, so that a request's actions are bit-identical whatever else shared
    its call (otherwise they agree to float rounding across batch sizes). Costs latency when few clients are active."""
    max_request_mb: float = 16.0
    """Larger requests get an error reply; frames over 4× this are refused by the websocket layer unread (close
    code 1009) so that no client can make the server buffer arbitrary amounts of memory."""
    max_request_rows: int = 64
    """Most observations in one batched request (each row costs host memory and a model row)."""
    max_connections: int = 256
    api_key: str | None = None
    """If set, clients must send ``Authorization: Api-Key <key>`` (openpi_client's ``api_key=``)."""
    prepare_threads: int = 4
    """Threads decoding and transforming requests (host work that overlaps the accelerator's)."""
    summary_every_s: float = 60.0
    """Seconds between info-level summary lines (0: only at disconnects and shutdown)."""
    shutdown_grace_s: float = 30.0
    """On shutdown, how long requests already received may take to get their replies."""


@dataclasses.dataclass
class _Prepared:
    jobs_inputs: list[tuple[dict, np.ndarray | None, Any]]
    batched: bool
    steering: dict | None
    inversion: tuple[dict, InversionRequest, Any, int | None] | None = None
    """(request, settings, noise, policy call) of an inversion request: one task instead of sampling rows."""


@dataclasses.dataclass
class _Totals:
    requests: int = 0
    errors: int = 0
    latencies_ms: list = dataclasses.field(default_factory=list)

    def add(self, ms: float) -> None:
        self.requests += 1
        self.latencies_ms.append(ms)

    def line(self) -> str:
        if not self.latencies_ms:
            return f"{self.requests} requests, {self.errors} errors"
        lat = np.asarray(self.latencies_ms)
        return (
            f"{self.requests} requests, {self.errors} errors, latency p50 {np.percentile(lat, 50):.1f} ms "
            f"p99 {np.percentile(lat, 99):.1f} ms"
        )


class PolicyServer:
    def __init__(
        self,
        policy: Policy,
        config: ServerConfig | None = None,
        *,
        latents: dict[str, TextLatent] | None = None,
        metadata: dict | None = None,
    ):
        self.policy = policy
        self.config = config or ServerConfig()
        self.latents = dict(latents or {})
        self.engine = BatchingEngine(
            policy,
            max_batch=self.config.max_batch,
            max_wait_ms=self.config.max_wait_ms,
            # Each connection has at most one request in flight, so a batch holding one row per client is complete.
            expected_rows=lambda: len(self._connections),
            batch_invariant=self.config.batch_invariant,
        )
        self.episodes = EpisodeCounter()
        model = policy.model.config
        self.metadata = {
            **policy.metadata,
            **(metadata or {}),
            "action_horizon": model.action_horizon,
            "model_action_dim": model.action_dim,  # the width of `noise` a request may send ([horizon, this])
            "action_dims": policy.config.action_dims,
            "state_dims": policy.config.state_dims,
            "max_batch": self.config.max_batch,
            "latents": sorted(self.latents),
        }
        self._executor = concurrent.futures.ThreadPoolExecutor(self.config.prepare_threads, "textlatent-prepare")
        self._ids = itertools.count(1)
        self._connections: set[ServerConnection] = set()
        self._in_flight = 0
        self._idle: asyncio.Event | None = None
        self._stopping = False
        self._port: int | None = None
        self.totals = _Totals()
        self._window = _Totals()
        self._inverters: dict[tuple, Any] = {}

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the server is not listening yet")
        return self._port

    # ------------------------------------------------------------------------------------------- request handling
    def _prepare(self, frame: bytes) -> _Prepared:
        """Decode, validate and transform one request (runs on a worker thread)."""
        limit = int(self.config.max_request_mb * 2**20)
        if len(frame) > limit:
            raise RequestError(
                f"request of {len(frame)} bytes exceeds the server's limit of {limit} bytes "
                "(start the server with a larger --max-request-mb)"
            )
        message = unpackb(frame)
        if not isinstance(message, dict):
            raise RequestError(f"a request must be a msgpack map (an observation dict), got {type(message).__name__}")
        bad_keys = [k for k in message if not isinstance(k, str)]
        if bad_keys:
            raise RequestError(f"request keys must be strings, got {[repr(k)[:40] for k in bad_keys[:5]]}")
        extra = sorted(k for k in message if k not in REQUEST_KEYS)
        if extra:
            raise RequestError(f"unknown request keys {extra[:10]}; this policy reads {list(REQUEST_KEYS)}")
        if INVERSION_KEY in message:
            return self._prepare_inversion(message)
        steering = None
        if STEERING_KEY in message:
            steering = parse_steering(message.pop(STEERING_KEY), self.latents)
            ids = steering.intervention.token_ids
            vocab = self.policy.model.config.vocab_size
            if ids is not None and max(ids) >= vocab:
                raise RequestError(
                    f"steering.token_ids must be below the model's vocabulary size {vocab}, got {max(ids)}"
                )
        noise = message.pop(NOISE_KEY, None)
        if self.policy.transforms.is_batched(message):
            rows = len(message[STATE_KEY])
            if rows > self.config.max_request_rows:
                raise RequestError(
                    f"a request may batch at most {self.config.max_request_rows} observations, got {rows} "
                    "(split it, or start the server with a larger --max-request-rows)"
                )
        inputs = self.policy.transforms.inputs(message)
        batched = inputs.pop("batched")
        batch = inputs["state"].shape[0]
        noise_rows = self._noise_rows(noise, batch) if noise is not None else [None] * batch

        step = alpha = None
        if steering is not None:
            step = steering.step if steering.step is not None else self.episodes.take(steering.episode_id or "")
        model = self.policy.model.config
        llm = gemma_config(model.paligemma_variant)
        rows = []
        for i in range(batch):
            row = _row(inputs, i)
            edit = None
            if steering is not None:
                tokens, mask, edit, alpha = resolve(
                    steering.intervention,
                    step,
                    row["tokenized_prompt"][0],
                    row["tokenized_prompt_mask"][0],
                    depth=llm.depth,
                    width=llm.width,
                    dtype=model.dtype,
                )
                row["tokenized_prompt"], row["tokenized_prompt_mask"] = tokens[None], mask[None]
            rows.append((row, noise_rows[i], edit))
        info = None
        if steering is not None:
            info = {"mode": steering.intervention.mode, "step": step, "alpha": alpha, "episode_id": steering.episode_id}
        return _Prepared(rows, batched, info)

    def _prepare_inversion(self, message: dict) -> _Prepared:
        if STEERING_KEY in message:
            raise RequestError(
                "a request with inversion inverts plain π0's plan; put the edit's steering inside inversion.steering"
            )
        request = parse_inversion(message.pop(INVERSION_KEY), self.latents)
        from textlatent.inversion.flow import grid_index, time_grid

        try:
            grid_index(request.invert_to, self.policy.config.num_steps)
        except ValueError:
            times = [round(float(t), 6) for t in time_grid(self.policy.config.num_steps)[:-1]]
            raise RequestError(f"inversion.invert_to must be a flow time of the sampler: one of {times}") from None
        noise = message.pop(NOISE_KEY, None)
        batched = self.policy.transforms.is_batched(message)
        if batched and len(message[STATE_KEY]) > self.config.max_request_rows:
            raise RequestError(f"a request may batch at most {self.config.max_request_rows} observations")
        inputs = self.policy.transforms.inputs(message)  # validates the observation before it takes the accelerator
        if noise is not None:
            self._noise_rows(noise, inputs["state"].shape[0])
        call = request.step
        if request.steering is not None and call is None:
            steering = request.steering
            call = steering.step if steering.step is not None else self.episodes.take(steering.episode_id or "")
        return _Prepared([], batched, None, (message, request, noise, call))

    def _run_inversion(self, message: dict, request: InversionRequest, noise: Any, call: int | None) -> dict:
        """On the accelerator thread: invert, reconstruct, edit (if the edit's window holds this call)."""
        from textlatent.inversion import PolicyInversion

        inverter = self._inverters.get(request.settings)
        if inverter is None:
            method, iterations, tolerance, invert_to = request.settings
            inverter = PolicyInversion(
                self.policy, method=method, iterations=iterations, tolerance=tolerance, invert_to=invert_to
            )
            if len(self._inverters) >= 8:  # each setting compiles its own programs: keep a few
                self._inverters.pop(next(iter(self._inverters)))
            self._inverters[request.settings] = inverter
        active = request.window is None or request.window[0] <= call < request.window[1]
        intervention = request.steering.intervention if request.steering is not None and active else None
        record = inverter.run(
            message,
            noise=None if noise is None else np.asarray(noise, np.float32),
            edit_prompt=request.edit_prompt if active else None,
            intervention=intervention,
            call=call or 0,
        )
        batched = record.batched
        return {
            "actions": record.original_actions if batched else record.original_actions[0],
            "policy_timing": {"infer_ms": record.model_ms, "batch_size": 1, "queue_ms": 0.0},
            "inversion": {**inversion_reply(record, batched), "edit_applied": bool(active), "step": call},
        }

    def _noise_rows(self, noise: Any, batch: int) -> list[np.ndarray]:
        model = self.policy.model.config
        h, d = model.action_horizon, model.action_dim
        noise = as_array(NOISE_KEY, noise)
        if not np.issubdtype(noise.dtype, np.floating) or noise.shape not in ((h, d), (1, h, d), (batch, h, d)):
            raise RequestError(
                f"noise must be float [{h}, {d}] or [{batch}, {h}, {d}], got {noise.dtype} {noise.shape}"
            )
        if not np.all(np.isfinite(noise)):
            raise RequestError("noise contains NaN or inf")
        noise = np.broadcast_to(noise.reshape(-1, h, d).astype(np.float32), (batch, h, d))
        return [noise[i : i + 1] for i in range(batch)]

    async def _infer(self, frame: bytes) -> dict:
        loop = asyncio.get_running_loop()
        prepared = await loop.run_in_executor(self._executor, self._prepare, frame)
        if prepared.inversion is not None:
            future = loop.create_future()
            self.engine.submit(
                task_job(
                    lambda: self._run_inversion(*prepared.inversion),
                    lambda result: loop.call_soon_threadsafe(_settle, future, result),
                )
            )
            return await future
        futures = []
        for inputs, noise, edit in prepared.jobs_inputs:
            future = loop.create_future()

            def done(result, future=future):
                loop.call_soon_threadsafe(_settle, future, result)

            self.engine.submit(Job(inputs, noise, edit, done))
            futures.append(future)
        results = await asyncio.gather(*futures)
        actions = np.stack([r["actions"] for r in results]) if prepared.batched else results[0]["actions"]
        reply = {"actions": actions, "policy_timing": results[0]["policy_timing"]}
        if prepared.steering is not None:
            reply["steering"] = {k: v for k, v in prepared.steering.items() if v is not None}
        return reply

    async def _handler(self, connection: ServerConnection) -> None:
        cid = next(self._ids)
        totals = _Totals()
        self._connections.add(connection)
        logger.info("client %d connected from %s", cid, connection.remote_address)
        try:
            await connection.send(packb(self.metadata))
            prev_total_ms = None
            while not self._stopping:
                start = time.monotonic()
                try:
                    frame = await connection.recv()
                except websockets.ConnectionClosed:
                    break
                received = time.monotonic()
                self._in_flight += 1
                try:
                    reply = await self._answer(cid, frame, totals)
                finally:
                    self._in_flight -= 1
                    if self._in_flight == 0 and self._idle is not None:
                        self._idle.set()
                if isinstance(reply, dict):
                    timing = {"infer_ms": (time.monotonic() - received) * 1000}
                    if prev_total_ms is not None:
                        timing["prev_total_ms"] = prev_total_ms
                    reply["server_timing"] = timing
                    reply = packb(reply)
                try:
                    await connection.send(reply)
                except websockets.ConnectionClosed:
                    break
                prev_total_ms = (time.monotonic() - start) * 1000
        except websockets.ConnectionClosed:
            pass
        finally:
            self._connections.discard(connection)
            logger.info("client %d disconnected: %s", cid, totals.line())

    async def _answer(self, cid: int, frame: Any, totals: _Totals) -> dict | str:
        """The reply to one frame: a dict to pack, or the text of an error."""
        start = time.monotonic()
        if isinstance(frame, str):
            error = "bad request: text frames are not requests; send binary msgpack frames (openpi_client.msgpack_numpy.packb)"
        else:
            try:
                reply = await self._infer(frame)
            except (RequestError, WireError, ObservationError, SteeringError, InterventionError) as exc:
                error = f"bad request: {exc}"
            except Exception as exc:
                logger.exception("client %d: request failed", cid)
                error = f"internal error: {type(exc).__name__}: {exc}"
            else:
                ms = (time.monotonic() - start) * 1000
                for t in (totals, self.totals, self._window):
                    t.add(ms)
                timing = reply["policy_timing"]
                logger.debug(
                    "client %d: ok in %.1f ms (batch %d, queue %.1f ms, model %.1f ms)%s",
                    cid,
                    ms,
                    timing["batch_size"],
                    timing["queue_ms"],
                    timing["infer_ms"],
                    f" steering {reply['steering']}" if "steering" in reply else "",
                )
                return reply
        for t in (totals, self.totals, self._window):
            t.errors += 1
        logger.debug("client %d: %s", cid, error)
        return error

    # --------------------------------------------------------------------------------------------------- HTTP side
    def _process_request(self, connection: ServerConnection, request):
        if request.path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        if self._stopping:
            return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE, "server shutting down\n")
        if len(self._connections) >= self.config.max_connections:
            return connection.respond(
                http.HTTPStatus.SERVICE_UNAVAILABLE,
                f"server at its limit of {self.config.max_connections} connections (--max-connections)\n",
            )
        if self.config.api_key is not None:
            sent = request.headers.get("Authorization", "")
            if not hmac.compare_digest(sent.encode(), f"Api-Key {self.config.api_key}".encode()):
                return connection.respond(
                    http.HTTPStatus.UNAUTHORIZED,
                    "missing or wrong API key: send the header 'Authorization: Api-Key <key>' "
                    "(openpi_client.websocket_client_policy.WebsocketClientPolicy(..., api_key=KEY))\n",
                )
        return None

    # --------------------------------------------------------------------------------------------------- lifecycle
    async def serve(self, stop: asyncio.Event | None = None, ready: threading.Event | None = None) -> None:
        """Serve until ``stop`` is set (or forever), then shut down gracefully."""
        stop = stop or asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self.engine.start()
        hard_limit = int(4 * self.config.max_request_mb * 2**20)
        async with serve(
            self._handler,
            self.config.host,
            self.config.port,
            compression=None,
            max_size=hard_limit,
            process_request=self._process_request,
        ) as server:
            self._port = server.sockets[0].getsockname()[1]
            logger.info(
                "serving %s on ws://%s:%d (max batch %d, max wait %.1f ms, latents: %d)",
                self.metadata.get("config", "policy"),
                self.config.host,
                self._port,
                self.config.max_batch,
                self.config.max_wait_ms,
                len(self.latents),
            )
            if ready is not None:
                ready.set()
            summary = asyncio.create_task(self._summaries())
            await stop.wait()
            summary.cancel()
            await self._shutdown(server)

    async def _shutdown(self, server) -> None:
        logger.info("shutting down: refusing new connections, finishing %d request(s) in flight", self._in_flight)
        self._stopping = True
        server.close(close_connections=False)
        if self._in_flight:
            self._idle.clear()
            try:
                await asyncio.wait_for(self._idle.wait(), self.config.shutdown_grace_s)
            except TimeoutError:
                logger.warning("requests still running after %.0f s; closing anyway", self.config.shutdown_grace_s)
        for connection in list(self._connections):
            await connection.close(1001, "server shutting down")
        await server.wait_closed()
        await asyncio.get_running_loop().run_in_executor(None, self.engine.stop)
        self._executor.shutdown(wait=False, cancel_futures=True)
        logger.info("stopped after %s; %d batches", self.totals.line(), self.engine.stats.batches)

    async def _summaries(self) -> None:
        if self.config.summary_every_s <= 0:
            return
        while True:
            await asyncio.sleep(self.config.summary_every_s)
            if self._window.requests or self._window.errors:
                stats = self.engine.stats
                mean_batch = stats.rows / max(stats.batches, 1)
                logger.info(
                    "last %.0f s: %s; %d clients connected; mean batch %.2f",
                    self.config.summary_every_s,
                    self._window.line(),
                    len(self._connections),
                    mean_batch,
                )
                self._window = _Totals()

    def run(self) -> None:
        """Serve in the foreground until SIGINT/SIGTERM."""
        import signal

        async def main():
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await self.serve(stop)

        asyncio.run(main())


class ServerThread:
    """Run a ``PolicyServer`` on a background thread (tests, benchmarks, notebooks)."""

    def __init__(self, server: PolicyServer):
        self.server = server
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self, timeout: float = 60.0) -> ServerThread:
        ready = threading.Event()

        async def main():
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            await self.server.serve(self._stop, ready)

        def target():
            try:
                asyncio.run(main())
            except BaseException as exc:
                self._error = exc
                ready.set()

        self._thread = threading.Thread(target=target, name="textlatent-server", daemon=True)
        self._thread.start()
        if not ready.wait(timeout) or self._error is not None:
            raise RuntimeError(f"the server did not start: {self._error!r}")
        return self

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def stop(self, timeout: float = 60.0) -> None:
        if self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)
        self._thread = None

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _settle(future: asyncio.Future, result: Any) -> None:
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


def _row(inputs: dict, i: int) -> dict:
    out = {}
    for key, value in inputs.items():
        if isinstance(value, dict):
            out[key] = {k: v[i : i + 1] for k, v in value.items()}
        else:
            out[key] = value[i : i + 1]
    return out
