"""Import the text-latent paper's released pickles without running pickle code.

The paper's ``scripts/text_latent.py`` writes, per LeRobot task ``i``, ``avg_states_{i}_{i+1}_frame_0_119.pkl``: a
``pickle.dump`` (default protocol 4) of ``{"hidden_states_avg": jax.Array f32 [18, 816, 2048], "last_obs": openpi
Observation, "frame_index_to_use": [0..119], "task_range": (i, i+1)}`` (older versions add ``post_attn_avg``,
``post_attn_embedding_avg`` and ``text_token_head_output_avg``), plus ``reconstruct_prompt.pkl``: ``{prompt_key:
{"token_indices": [ids of layers 0..3], "decoding_result": [str, ...]}}``.

``pickle.load`` on such a file imports whatever module a GLOBAL names and calls whatever a REDUCE is given, so an
edited file can run any code. Here a restricted unpickler resolves only the globals these files contain, each to a
function of this module that checks its arguments, and maps openpi's ``Observation`` to a holder of its field dict
(openpi need not be installed). A jax array pickles as
``jax._src.array._reconstruct_array(numpy…multiarray._reconstruct, (numpy.ndarray, (0,), b'b'), ndarray_state,
{'weak_type': …})``; it is rebuilt as a plain numpy array and never reaches a device.
"""

from __future__ import annotations

import math
import os
import pathlib
import pickle
import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from textlatent.latents.latent import TextLatent

IMPORTED_FROM = "paper pickle"
PAPER_FILE_PATTERN = re.compile(r"^avg_states_(\d+)_(\d+)_frame_(\d+)_(\d+|all)\.pkl$")
PAPER_INJECTED_SLOTS = 9
"""The paper's policy only ever injects the first 9 prompt slots (``policy.py``'s ``_num_valid_token``)."""

DEFAULT_MAX_FILE_BYTES = 1 << 30
"""1 GiB: the largest released layout (four accumulators of the older script) is about 420 MB."""
DEFAULT_MAX_ARRAY_ELEMENTS = 1 << 26
"""67M elements: the largest paper array, 18 x 816 x 2048, has 30M."""
_MAX_NESTING = 32  # the paper's files nest four deep; anything deeper is not one of them (or is cyclic)

# numpy dtypes the files use (f4 states, i4 ids, b1 masks) and their plain relatives. No objects, strings or records.
_ALLOWED_DTYPES = frozenset({"b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8"})


class PaperPickleError(ValueError):
    """A file that is not (or not safely readable as) one of the text-latent paper's pickles."""


class PromptDecoder(Protocol):
    def decode(self, ids: Sequence[int]) -> str: ...


class PaperObservation:
    """What an openpi ``Observation`` pickled: its field dict (images, image_masks, state, tokenized_prompt, …),
    kept as data. No openpi code is imported or run."""

    __slots__ = ("fields",)  # no instance __dict__: a crafted BUILD cannot attach attributes

    def __init__(self, fields: dict[str, Any] | None = None):
        self.fields = dict(fields or {})

    def __setstate__(self, state: Any) -> None:
        # A dataclass pickles its __dict__; with slots it would be (dict, slot_dict).
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict | type(None)):
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict) or not all(isinstance(k, str) for k in state):
            raise PaperPickleError(f"openpi Observation state is not a dict of fields: {type(state).__name__}")
        self.fields = dict(state)

    def __repr__(self) -> str:
        return f"PaperObservation({sorted(self.fields)})"


# ---------------------------------------------------------------------------------------------------------------
# Restricted unpickling


def _check_dtype(dtype: Any, where: str) -> np.dtype:
    if not isinstance(dtype, np.dtype):
        raise PaperPickleError(f"{where}: expected a numpy dtype, got {type(dtype).__name__}")
    if dtype.fields is not None or dtype.subdtype is not None or dtype.hasobject or dtype.kind not in "biuf":
        raise PaperPickleError(f"{where}: dtype {dtype!r} is not a plain numeric dtype")
    return dtype


