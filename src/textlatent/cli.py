"""Command line: ``textlatent demo`` (the whole chain on a fresh machine), ``checkpoint`` (inspect one), ``serve``
(policy server), ``eval`` (LIBERO evaluation), ``latents …`` (text latents), ``bddl`` (the OOD task files)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import pathlib
import time
from collections.abc import Iterator
from typing import Literal

import tyro


@dataclasses.dataclass
class Demo:
    """The whole chain on this machine: a π0 policy, its text latents, a policy server, one LIBERO-OOD episode steered
    with TLI in the simulator, the episode's video and the results table. Without --checkpoint it writes a small
    random-weight π0 first: random weights succeed 0% of the time, the run shows that every piece works."""

    checkpoint: str | None = None
    """A real openpi checkpoint (local, gs://… or hf://…); default: small random weights written here."""
    config: str = "pi0_libero"
    tokenizer: str | None = None
    """SentencePiece model for --checkpoint (default: PaliGemma's, downloaded once)."""
    latents: tuple[pathlib.Path, ...] = ()
    """The base tasks' latents (e.g. from `textlatent latents capture`); default: captured here from simulator
    frames of the scene (a few frames, not the paper's demonstrations: enough to exercise the chain)."""
    suite: Literal["libero_goal_ood", "libero_spatial_ood"] = "libero_goal_ood"
    task: int = 7
    """Task index in the suite (7: put the cream cheese on the plate; TLI from "cream cheese in the bowl" to "bowl on
    the plate")."""
    steering: Literal["tli", "tei", "tei_tli", "none"] = "tli"
    max_steps: int | None = None
    """Episode step budget (default: the suite's, 300)."""
    out: pathlib.Path | None = None
    """Where everything goes (default: runs/demo-<time>)."""
    quick: bool = False
    """Only load the policy and time a few inferences on a synthetic observation (no simulator)."""
    dtype: Literal["bfloat16", "float32"] = "bfloat16"
    """bfloat16 = openpi's serving arithmetic; float32 = full precision."""
    paligemma_variant: str = "dummy"
    action_expert_variant: str = "dummy"
    siglip_variant: str = "mu/14"
    """Sizes of the random model (So400m/14 is π0's real vision tower, large to write on a CPU)."""
    prompt: str = "put the bowl on the plate"
    """--quick: the prompt."""
    repeats: int = 5
    """--quick: timed inferences after the first (compiling) one."""

    def run(self) -> None:
        root = self.out or pathlib.Path("runs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
        if self.quick:
            return self._quick(root)
        import os

        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        import textlatent
        from textlatent.latents import load_latents
        from textlatent.latents.registry import lookup
        from textlatent.libero.evaluation import Condition, EvalSettings, EvaluationError, evaluate
        from textlatent.libero.sim import SimulatorUnavailable, suite_tasks
        from textlatent.serving import PolicyServer, ServerConfig, ServerThread

        started = time.perf_counter()
        task = suite_tasks(self.suite)[self.task] if 0 <= self.task < 10 else None
        if task is None:
            raise SystemExit(f"--task must be 0..9 for {self.suite}")
        base = lookup(task.prompt)
        print(
            f"task: {self.suite} #{self.task} {task.prompt!r}; {self.steering} from {base.a!r} to {base.b!r} "
            f"over {base.steps + 1} policy calls"
        )

        if self.checkpoint is None:
            from textlatent.checkpoint.random import write_random_setup
            from textlatent.policy import get_config

            overrides = dict(
                paligemma_variant=self.paligemma_variant,
                action_expert_variant=self.action_expert_variant,
                siglip_variant=self.siglip_variant,
                dtype=self.dtype,
            )
            config = get_config(self.config, **overrides)
            checkpoint, tokenizer = write_random_setup(root / "checkpoint", config.model, config.asset_id)
            print(f"[1/4] RANDOM-weight π0 written to {checkpoint} (success will be 0%; pass --checkpoint for real)")
            policy = textlatent.load_policy(self.config, checkpoint, tokenizer=str(tokenizer), **overrides)
        else:
            policy = textlatent.load_policy(self.config, self.checkpoint, tokenizer=self.tokenizer, dtype=self.dtype)
            print(f"[1/4] loaded {self.checkpoint} ({self.config})")

        names = list(base.latent_names)
        if self.latents:
            latents = load_latents(self.latents)
            missing = [n for n in names if n not in latents]
            if missing:
                raise SystemExit(
                    f"--latents lacks {missing}; capture them with `textlatent latents capture --tasks "
                    f"{' '.join(repr(p) for p in (base.a, base.b))} …`"
                )
            print(f"[2/4] latents {names} from {', '.join(map(str, self.latents))}")
        else:
            try:
                latents = self._latents_from_simulator(policy, task, (base.a, base.b), root / "latents")
            except SimulatorUnavailable as exc:
                raise SystemExit(f"error: {exc}") from None
            print(f"[2/4] latents {names} captured from simulator frames into {root / 'latents'}")
        latents = {n: latents[n] for n in names}

        server = ServerThread(PolicyServer(policy, ServerConfig(host="127.0.0.1", port=0), latents=latents)).start()
        print(f"[3/4] policy server on {server.url}")
        try:
            report = evaluate(
                [Condition(self.suite, self.steering)],
                EvalSettings(trials=1, tasks=(self.task,), max_steps=self.max_steps),
                address=server.url,
                run_dir=root / "eval",
                workers=1,
                resume=True,
                extra_config={"policy": self.checkpoint or "random", "demo": True},
            )
        except EvaluationError as exc:
            raise SystemExit(f"error: {exc}") from None
        finally:
            server.stop()
        print(f"[4/4] evaluated in {report.wall_seconds:.0f} s ({report.env_steps} env steps)")
        print((root / "eval" / "results.md").read_text())
        for video in sorted((root / "eval" / "videos").rglob("*.mp4")):
            print(f"video: {video}")
        print(f"everything under {root}; total {time.perf_counter() - started:.0f} s")

    @staticmethod
    def _latents_from_simulator(policy, task, prompts, directory: pathlib.Path) -> dict:
        """Latents of `prompts` averaged over a few reset frames of the task's scene (a stand-in for demonstrations)."""
        from textlatent.latents.capture import capture_observations, latent_file_name
        from textlatent.libero.protocol import policy_request
        from textlatent.libero.sim import LiberoEnv, prepare

        prepare()
        env = LiberoEnv(task, workdir=directory / "bddl")
        try:
            frames = [env.reset(trial=i, seed=1000 + i) for i in range(3)]
        finally:
            env.close()
        captured = capture_observations(policy, [policy_request(f, p) for p in prompts for f in frames])
        directory.mkdir(parents=True, exist_ok=True)
        out = {}
        for prompt, latent in captured.items():
            path = latent.save(directory / latent_file_name(prompt))
            out[path.stem] = latent
        return out

    def _quick(self, root: pathlib.Path) -> None:
        import numpy as np

        import textlatent

        overrides = dict(
            paligemma_variant=self.paligemma_variant,
            action_expert_variant=self.action_expert_variant,
            siglip_variant=self.siglip_variant,
            dtype=self.dtype,
        )
        from textlatent.checkpoint.random import write_random_setup
        from textlatent.policy import get_config

        config = get_config("pi0_libero", **overrides)
        start = time.perf_counter()
        checkpoint, tokenizer = write_random_setup(root, config.model, config.asset_id)
        print(f"random-weight checkpoint (openpi layout): {checkpoint}  [{time.perf_counter() - start:.1f} s]")
        print("  (weights are random: the policy does nothing useful; pass a real checkpoint to load_policy for that)")

        start = time.perf_counter()
        policy = textlatent.load_policy("pi0_libero", checkpoint, tokenizer=str(tokenizer), **overrides)
        print(f"loaded with load_policy('pi0_libero', ...) in {time.perf_counter() - start:.1f} s")

        rng = np.random.default_rng(0)
        obs = {
            "observation/image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
            "observation/wrist_image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
            "observation/state": rng.normal(size=8),
            "prompt": self.prompt,
        }
        start = time.perf_counter()
        out = policy.infer(obs)
        first = time.perf_counter() - start
        times = []
        for _ in range(self.repeats):
            out = policy.infer(obs)
            times.append(out["policy_timing"]["infer_ms"])
        actions = out["actions"]
        print(f"prompt: {self.prompt!r} -> tokens {policy.transforms.tokenizer.encode(self.prompt)}")
        print(f"actions: shape {actions.shape}, dtype {actions.dtype}")
        print("first step:", np.array2string(actions[0], precision=4, suppress_small=True))
        print("last step: ", np.array2string(actions[-1], precision=4, suppress_small=True))
        if times:
            print(
                f"latency: first call {first * 1000:.0f} ms (compiles), then median {np.median(times):.1f} ms "
                f"over {len(times)} calls ({self.dtype}, CPU/GPU as JAX found it)"
            )


@dataclasses.dataclass
class Checkpoint:
    """Describe an openpi checkpoint: parameter count, inferred variants, norm stats (no weights are loaded)."""

    path: tyro.conf.Positional[str]
    """Checkpoint directory: local, gs://… or hf://…"""

    def run(self) -> None:
        import math

        from textlatent.checkpoint import read_param_shapes, resolve_checkpoint
        from textlatent.checkpoint.params import guess_variants

        directory = resolve_checkpoint(self.path)
        shapes = read_param_shapes(directory / "params")
        total = sum(math.prod(s) for s in shapes.values())
        print(f"{directory}: {len(shapes)} leaves, {total:,} parameters")
        for key, value in guess_variants(shapes).items():
            print(f"  {key} = {value!r}")
        for stats in sorted((directory / "assets").rglob("norm_stats.json")) if (directory / "assets").exists() else []:
            print(f"  norm stats: {stats.parent.relative_to(directory / 'assets')}")


@dataclasses.dataclass
class Serve:
    """Serve a π0 policy over openpi's websocket protocol (the stock openpi-client works unchanged), batching
    concurrent clients into shared model calls; requests may steer it with registered text latents."""

    checkpoint: str | None = None
    """Checkpoint directory: local, gs://… or hf://… (or --random)."""
    config: str = "pi0_libero"
    """openpi config name."""
    tokenizer: str | None = None
    """SentencePiece model (default: PaliGemma's, downloaded once)."""
    random: bool = False
    """Serve a small random-weight checkpoint written on the fly (for demos and tests: its actions mean nothing)."""
    host: str = "127.0.0.1"
    """Interface to listen on (0.0.0.0 for every interface, as openpi's default)."""
    port: int = 8000
    max_batch: int = 8
    """Most requests in one model call (batches are padded to powers of two up to this)."""
    max_wait_ms: float = 5.0
    """How long a request may wait for others to share its model call."""
    batch_invariant: bool = False
    """Run every model call at --max-batch rows: a request's actions are then bit-identical whatever shared its call
    (otherwise equal to float rounding across batch sizes). Costs latency at low load."""
    max_request_mb: float = 16.0
    """Larger requests get an error reply; frames over 4× this are refused unread (close code 1009)."""
    max_request_rows: int = 64
    """Most observations one batched request may carry."""
    max_connections: int = 256
    api_key: str | None = None
    """Require the header 'Authorization: Api-Key <key>' (openpi_client's api_key=)."""
    latents: tuple[pathlib.Path, ...] = ()
    """Text-latent files or directories of *.safetensors to register for steering (name = file stem)."""
    dtype: Literal["bfloat16", "float32"] | None = None
    """Override the config's dtype (bfloat16 is openpi's serving arithmetic)."""
    warmup: bool = False
    """Compile every batch size before accepting clients."""
    override: tuple[str, ...] = ()
    """Config overrides KEY=VALUE, e.g. unroll_layers=True (faster sampling, longer compile) or paligemma_variant=dummy."""
    compact: bool = True
    """Leave always-masked cameras and prompt padding out of the prefix (same actions to float rounding, faster);
    --no-compact computes openpi's full layout bit for bit."""
    log_level: Literal["debug", "info", "warning"] = "info"
    """debug: one line per request; info: connections and a summary line a minute."""

    def run(self) -> None:
        import logging
        import os

        # JAX would otherwise reserve 75% of GPU memory up front; a server should hold what it uses.
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        logging.basicConfig(level=self.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        logging.getLogger("websockets").setLevel(logging.WARNING)

        import textlatent
        from textlatent.latents import load_latents
        from textlatent.serving import PolicyServer, ServerConfig

        if (self.checkpoint is None) == (not self.random):
            raise SystemExit("give exactly one of --checkpoint DIR|gs://…|hf://… and --random")
        overrides = {**parse_overrides(self.override), **({} if self.dtype is None else {"dtype": self.dtype})}
        checkpoint, tokenizer = self.checkpoint, self.tokenizer
        if self.random:
            checkpoint, tokenizer, small = random_checkpoint(self.config)
            overrides = {**small, **overrides}
            print(f"serving RANDOM weights from {checkpoint} (actions mean nothing)")
        policy = textlatent.load_policy(self.config, checkpoint, tokenizer=tokenizer, compact=self.compact, **overrides)
        server = PolicyServer(
            policy,
            ServerConfig(
                host=self.host,
                port=self.port,
                max_batch=self.max_batch,
                max_wait_ms=self.max_wait_ms,
                batch_invariant=self.batch_invariant,
                max_request_mb=self.max_request_mb,
                max_request_rows=self.max_request_rows,
                max_connections=self.max_connections,
                api_key=self.api_key,
            ),
            latents=load_latents(self.latents),
        )
        if self.warmup:
            for size, seconds in server.engine.warmup().items():
                print(f"compiled batch {size} in {seconds:.1f} s")
        server.run()


def parse_overrides(items: tuple[str, ...]) -> dict:
    """``("paligemma_variant=dummy", "image_resolution=(56, 56)")`` → config overrides (Python literals or strings)."""
    import ast

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"--override takes KEY=VALUE (e.g. paligemma_variant=dummy), got {item!r}")
        try:
            out[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key.strip()] = value
    return out


def load_cli_policy(config: str, checkpoint: str, tokenizer: str | None, overrides: tuple[str, ...]):
    import textlatent

    return textlatent.load_policy(config, checkpoint, tokenizer=tokenizer, **parse_overrides(overrides))


@dataclasses.dataclass
class PolicyArgs:
    checkpoint: str
    """openpi checkpoint: local directory, gs://… or hf://…"""
    config: str = "pi0_libero"
    tokenizer: str | None = None
    """SentencePiece model (default: PaliGemma's, downloaded once)."""
    override: tuple[str, ...] = ()
    """Config overrides KEY=VALUE, e.g. paligemma_variant=dummy or dtype=float32."""

    def __post_init__(self):
        parse_overrides(self.override)  # a malformed override fails before anything slow runs

    def load(self):
        return load_cli_policy(self.config, self.checkpoint, self.tokenizer, self.override)


@dataclasses.dataclass
class LatentsCapture(PolicyArgs):
    """Capture one text latent per task from a LeRobot dataset (v2.0/v2.1/v3.0; a directory or hf://datasets/…):
    prefix-only forward, batched, float32 running mean on the device, resumable. Defaults are the paper's (first 20
    episodes per task, frames 0–119, every real prompt token)."""

    dataset: str = ""
    """LeRobot dataset: a local directory or hf://datasets/owner/name[@revision]."""
    tasks: tuple[str, ...] = ()
    """Task strings or task indices (default: every task of the dataset)."""
    episodes: int | None = 20
    """First K episodes of each task (None: all)."""
    frames: str = "0:120"
    """frame_index range start:stop[:step]."""
    batch_size: int = 32
    slots: int | None = None
    """Keep only the first N prompt slots (the paper used 9); default: every real prompt token."""
    out: pathlib.Path = pathlib.Path("latents")
    resume: bool = True
    """Skip finished tasks and continue partial ones (--no-resume recaptures)."""

    def run(self) -> None:
        from textlatent.data import LeRobotDataset
        from textlatent.latents.capture import capture_dataset

        if not self.dataset:
            raise SystemExit("--dataset is required (a LeRobot dataset directory or hf://datasets/owner/name)")
        dataset = LeRobotDataset.open(self.dataset)
        tasks = [int(t) if t.isdigit() else t for t in self.tasks] or None
        policy = self.load()
        result = capture_dataset(
            policy,
            dataset,
            self.out,
            tasks=tasks,
            episodes_per_task=self.episodes,
            frames=self.frames,
            batch_size=self.batch_size,
            slots=self.slots,
            resume=self.resume,
        )
        rate = result.frames / result.seconds if result.seconds else 0.0
        print(
            f"captured {len(result.written)} latent(s) from {result.frames} frames in {result.seconds:.1f} s "
            f"({rate:.1f} frames/s); {len(result.skipped)} already done"
        )
        for task, path in {**result.written, **result.skipped}.items():
            print(f"  {path}  ← {task!r}")


@dataclasses.dataclass
class LatentsDecode(PolicyArgs):
    """Decode latents into prompts: the nearest token (cosine similarity with the model's embedding table) of each
    prompt slot per layer, with slot 0 forced to BOS and the last to the newline token, as the paper sends them."""

    latents: tuple[pathlib.Path, ...] = ()
    """Latent files or directories of *.safetensors."""
    layers: tuple[int, ...] = (0, 1, 2, 3)
    out: pathlib.Path = pathlib.Path("decoded_prompts.json")

    def run(self) -> None:
        from textlatent.latents import load_latents
        from textlatent.latents.decoding import decode_latent, save_decodings

        latents = load_latents(self.latents)
        if not latents:
            raise SystemExit("give latent files or directories as --latents")
        policy = self.load()
        table = policy.model.PaliGemma.llm.embedder.input_embedding[...]
        decoded = {}
        for name, latent in latents.items():
            decoded[latent.prompt or name] = decode_latent(
                latent, table, policy.transforms.tokenizer, layers=self.layers
            )
            print(f"{name}: {latent.prompt!r}")
            for layer in decoded[latent.prompt or name]:
                print(f"  layer {layer.layer:2d}: {layer.text!r}  {layer.token_ids}")
        print(f"saved {save_decodings(decoded, self.out)}")


@dataclasses.dataclass
class LatentsInspect:
    """Describe latent files: prompt, tokens, provenance and the mean norm per layer."""

    latents: tyro.conf.Positional[tuple[pathlib.Path, ...]]

    def run(self) -> None:
        from textlatent.latents import load_latents
        from textlatent.latents.analysis import describe

        for name, latent in load_latents(self.latents).items():
            print(describe(latent, name=name))
            print()


@dataclasses.dataclass
class LatentsSimilarity:
    """Cosine similarity between task latents (flattened over layers 1… and their common slots) as a PNG heatmap."""

    latents: tyro.conf.Positional[tuple[pathlib.Path, ...]]
    out: pathlib.Path = pathlib.Path("latent_similarity.png")
    layers: tuple[int, ...] | None = None
    """Layers to compare (default 1..L-1)."""

    def run(self) -> None:
        from textlatent.latents import load_latents
        from textlatent.latents.analysis import cosine_matrix, plot_cosine_matrix

        latents = load_latents(self.latents)
        if len(latents) < 2:
            raise SystemExit(f"need at least two latents to compare, got {len(latents)}")
        names, matrix = cosine_matrix(latents, layers=self.layers)
        plot_cosine_matrix(names, matrix, self.out)
        width = max(len(n) for n in names)
        for name, row in zip(names, matrix, strict=True):
            print(f"{name:>{width}}  " + " ".join(f"{v:6.3f}" for v in row))
        print(f"saved {self.out}")


@dataclasses.dataclass
class LatentsImportPaper:
    """Convert the paper's avg_states_*.pkl files into textlatent latents (safetensors, ~1 MB each). The pickles are
    read by an allow-list unpickler: no code from the files runs, and anything but arrays is refused."""

    directory: tyro.conf.Positional[pathlib.Path]
    out: pathlib.Path = pathlib.Path("latents")
    tokenizer: str | None = None
    """Tokenizer used to name latents by their prompt (default: PaliGemma's)."""
    slots: int | None = None
    """Keep only the first N prompt slots (the paper's code used 9); default: every real prompt token."""

    def run(self) -> None:
        from textlatent.latents.paper_pickle import import_paper_directory
        from textlatent.tokenizer import PaligemmaTokenizer

        paths = import_paper_directory(
            self.directory, self.out, tokenizer=PaligemmaTokenizer(self.tokenizer), slots=self.slots
        )
        for path in paths:
            print(path)


@dataclasses.dataclass
class LatentsAttention(PolicyArgs):
    """The paper's spatial-overfitting view: per layer, how much the prompt tokens (or one word) attend to — or, with
    --kind alignment, align with — each image patch of a dataset frame, drawn over the camera images as PNGs."""

    dataset: str = ""
    """LeRobot dataset: a local directory or hf://datasets/owner/name."""
    task: str = ""
    """Task string or index; its first episode is used."""
    frame: int = 0
    """frame_index within that episode."""
    layers: tuple[int, ...] = (1, 6, 12, 17)
    token: str | None = None
    """A word of the prompt (e.g. 'bowl') or a slot number; default: every real prompt token."""
    kind: Literal["attention", "alignment"] = "attention"
    latent: pathlib.Path | None = None
    """With --kind alignment: compare patches with this latent's states instead of the prompt's own."""
    out: pathlib.Path = pathlib.Path("attention")

    def run(self) -> None:
        from textlatent.data import LeRobotDataset, libero_observation
        from textlatent.latents import TextLatent
        from textlatent.latents.analysis import plot_patch_maps, prompt_to_image_alignment, prompt_to_image_attention

        if not self.dataset or not self.task:
            raise SystemExit("--dataset and --task are required")
        dataset = LeRobotDataset.open(self.dataset)
        task = int(self.task) if self.task.isdigit() else self.task
        selection = dataset.select(tasks=[task], episodes_per_task=1, frames=f"{self.frame}:{self.frame + 1}")
        request = libero_observation(next(iter(dataset.iter_frames(selection, batch_size=1))))
        token = int(self.token) if self.token is not None and self.token.isdigit() else self.token
        policy = self.load()
        if self.kind == "attention":
            maps = prompt_to_image_attention(policy, request, list(self.layers), token)
        else:
            latent = None if self.latent is None else TextLatent.load(self.latent)
            maps = prompt_to_image_alignment(policy, request, list(self.layers), token, latent=latent)
        self.out.mkdir(parents=True, exist_ok=True)
        for layer in maps.layers:
            path = plot_patch_maps(maps, layer, self.out / f"{self.kind}_layer{layer:02d}.png")
            print(f"saved {path}")


@dataclasses.dataclass
class Bddl:
    """Write the BDDL files of the text-latent paper's LIBERO-OOD suites (libero_goal_ood, libero_spatial_ood,
    libero_object_ood), generated from textlatent's own task definitions; the prompt is the file name."""

    suite: tyro.conf.Positional[Literal["libero_goal_ood", "libero_spatial_ood", "libero_object_ood"]]
    out: pathlib.Path = pathlib.Path("bddl")

    def run(self) -> None:
        from textlatent.libero.bddl import write_suite

        for path in write_suite(self.suite, self.out / self.suite):
            print(path)


EXPERIMENTS = ("extrapolation", "reconstruction")
SteeringChoice = Literal[
    "none", "tli", "tei", "tei_tli", "reconstruction", "blank", "mask", "obscure", "switch", "two_prompt"
]
SuiteChoice = Literal[
    "libero_spatial",
    "libero_object",
    "libero_goal",
    "libero_10",
    "libero_90",
    "libero_goal_ood",
    "libero_spatial_ood",
    "libero_object_ood",
]


def experiment_conditions(experiment: str, decodings_given: bool) -> list:
    """The paper's grids (its runner's run_extrapolation_exp / run_reconstruction_exp, plus the π0 baseline and the
    TEI variants it ran earlier)."""
    from textlatent.libero.evaluation import Condition

    if experiment == "extrapolation":
        return [
            Condition(suite, steering)
            for suite in ("libero_goal_ood", "libero_spatial_ood")
            for steering in ("none", "tli", "tei", "tei_tli")
        ]
    if experiment == "reconstruction":
        if not decodings_given:
            raise SystemExit(
                "--experiment reconstruction includes the obscure-prompt conditions: pass --decodings FILE (written by "
                "`textlatent latents decode --layers 1 2 3`), or choose conditions with --suite/--steering"
            )
        conditions = []
        for suite, layers in (("libero_goal", (1, 2)), ("libero_spatial", (1, 2, 3)), ("libero_object", (1, 2, 3))):
            conditions.append(Condition(suite, "reconstruction"))
            conditions += [Condition(suite, "obscure", obscure_layer=layer) for layer in layers]
            conditions += [Condition(suite, "blank"), Condition(suite, "mask")]
        return conditions
    raise SystemExit(f"unknown experiment {experiment!r}; choose from {', '.join(EXPERIMENTS)}")


def default_workers() -> int:
    from textlatent.libero.evaluation import available_cores

    # Each env renders on about one core and holds ~2 GB.
    return max(1, min(available_cores(), 8))


@dataclasses.dataclass
class PolicySource:
    """Where the policy of a LIBERO run comes from: a running server, or one started here for the run."""

    policy: str | None = None
    """A running openpi-protocol server, ws://HOST:PORT (`textlatent invert` needs ours: the inversion option)."""
    checkpoint: str | None = None
    """Or serve this checkpoint here for the run (local, gs://… or hf://…)."""
    random: bool = False
    """Or serve small random weights here (the pipeline runs; success is 0%)."""
    config: str = "pi0_libero"
    tokenizer: str | None = None
    latents: tuple[pathlib.Path, ...] = ()
    """Latent files/directories for a server started here (steering and TLI edits need the tasks' latents)."""
    override: tuple[str, ...] = ()
    """Config overrides KEY=VALUE for a server started here."""
    api_key: str | None = None

    def check_source(self) -> None:
        if sum([self.policy is not None, self.checkpoint is not None, self.random]) != 1:
            raise SystemExit("give exactly one of --policy ws://HOST:PORT, --checkpoint DIR|gs://…|hf://… and --random")

    @contextlib.contextmanager
    def address(self, max_batch: int) -> Iterator[str]:
        """The server's URL; a server started here runs on a background thread until the block ends."""
        if self.policy is not None:
            yield self.policy
            return
        import os

        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        import textlatent
        from textlatent.latents import load_latents
        from textlatent.serving import PolicyServer, ServerConfig, ServerThread

        checkpoint, tokenizer, overrides = self.checkpoint, self.tokenizer, parse_overrides(self.override)
        if self.random:
            checkpoint, tokenizer, small = random_checkpoint(self.config)
            overrides = {**small, **overrides}
        policy = textlatent.load_policy(self.config, checkpoint, tokenizer=tokenizer, **overrides)
        server = PolicyServer(
            policy, ServerConfig(host="127.0.0.1", port=0, max_batch=max_batch), latents=load_latents(self.latents)
        )
        thread = ServerThread(server).start()
        try:
            yield thread.url
        finally:
            thread.stop()


def random_checkpoint(config: str) -> tuple[pathlib.Path, pathlib.Path, dict]:
    """The small random-weight checkpoint of `config` (written once under the cache): (checkpoint, tokenizer,
    the variant overrides that load it)."""
    from textlatent.checkpoint.download import cache_dir
    from textlatent.checkpoint.random import SMALL_RANDOM, write_random_setup
    from textlatent.policy import get_config

    model_config = get_config(config, **SMALL_RANDOM)
    checkpoint, tokenizer = write_random_setup(
        cache_dir() / "random" / config, model_config.model, model_config.asset_id
    )
    return checkpoint, tokenizer, dict(SMALL_RANDOM)


@dataclasses.dataclass
class Eval(PolicySource):
    """Evaluate a policy on LIBERO and the paper's LIBERO-OOD suites: N simulator workers, one policy server (a running
    one via --policy, or started here from --checkpoint), videos, a resumable run directory with results tables."""

    suite: tuple[SuiteChoice, ...] = ()
    """Suites to evaluate (e.g. libero_goal_ood libero_spatial_ood)."""
    steering: tuple[SteeringChoice, ...] = ("none",)
    """Conditions per suite: none (plain π0), tli/tei/tei_tli (the paper's base-task triples, OOD suites),
    reconstruction (blank prompt + the task's own latent), blank, mask, obscure (needs --decodings), switch (plain
    π0 sent base task A's prompt, then B's from halfway through TLI's schedule: the paper's prompt-switching
    baseline, OOD suites), two_prompt (libero_object: each task gets one of two prompts by where its object starts,
    the paper's probe of whether π0 picks by place or by name)."""
    experiment: Literal["extrapolation", "reconstruction"] | None = None
    """The paper's grids instead of --suite/--steering: extrapolation = π0, TLI, TEI, TEI+TLI on goal/spatial OOD;
    reconstruction = blank+latent, obscure prompts (layers 1–3), blank, mask on goal/spatial/object (seeded resets
    and the paper runner's step budgets, as it ran them)."""
    trials: int = 10
    """Episodes per task (the paper: 10; openpi: 50)."""
    tasks: tuple[int, ...] = ()
    """Task indices to run (default: all)."""
    seed: int = 7
    workers: int = dataclasses.field(default_factory=default_workers)
    """Simulator processes (each ~1 core and ~2 GB)."""
    success_check: Literal["paper", "upstream"] = "paper"
    """paper: On() within 0.1 m and 'on the stove' = the whole stove top (the paper's LIBERO); upstream: LIBERO's own."""
    initial_states: Literal["auto", "fixed", "seeded"] = "auto"
    """auto: LIBERO's fixed initial states where a suite has them (openpi), seeded resets otherwise (OOD suites)."""
    max_steps: int | None = None
    """Step budget per episode (default: per suite, as openpi / the paper's runner)."""
    paper_max_steps: bool = False
    """libero_spatial gets 300 steps as in the paper's runner (openpi: 220)."""
    decodings: pathlib.Path | None = None
    """`textlatent latents decode` JSON for the obscure condition."""
    obscure_layer: tuple[int, ...] = (1,)
    """Layers whose decoded prompts the obscure condition sends."""
    out: pathlib.Path | None = None
    """Run directory (default: runs/<experiment or suites>-<time>)."""
    resume: bool = False
    """Continue the run in --out: finished episodes are kept, the rest run."""
    video: Literal["all", "failures", "none"] = "all"
    """Episode videos to keep. Frames cost a render of both cameras each; without videos only the observations the
    policy sees are rendered (one step in 5), which makes evaluation ~4× faster on a CPU."""
    video_stride: int = 1
    """A video frame every N env steps (2: half the rendering, videos still play in real time)."""
    trajectory: bool = False
    """Draw the end effector's path (coloured by time) over the agent view in the videos."""
    render: Literal["auto", "egl", "osmesa"] = "auto"
    max_batch: int = 8
    """Batch limit of a server started here."""

    def run(self) -> None:
        import logging

        from textlatent.libero.evaluation import Condition, EvalSettings, EvaluationError, Output, evaluate

        logging.basicConfig(level="WARNING", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.check_source()
        if self.experiment is not None:
            if self.suite:
                raise SystemExit("--experiment picks its own suites; leave out --suite")
            conditions = experiment_conditions(self.experiment, self.decodings is not None)
        else:
            if not self.suite:
                raise SystemExit(
                    "give --suite (e.g. --suite libero_goal_ood) or --experiment extrapolation|reconstruction"
                )
            try:
                conditions = [
                    Condition(suite, steering, obscure_layer=layer)
                    for suite in self.suite
                    for steering in self.steering
                    for layer in (self.obscure_layer if steering == "obscure" else (None,))
                ]
            except ValueError as exc:
                raise SystemExit(str(exc)) from None
        paper_grid = self.experiment == "reconstruction"
        try:
            settings = EvalSettings(
                trials=self.trials,
                seed=self.seed,
                tasks=tuple(self.tasks) or None,
                success_check=self.success_check,
                initial_states="seeded" if paper_grid and self.initial_states == "auto" else self.initial_states,
                max_steps=self.max_steps,
                paper_max_steps=self.paper_max_steps or paper_grid,
            )
            output = Output(
                video=self.video, video_stride=self.video_stride, trajectory=self.trajectory, render=self.render
            )
        except ValueError as exc:
            raise SystemExit(str(exc)) from None
        decodings = None
        if self.decodings is not None:
            from textlatent.libero.evaluation import load_decodings

            decodings = load_decodings(self.decodings)
        name = self.experiment or "-".join(dict.fromkeys(self.suite))
        out = self.out or pathlib.Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
        try:
            with self.address(self.max_batch) as address:
                report = evaluate(
                    conditions,
                    settings,
                    address=address,
                    run_dir=out,
                    workers=self.workers,
                    api_key=self.api_key,
                    output=output,
                    resume=self.resume,
                    decodings=decodings,
                    extra_config={"policy": self.policy or self.checkpoint or "random", "experiment": self.experiment},
                )
        except (EvaluationError, ValueError, KeyError) as exc:
            raise SystemExit(f"error: {exc}") from None
        print((out / "results.md").read_text() if (out / "results.md").exists() else "no episodes")
        rate = report.env_steps / report.wall_seconds if report.wall_seconds else 0.0
        print(
            f"{report.finished} episodes run, {report.skipped} already done; {report.env_steps} env steps in "
            f"{report.wall_seconds:.0f} s ({rate:.1f} steps/s, {self.workers} workers)"
        )
        print(f"run directory: {out}  (results.json, episodes.csv, videos/, config.json)")
        if self.random:
            print("RANDOM weights: 0% success is the expected result; pass --checkpoint for a real policy")


@dataclasses.dataclass
class Invert(PolicySource):
    """Action inversion on LIBERO: each policy call's plan is inverted to noise, reconstructed and optionally regenerated
    under an edit. Open loop records the per-chunk errors while executing the original plans; closed loop runs the
    original, reconstructed and edited plans from the same scene and noise and puts their videos side by side."""

    suite: SuiteChoice = "libero_goal_ood"
    task: int = 7
    mode: Literal["open-loop", "closed-loop"] = "closed-loop"
    method: Literal["fixed_point", "naive"] = "fixed_point"
    """fixed_point: exact inverse of the sampler's steps; naive: the reference implementation's Euler inversion."""
    invert_to: float = 1.0
    """Invert up to this flow time (a grid time; 1 = all the way to noise)."""
    edit_prompt: str | None = None
    """Regenerate each plan under this prompt."""
    edit_steering: Literal["tli", "tei", "tei_tli"] | None = None
    """Regenerate under the paper's intervention for the task (needs its base-task latents on the server)."""
    window: tuple[int, int] | None = None
    """Policy calls FIRST END ([first, end)) of each episode in which the edit applies (default: all)."""
    trials: int = 1
    seed: int = 7
    max_steps: int | None = None
    success_check: Literal["paper", "upstream"] = "paper"
    render: Literal["auto", "egl", "osmesa"] = "auto"
    out: pathlib.Path | None = None
    """Run directory (default: runs/invert-<time>)."""

    def run(self) -> None:
        from textlatent.libero.inversion_run import InversionSettings, run_inversion

        self.check_source()
        try:
            settings = InversionSettings(
                suite=self.suite,
                task=self.task,
                mode=self.mode,
                method=self.method,
                invert_to=self.invert_to,
                edit_prompt=self.edit_prompt,
                edit_steering=self.edit_steering,
                window=self.window,
                trials=self.trials,
                seed=self.seed,
                max_steps=self.max_steps,
                success_check=self.success_check,
            )
        except ValueError as exc:
            raise SystemExit(str(exc)) from None
        out = self.out or pathlib.Path("runs") / f"invert-{time.strftime('%Y%m%d-%H%M%S')}"
        try:
            with self.address(max_batch=1) as address:
                results = run_inversion(settings, address=address, out=out, api_key=self.api_key, render=self.render)
        except (ValueError, KeyError, FileExistsError) as exc:
            raise SystemExit(f"error: {exc}") from None
        print(json.dumps(results, indent=2))
        print(f"run directory: {out}  (chunks.csv, episodes.csv, results.json, mse_per_chunk.png, videos/)")


LATENT_COMMANDS = {
    "capture": LatentsCapture,
    "decode": LatentsDecode,
    "inspect": LatentsInspect,
    "similarity": LatentsSimilarity,
    "attention": LatentsAttention,
    "import-paper": LatentsImportPaper,
}


def main(argv: list[str] | None = None) -> None:
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["latents"]:
        command = tyro.extras.subcommand_cli_from_dict(
            LATENT_COMMANDS,
            prog="textlatent latents",
            description="Text latents: capture, decode, inspect.",
            args=args[1:],
        )
    else:
        command = tyro.extras.subcommand_cli_from_dict(
            {
                "demo": Demo,
                "checkpoint": Checkpoint,
                "serve": Serve,
                "eval": Eval,
                "invert": Invert,
                "latents": LatentsHelp,
                "bddl": Bddl,
            },
            description="textlatent: π0 as openpi computes it, with text-latent access.",
            args=args,
        )
    command.run()


@dataclasses.dataclass
class LatentsHelp:
    """Text latents: capture, inspect, similarity, decode, attention, import-paper (`textlatent latents --help`)."""

    def run(self) -> None:
        main(["latents", "--help"])


if __name__ == "__main__":
    main()
