"""openpi's wire format: msgpack maps with numpy arrays encoded as ``{b"__ndarray__": True, b"data", b"dtype", b"shape"}``.

Encoding is byte-compatible with ``openpi_client.msgpack_numpy`` (keys are msgpack bin, arrays C-ordered). Decoding
is stricter, because frames come from the network: only plain numeric/bool/string dtypes, sizes that match the
shape, bounded nesting and element counts — anything else raises :class:`WireError` with a message for the client.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np

_ARRAY_MARK = b"__ndarray__"
_SCALAR_MARK = b"__npgeneric__"
# Bool, signed/unsigned int, float and fixed-width unicode/bytes: what observations and replies consist of.
_ALLOWED_KINDS = frozenset("biufUS")
MAX_DIMS = 8


class WireError(ValueError):
    """A frame that is not a valid openpi msgpack message."""


def _encode(obj: Any) -> Any:
    if isinstance(obj, np.ndarray | np.generic) and obj.dtype.kind not in _ALLOWED_KINDS:
        raise WireError(f"cannot send arrays of dtype {obj.dtype} (kinds V, O and c are not part of the protocol)")
    if isinstance(obj, np.ndarray):
        return {
            _ARRAY_MARK: True,
            b"data": np.ascontiguousarray(obj).tobytes(),
            b"dtype": obj.dtype.str,
            b"shape": obj.shape,
        }
    if isinstance(obj, np.generic):
        return {_SCALAR_MARK: True, b"data": obj.item(), b"dtype": obj.dtype.str}
    return obj


def packb(obj: Any) -> bytes:
    """Serialize a message (nested dicts/lists of numpy arrays, scalars and strings) as openpi does."""
    return msgpack.packb(obj, default=_encode, use_bin_type=True)


def _dtype(value: Any) -> np.dtype:
    if not isinstance(value, str) or len(value) > 16:
        raise WireError(f"array dtype must be a numpy dtype string like '<f4', got {value!r:.40}")
    try:
        dtype = np.dtype(value)
    except TypeError as exc:
        raise WireError(f"unknown array dtype {value!r}") from exc
    if dtype.kind not in _ALLOWED_KINDS or dtype.itemsize == 0:
        raise WireError(f"array dtype {value!r} is not allowed (use bool, int, uint, float or fixed-width strings)")
    return dtype


def _decode_array(obj: dict, max_elements: int) -> np.ndarray:
    if set(obj) != {_ARRAY_MARK, b"data", b"dtype", b"shape"}:
        raise WireError(f"an encoded array has exactly the keys __ndarray__, data, dtype, shape; got {sorted(obj)}")
    data, shape = obj[b"data"], obj[b"shape"]
    dtype = _dtype(obj[b"dtype"])
    if not isinstance(data, bytes):
        raise WireError(f"array data must be bytes, got {type(data).__name__}")
    if not isinstance(shape, list | tuple) or len(shape) > MAX_DIMS:
        raise WireError(f"array shape must be a list of at most {MAX_DIMS} sizes, got {shape!r:.60}")
    if not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s <= max_elements for s in shape):
        raise WireError(
            f"array shape must hold non-negative sizes of at most {max_elements} elements, got {shape!r:.60}"
        )
    count = math.prod(shape)
    if count > max_elements:
        raise WireError(f"array of shape {tuple(shape)} has more than {max_elements} elements")
    if len(data) != count * dtype.itemsize:
        raise WireError(
            f"array data has {len(data)} bytes but shape {tuple(shape)} of {dtype.str} needs {count * dtype.itemsize}"
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _decode_scalar(obj: dict) -> np.generic:
    if set(obj) != {_SCALAR_MARK, b"data", b"dtype"}:
        raise WireError(f"an encoded numpy scalar has exactly the keys __npgeneric__, data, dtype; got {sorted(obj)}")
    dtype = _dtype(obj[b"dtype"])
    data = obj[b"data"]
    if isinstance(data, dict | list | tuple) or data is None:
        raise WireError(f"numpy scalar data must be a number, bool or string, got {type(data).__name__}")
    try:
        with np.errstate(over="raise", invalid="raise"):  # 1e300 as float16 is an error, not a silent inf
            return dtype.type(data)
    except (TypeError, ValueError, OverflowError, FloatingPointError) as exc:
        raise WireError(f"numpy scalar {data!r:.40} does not fit dtype {dtype.str}: {exc}") from exc


def unpackb(frame: bytes, *, max_elements: int = 1 << 28, max_depth: int = 32) -> Any:
    """Decode one frame. Raises :class:`WireError` (never anything else) when it is not a valid message."""

    def hook(obj: dict) -> Any:
        if obj.get(_ARRAY_MARK) is True:
            return _decode_array(obj, max_elements)
        if obj.get(_SCALAR_MARK) is True:
            return _decode_scalar(obj)
        return obj

    try:
        message = msgpack.unpackb(
            frame,
            object_hook=hook,
            raw=False,
            strict_map_key=False,
        )
    except WireError:
        raise
    except msgpack.ExtraData as exc:
        raise WireError(f"not a single msgpack message: {len(exc.extra)} bytes follow the first message") from exc
    except (ValueError, TypeError, UnicodeDecodeError, RecursionError, OverflowError) as exc:
        detail = f": {exc}" if str(exc) else ""
        raise WireError(f"malformed msgpack ({type(exc).__name__}{detail})") from exc
    _check_depth(message, max_depth)
    return message


def _check_depth(obj: Any, limit: int) -> None:
    stack = [(obj, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            raise WireError(f"message nests deeper than {limit} levels")
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list | tuple):
            stack.extend((v, depth + 1) for v in item)