def _check_shape(shape: Any, max_elements: int, where: str) -> int:
    if not isinstance(shape, tuple) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise PaperPickleError(f"{where}: array shape {shape!r} is not a tuple of ints")
    if any(d < 0 for d in shape) or len(shape) > 32:
        raise PaperPickleError(f"{where}: invalid array shape {shape!r}")
    elements = math.prod(shape)
    if elements > max_elements:
        raise PaperPickleError(
            f"{where}: array of shape {shape} has {elements} elements, more than the limit of {max_elements} "
            "(max_array_elements)"
        )
    return elements


class _SafeGlobals:
    """Everything one load's GLOBALs may resolve to. Only these methods can be called; the classes and markers are
    made afresh per load, so a crafted BUILD that sets attributes on them cannot reach another load."""

    def __init__(self, source: str, max_array_elements: int, max_total_bytes: int):
        self.source = source
        self.max_array_elements = max_array_elements
        self.bytes_left = max_total_bytes  # total decoded array bytes; memo reuse must not multiply one buffer
        globals_ = self

        class GuardedArray(np.ndarray):
            """What numpy's ``_reconstruct`` returns here: an empty array whose ``__setstate__`` (the BUILD that
            follows) validates dtype, shape and size before numpy fills it in."""

            def __setstate__(self, state):
                globals_.check_array_state(state)
                super().__setstate__(state)

        self.guarded_array = GuardedArray
        self.ndarray_marker = object()  # stands in for numpy.ndarray: the real class would let NEWOBJ allocate freely
        self.object_marker = object()  # stands in for builtins.object in protocol-0/1 copyreg._reconstructor calls

        class Observation(PaperObservation):
            __slots__ = ()

        self.observation_class = Observation
        reconstruct, dtype, scalar, frombuffer = self.numpy_reconstruct, self.dtype, self.scalar, self.frombuffer
        self.table: dict[tuple[str, str], Any] = {
            ("numpy", "ndarray"): self.ndarray_marker,
            ("numpy", "dtype"): dtype,
            ("numpy.core.multiarray", "_reconstruct"): reconstruct,  # numpy 1.x (the paper's environment)
            ("numpy._core.multiarray", "_reconstruct"): reconstruct,  # numpy 2.x
            ("numpy.core.multiarray", "scalar"): scalar,
            ("numpy._core.multiarray", "scalar"): scalar,
            ("numpy.core.numeric", "_frombuffer"): frombuffer,  # numpy arrays pickled with protocol 5
            ("numpy._core.numeric", "_frombuffer"): frombuffer,
            ("jax._src.array", "_reconstruct_array"): self.jax_reconstruct_array,
            ("openpi.models.model", "Observation"): Observation,
            # Protocols 0-2 spell bytes and plain-object construction with these (Python 2 names included).
            ("_codecs", "encode"): self.latin1_encode,
            ("copyreg", "_reconstructor"): self.copyreg_reconstructor,
            ("copy_reg", "_reconstructor"): self.copyreg_reconstructor,
            ("builtins", "object"): self.object_marker,
            ("__builtin__", "object"): self.object_marker,
        }

    def spend(self, nbytes: int, where: str) -> None:
        self.bytes_left -= nbytes
        if self.bytes_left < 0:
            raise PaperPickleError(f"{where}: the arrays add up to more bytes than the file holds; refusing")

    def check_array_state(self, state: Any) -> None:
        where = f"{self.source}: numpy array"
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise PaperPickleError(f"{where}: unexpected array state {type(state).__name__}")
        shape, dtype, _is_fortran, data = state[-4:]
        _check_dtype(dtype, where)
        elements = _check_shape(shape, self.max_array_elements, where)
        if not isinstance(data, bytes | bytearray):
            raise PaperPickleError(f"{where}: array data is {type(data).__name__}, not bytes")
        if len(data) != elements * dtype.itemsize:
            raise PaperPickleError(f"{where}: {len(data)} data bytes for shape {shape} of {dtype}")
        self.spend(len(data), where)

    # --- the callables a GLOBAL may resolve to ---

    def numpy_reconstruct(self, subtype: Any, shape: Any, typecode: Any) -> np.ndarray:
        # numpy only ever pickles ``_reconstruct(ndarray, (0,), b'b')``; the real state comes by BUILD.
        if subtype is not self.ndarray_marker or shape != (0,) or typecode not in (b"b", "b"):
            raise PaperPickleError(f"{self.source}: unexpected numpy _reconstruct({shape!r}, {typecode!r}) call")
        return np.ndarray.__new__(self.guarded_array, (0,), np.int8)

    def dtype(self, spec: Any, align: Any = False, copy: Any = True) -> np.dtype:
        if not isinstance(spec, str) or spec not in _ALLOWED_DTYPES:
            raise PaperPickleError(f"{self.source}: numpy dtype {spec!r} is not allowed in a text-latent pickle")
        # copy=True always: BUILD then sets byte order on this copy, never on numpy's shared dtype singleton.
        return np.dtype(spec, align=False, copy=True)

    def scalar(self, dtype: Any, data: Any) -> np.generic:
        dtype = _check_dtype(dtype, f"{self.source}: numpy scalar")
        if not isinstance(data, bytes) or len(data) != dtype.itemsize:
            raise PaperPickleError(f"{self.source}: numpy scalar of {dtype} with {type(data).__name__} data")
        return np.frombuffer(data, dtype=dtype, count=1)[0]

    def frombuffer(self, buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
        where = f"{self.source}: numpy array (protocol 5)"
        dtype = _check_dtype(dtype, where)
        elements = _check_shape(shape, self.max_array_elements, where)
        if not isinstance(buffer, bytes | bytearray | memoryview | pickle.PickleBuffer) or order not in ("C", "F"):
            raise PaperPickleError(f"{where}: unexpected buffer {type(buffer).__name__} or order {order!r}")
        view = memoryview(buffer).cast("B")
        if view.nbytes != elements * dtype.itemsize:
            raise PaperPickleError(f"{where}: {view.nbytes} data bytes for shape {shape} of {dtype}")
        self.spend(view.nbytes, where)
        return np.frombuffer(view, dtype=dtype).reshape(shape, order=order)

    def jax_reconstruct_array(self, fun: Any, args: Any, array_state: Any, aval_state: Any) -> np.ndarray:
        # jax's own version does fun(*args).__setstate__(array_state) and then device_put; here it stays numpy.
        if fun != self.numpy_reconstruct or not isinstance(args, tuple) or not isinstance(aval_state, dict):
            raise PaperPickleError(f"{self.source}: jax array record is not numpy's array reduction")
        array = self.numpy_reconstruct(*args)
        array.__setstate__(array_state)
        return array

    def latin1_encode(self, text: Any, encoding: Any = "utf-8") -> bytes:
        if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
            raise PaperPickleError(f"{self.source}: unexpected _codecs.encode({type(text).__name__}, {encoding!r})")
        return text.encode("latin1")

    def copyreg_reconstructor(self, cls: Any, base: Any, state: Any) -> PaperObservation:
        if cls is not self.observation_class or base is not self.object_marker or state is not None:
            raise PaperPickleError(f"{self.source}: copyreg._reconstructor of something other than an Observation")
        return cls.__new__(cls)


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, safe_globals: _SafeGlobals):
        super().__init__(file)
        self._safe_globals = safe_globals

    def find_class(self, module: str, name: str) -> Any:
        target = self._safe_globals.table.get((module, name))
        if target is None:
            raise PaperPickleError(
                f"refusing to load {module}.{name} from {self._safe_globals.source}: this file is not a text-latent "
                "pickle (only numpy/jax arrays and openpi's Observation may appear in one)"
            )
        return target

    def persistent_load(self, pid: Any) -> Any:
        raise PaperPickleError(f"{self._safe_globals.source}: persistent ids are not used by text-latent pickles")


def _clean(value: Any, safe_globals: _SafeGlobals, depth: int = 0) -> Any:
    """A copy of the unpickled tree holding only plain data: dict/list/tuple, str/bytes/numbers/None, numpy arrays
    (base class) and PaperObservation. Anything else that slipped through is refused."""
    if depth > _MAX_NESTING:
        raise PaperPickleError(f"{safe_globals.source}: data nested more than {_MAX_NESTING} deep (or cyclic)")
    if value is None or isinstance(value, bool | int | float | str | bytes):
        return value
    if isinstance(value, np.ndarray):
        where = f"{safe_globals.source}: numpy array"
        _check_dtype(value.dtype, where)
        _check_shape(value.shape, safe_globals.max_array_elements, where)
        return value.view(np.ndarray)
    if isinstance(value, np.generic):
        _check_dtype(value.dtype, f"{safe_globals.source}: numpy scalar")
        return value
    if isinstance(value, list | tuple):
        items = [_clean(v, safe_globals, depth + 1) for v in value]
        return items if isinstance(value, list) else tuple(items)
    if isinstance(value, dict):
        return {_clean(k, safe_globals, depth + 1): _clean(v, safe_globals, depth + 1) for k, v in value.items()}
    if isinstance(value, safe_globals.observation_class):
        fields = getattr(value, "fields", None)
        if not isinstance(fields, dict):
            raise PaperPickleError(f"{safe_globals.source}: an Observation without its field dict")
        return PaperObservation(_clean(fields, safe_globals, depth + 1))
    raise PaperPickleError(f"{safe_globals.source}: unexpected {type(value).__name__} in a text-latent pickle")


def load_paper_pickle(
    path: str | os.PathLike,
    *,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    max_array_elements: int = DEFAULT_MAX_ARRAY_ELEMENTS,
) -> Any:
    """Unpickle one of the paper's files as plain data (jax arrays become numpy arrays, openpi Observations become
    ``PaperObservation``), refusing any other global. Raises ``PaperPickleError``."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise PaperPickleError(f"no file at {path}")
    size = path.stat().st_size
    if size > max_file_bytes:
        raise PaperPickleError(f"{path} is {size} bytes, more than the limit of {max_file_bytes} (max_file_bytes)")
    safe_globals = _SafeGlobals(path.name, max_array_elements, max_total_bytes=size)
    try:
        with path.open("rb") as f:
            data = _RestrictedUnpickler(f, safe_globals).load()
            trailing = f.read(1)
    except PaperPickleError:
        raise
    except (EOFError, pickle.UnpicklingError) as exc:
        raise PaperPickleError(f"cannot read {path}: truncated or not a pickle ({exc or type(exc).__name__})") from exc
    except (
        ValueError,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        OverflowError,
        MemoryError,
        RecursionError,
        UnicodeDecodeError,
    ) as exc:
        raise PaperPickleError(f"cannot read {path} as a text-latent pickle: {type(exc).__name__}: {exc}") from exc
    if trailing:
        raise PaperPickleError(f"{path} has data after the end of its pickle; not a text-latent pickle")
    return _clean(data, safe_globals)


# ---------------------------------------------------------------------------------------------------------------
# Paper files → TextLatent


def _field(mapping: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in mapping:
        raise PaperPickleError(f"{where} lacks {key!r} (has {sorted(map(str, mapping))})")
    return mapping[key]


def _prompt_row(value: Any, name: str, kinds: str, where: str) -> np.ndarray:
    """One prompt row from a [1, L] (batch of one, as the paper saved it) or [L] array."""
    if not isinstance(value, np.ndarray) or value.dtype.kind not in kinds:
        raise PaperPickleError(f"{where}: last_obs.{name} is not an array of kind {kinds!r}: {value!r:.80}")
    if value.ndim == 2 and value.shape[0] == 1:
        value = value[0]
    if value.ndim != 1 or value.size == 0:
        raise PaperPickleError(f"{where}: last_obs.{name} has shape {value.shape}, expected [1, L] or [L]")
    return value


def _task_range(data: Mapping[str, Any], where: str) -> list[int] | None:
    value = data.get("task_range")
    if value is None:
        return None
    if (
        not isinstance(value, list | tuple)
        or len(value) != 2
        or not all(isinstance(v, int | np.integer) for v in value)
    ):
        raise PaperPickleError(f"{where}: task_range {value!r} is not a pair of ints")
    return [int(v) for v in value]


def _frame_indices(data: Mapping[str, Any], where: str) -> list[int] | None:
    value = data.get("frame_index_to_use")
    if value is None:
        return None
    if isinstance(value, np.ndarray) and value.ndim == 1 and value.dtype.kind in "iu":
        return [int(v) for v in value]
    if not isinstance(value, list | tuple) or not all(isinstance(v, int | np.integer) for v in value):
        raise PaperPickleError(f"{where}: frame_index_to_use is not a list of ints")
    return [int(v) for v in value]


def import_paper_latent(
    path: str | os.PathLike,
    *,
    text_offset: int | None = None,
    slots: int | None = None,
    tokenizer: PromptDecoder | None = None,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    max_array_elements: int = DEFAULT_MAX_ARRAY_ELEMENTS,
) -> TextLatent:
    """The ``TextLatent`` of one ``avg_states_*.pkl``.

    ``states = hidden_states_avg[:, text_offset : text_offset + n]`` with ``n`` the number of real prompt tokens
    (``last_obs.tokenized_prompt_mask``), or ``slots`` to force a count (the paper's policy uses 9, whatever the
    prompt's length). ``text_offset`` defaults to ``prefix_len - L`` (L = tokenized_prompt length; 816 - 48 = 768:
    three images of 256 tokens precede the text). ``prompt`` is ``tokenizer.decode`` of the real tokens, or "".
    """
    path = pathlib.Path(path)
    where = str(path)
    data = load_paper_pickle(path, max_file_bytes=max_file_bytes, max_array_elements=max_array_elements)
    if not isinstance(data, dict):
        raise PaperPickleError(f"{where} holds a {type(data).__name__}, not the paper's dict of averaged states")

    hidden = _field(data, "hidden_states_avg", where)
    if not isinstance(hidden, np.ndarray) or hidden.ndim != 3 or hidden.dtype.kind != "f":
        raise PaperPickleError(
            f"{where}: hidden_states_avg must be a float array [layers, prefix, width], got "
            f"{getattr(hidden, 'shape', type(hidden).__name__)} {getattr(hidden, 'dtype', '')}"
        )
    prefix_len = hidden.shape[1]
    if 0 in hidden.shape:
        raise PaperPickleError(f"{where}: hidden_states_avg is empty: {hidden.shape}")

    observation = _field(data, "last_obs", where)
    if isinstance(observation, PaperObservation):
        observation = observation.fields
    if not isinstance(observation, dict):
        raise PaperPickleError(f"{where}: last_obs is a {type(observation).__name__}, not an openpi Observation")
    tokens = _prompt_row(_field(observation, "tokenized_prompt", f"{where}: last_obs"), "tokenized_prompt", "iu", where)
    mask = _prompt_row(
        _field(observation, "tokenized_prompt_mask", f"{where}: last_obs"), "tokenized_prompt_mask", "b", where
    )
    if mask.shape != tokens.shape:
        raise PaperPickleError(f"{where}: tokenized_prompt {tokens.shape} and its mask {mask.shape} differ in shape")
    text_len = tokens.shape[0]
    num_real = int(mask.sum())
    if num_real == 0 or not mask[:num_real].all():
        raise PaperPickleError(f"{where}: tokenized_prompt_mask is not a non-empty run of leading True values")

    num_slots = num_real if slots is None else slots
    if not isinstance(num_slots, int) or not 1 <= num_slots <= text_len:
        raise PaperPickleError(f"{where}: slots must be an int in 1..{text_len} (the prompt length), got {slots!r}")
    default_offset = prefix_len - text_len
    if default_offset < 0:
        raise PaperPickleError(
            f"{where}: the prompt ({text_len} tokens) is longer than the saved prefix ({prefix_len} positions)"
        )
    offset = default_offset if text_offset is None else text_offset
    if not isinstance(offset, int) or not 0 <= offset <= prefix_len - num_slots:
        raise PaperPickleError(
            f"{where}: text_offset {offset!r} does not fit {num_slots} slots in a prefix of {prefix_len} "
            f"(default {default_offset} = prefix - prompt length)"
        )

    states = np.array(hidden[:, offset : offset + num_slots], dtype=np.float32)  # a copy: drop the 120 MB array
    token_ids = tokens[:num_slots].astype(np.int32)
    if np.any(token_ids < 0):
        raise PaperPickleError(f"{where}: negative token ids in tokenized_prompt")
    prompt = "" if tokenizer is None else tokenizer.decode([int(t) for t in tokens[:num_real]]).strip()

    task_range = _task_range(data, where)
    frames = _frame_indices(data, where)
    metadata: dict[str, Any] = {
        "imported_from": IMPORTED_FROM,
        "source_file": path.name,
        "task_range": task_range,
        "frame_index_to_use": frames,
        "text_offset": offset,
        "prefix_len": prefix_len,
        "prompt_tokens": num_real,
        "slots": num_slots,
    }
    try:
        return TextLatent(states, token_ids, prompt, metadata)
    except ValueError as exc:  # e.g. NaN in the averaged states
        raise PaperPickleError(f"{where}: {exc}") from exc


def import_paper_decodings(
    path: str | os.PathLike, *, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
) -> dict[str, list[list[int]]]:
    """``reconstruct_prompt.pkl`` as ``{prompt_key: [token ids decoded from layer 0, 1, 2, 3]}``."""
    where = str(path)
    data = load_paper_pickle(path, max_file_bytes=max_file_bytes)
    if not isinstance(data, dict):
        raise PaperPickleError(f"{where} holds a {type(data).__name__}, not the paper's dict of decoded prompts")
    decodings: dict[str, list[list[int]]] = {}
    for key, entry in data.items():
        if not isinstance(key, str) or not isinstance(entry, dict):
            raise PaperPickleError(f"{where}: entry {key!r} is not prompt_key -> dict")
        per_layer = _field(entry, "token_indices", f"{where}: entry {key!r}")
        if not isinstance(per_layer, list | tuple | np.ndarray):
            raise PaperPickleError(f"{where}: {key!r} token_indices is not a list of per-layer id lists")
        layers: list[list[int]] = []
        for ids in per_layer:
            ids = np.asarray(ids) if isinstance(ids, list | tuple | np.ndarray) else None
            if ids is None or ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
                raise PaperPickleError(f"{where}: {key!r} token_indices holds something other than id lists")
            layers.append([int(i) for i in ids])
        decodings[key] = layers
    return decodings


def _file_name(prompt: str) -> str:
    # The paper's runner keys are prompt.replace(" ", "_"); drop anything a file name should not carry.
    name = re.sub(r"[^A-Za-z0-9_.,'+-]+", "_", prompt.strip().replace(" ", "_")).lstrip(".")
    return name[:200]


def _task_index_sort_key(path: pathlib.Path) -> tuple[int, str]:
    match = PAPER_FILE_PATTERN.match(path.name)
    return (int(match.group(1)) if match else 1 << 30, path.name)


def import_paper_directory(
    directory: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    tokenizer: PromptDecoder | None = None,
    text_offset: int | None = None,
    slots: int | None = None,
) -> list[pathlib.Path]:
    """Convert every ``avg_states_*.pkl`` in ``directory`` to ``out_dir/<name>.safetensors``; returns the paths.

    ``<name>`` is the decoded prompt with spaces as underscores when ``tokenizer`` is given, else ``task_<i>``. All
    files are read before any is written, so a bad file or two files with one name leave ``out_dir`` untouched.
    """
    directory, out_dir = pathlib.Path(directory), pathlib.Path(out_dir)
    if not directory.is_dir():
        raise PaperPickleError(f"{directory} is not a directory")
    files = sorted(directory.glob("avg_states_*.pkl"), key=_task_index_sort_key)
    if not files:
        raise PaperPickleError(f"{directory} holds no avg_states_*.pkl files")
    named: dict[str, tuple[pathlib.Path, TextLatent]] = {}
    for file in files:
        latent = import_paper_latent(file, text_offset=text_offset, slots=slots, tokenizer=tokenizer)
        name = _file_name(latent.prompt) if latent.prompt else ""
        if not name:
            task_range = latent.metadata.get("task_range")
            match = PAPER_FILE_PATTERN.match(file.name)
            name = f"task_{task_range[0]}" if task_range else f"task_{match.group(1)}" if match else file.stem
        if name in named:
            raise PaperPickleError(f"{named[name][0].name} and {file.name} would both be written as {name}.safetensors")
        named[name] = (file, latent)
    written = []
    for name, (_, latent) in named.items():
        target = out_dir / f"{name}.safetensors"
        written.append(latent.save(target))
    return written
