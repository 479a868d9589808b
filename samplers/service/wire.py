"""The messages between a trainer and the service: versioned dicts of plain numpy arrays,
numbers and strings, never pickled objects with behaviour.

A model crosses as its biases plus either the dense W or, when the prior is restricted to a
coupling mask, the mask (as flat indices or packed bits, whichever is smaller) and the values
of the present couplers only. Samples come back as packed bits (one bit per unit). Sampler
states (chains, generator states, β_eff histories) cross as trees of dicts, lists, numbers and
tagged arrays. Decoding validates everything and raises `BadRequest` with one line naming the
problem, so a malformed message is refused before it reaches a sampler.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from samplers.model import BipartiteModel
from samplers.service.errors import BadRequest

WIRE_VERSION = 1
FLOAT_DTYPES = {"float16": torch.float16, "float32": torch.float32, "float64": torch.float64}
TENSOR_DTYPES = {
    **FLOAT_DTYPES,
    "bool": torch.bool,
    "uint8": torch.uint8,
    "int8": torch.int8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
}
# a refused request must not cost the service its memory: 2^27 couplers is 512 MB in float32,
# far above any chip (a Pegasus P16 native RBM has 2820 x 2820 = 8M entries)
MAX_COUPLINGS = 1 << 27
TAG = "__wire__"


def _array(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy()


def encode_model(model: BipartiteModel) -> dict:
    """The model as a message; a masked W travels as its present couplers only."""
    name = str(model.dtype).removeprefix("torch.")
    if name not in FLOAT_DTYPES:
        raise BadRequest(f"the service takes float16/32/64 models, not {name}")
    msg = {"v": WIRE_VERSION, "kind": "model", "dtype": name, "beta": float(model.beta),
           "shape": [model.num_left, model.num_right],
           "a_left": _array(model.a_left), "a_right": _array(model.a_right)}
    w = _array(model.W)
    present = None if model.mask is None else _array(model.mask) != 0
    if present is None or present.all():
        msg["W"] = w
        return msg
    flat = np.flatnonzero(present)
    if flat.size * 4 < math.ceil(present.size / 8):
        msg["mask_index"] = flat.astype(np.int32)
    else:
        msg["mask_bits"] = np.packbits(present.ravel())
    msg["couplers"] = w[present]  # row-major order, the order of the mask's flat indices
    return msg


def message_bytes(msg: dict) -> int:
    """Payload size of a message's arrays (what the wire format minimises)."""
    return sum(v.nbytes for v in msg.values() if isinstance(v, np.ndarray))


def _field(msg: dict, key: str, dtype: np.dtype, length: int | None = None) -> np.ndarray:
    value = msg.get(key)
    if not isinstance(value, np.ndarray) or value.dtype != dtype or value.ndim != 1:
        raise BadRequest(f"model message: '{key}' must be a 1-D {dtype} array")
    if length is not None and value.shape[0] != length:
        raise BadRequest(f"model message: '{key}' has {value.shape[0]} entries, expected {length}")
    return value


def _check_header(msg, kind: str) -> None:
    if not isinstance(msg, dict):
        raise BadRequest(f"a {kind} message is a dict, got {type(msg).__name__}")
    if msg.get("v") != WIRE_VERSION:
        raise BadRequest(f"wire version {msg.get('v')!r}; this service speaks version {WIRE_VERSION}")
    if msg.get("kind") != kind:
        raise BadRequest(f"expected a {kind} message, got {msg.get('kind')!r}")


def _shape(msg: dict) -> tuple[int, int]:
    shape = msg.get("shape")
    ok = (isinstance(shape, (list, tuple)) and len(shape) == 2
          and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape))
    if not ok:
        raise BadRequest("model message: 'shape' must be [n_left, n_right], positive ints")
    if shape[0] * shape[1] > MAX_COUPLINGS:
        raise BadRequest(f"model message: {shape[0]} x {shape[1]} couplings exceed the "
                         f"service's limit of {MAX_COUPLINGS}")
    return shape[0], shape[1]


def _mask(msg: dict, size: int) -> np.ndarray:
    present = np.zeros(size, dtype=bool)
    if "mask_index" in msg:
        index = _field(msg, "mask_index", np.dtype(np.int32))
        if index.size and (index.min() < 0 or index.max() >= size or np.any(np.diff(index) <= 0)):
            raise BadRequest("model message: 'mask_index' must be increasing indices within W")
        present[index] = True
        return present
    bits = _field(msg, "mask_bits", np.dtype(np.uint8), math.ceil(size / 8))
    return np.unpackbits(bits, count=size).astype(bool)


def _weights(msg: dict, n_left: int, n_right: int, dtype: np.dtype):
    """(dense W, mask or None) as numpy arrays."""
    if "W" in msg:
        w = msg["W"]
        if not isinstance(w, np.ndarray) or w.dtype != dtype or w.shape != (n_left, n_right):
            raise BadRequest(f"model message: 'W' must be a ({n_left}, {n_right}) {dtype} array")
        return w, None
    present = _mask(msg, n_left * n_right)
    values = _field(msg, "couplers", dtype, int(present.sum()))
    w = np.zeros(n_left * n_right, dtype=dtype)
    w[present] = values
    return w.reshape(n_left, n_right), present.reshape(n_left, n_right).astype(dtype)


def decode_model(msg) -> BipartiteModel:
    """The model of a message, validated: shapes, dtypes, finiteness and β."""
    _check_header(msg, "model")
    name = msg.get("dtype")
    if name not in FLOAT_DTYPES:
        raise BadRequest(f"model message: dtype {name!r} is not one of {', '.join(FLOAT_DTYPES)}")
    dtype = np.dtype(name)
    n_left, n_right = _shape(msg)
    a_left = _field(msg, "a_left", dtype, n_left)
    a_right = _field(msg, "a_right", dtype, n_right)
    w, mask = _weights(msg, n_left, n_right, dtype)
    beta = msg.get("beta")
    if isinstance(beta, bool) or not isinstance(beta, (int, float)):
        raise BadRequest("model message: 'beta' must be a number")
    t = lambda a: torch.from_numpy(np.array(a))  # noqa: E731  (a writable copy)
    try:
        return BipartiteModel(t(a_left), t(a_right), t(w), None if mask is None else t(mask),
                              float(beta))
    except ValueError as exc:  # NaN or infinite parameters, a negative or infinite beta
        raise BadRequest(str(exc)) from None


def encode_samples(z: torch.Tensor) -> dict:
    """Samples (n, units) with values in {0, 1} as packed bits."""
    z = z.detach().cpu()
    u8 = z.to(torch.uint8)
    # exactly the values 0 and 1 survive this round trip and are at most 1
    if not torch.equal(u8.to(z.dtype), z) or (u8.numel() and int(u8.max()) > 1):
        raise ValueError("samples must be binary to cross the wire as bits")
    bits = np.packbits(u8.numpy(), axis=1)
    return {"v": WIRE_VERSION, "kind": "samples", "bits": bits, "num_units": int(z.shape[1])}


def decode_samples(msg) -> torch.Tensor:
    """The (n, units) uint8 samples of a message."""
    _check_header(msg, "samples")
    bits, units = msg.get("bits"), msg.get("num_units")
    if not isinstance(bits, np.ndarray) or bits.dtype != np.uint8 or bits.ndim != 2:
        raise BadRequest("samples message: 'bits' must be a 2-D uint8 array")
    if not isinstance(units, int) or bits.shape[1] != math.ceil(units / 8):
        raise BadRequest("samples message: 'num_units' does not match the packed bits")
    return torch.from_numpy(np.unpackbits(bits, axis=1, count=units))


def encode_tree(obj, where: str = "state"):
    """A sampler state (or any tree of plain data and tensors) as plain data and arrays."""
    if isinstance(obj, torch.Tensor):
        return {TAG: "tensor", "dtype": str(obj.dtype).removeprefix("torch."), "data": _array(obj)}
    if isinstance(obj, np.ndarray):
        if obj.dtype.hasobject:
            raise BadRequest(f"{where}: an array of Python objects cannot cross the wire")
        return {TAG: "ndarray", "data": obj}
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        return obj
    if isinstance(obj, (list, tuple)):
        return [encode_tree(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if TAG in obj or not all(isinstance(k, (str, int)) for k in obj):
            raise BadRequest(f"{where}: dict keys must be str or int (and not {TAG!r})")
        return {k: encode_tree(v, f"{where}.{k}") for k, v in obj.items()}
    raise BadRequest(f"{where}: a {type(obj).__name__} is not plain data")


def _decode_array(obj: dict, where: str):
    data = obj.get("data")
    if not isinstance(data, np.ndarray) or data.dtype.hasobject:
        raise BadRequest(f"{where}: a tagged array needs numeric 'data'")
    if obj[TAG] == "ndarray":
        return np.array(data)
    name = obj.get("dtype")
    if obj[TAG] != "tensor" or name not in TENSOR_DTYPES:
        raise BadRequest(f"{where}: unknown tagged value {obj[TAG]!r}/{name!r}")
    return torch.from_numpy(np.array(data)).to(TENSOR_DTYPES[name])


def decode_tree(obj, where: str = "state"):
    """The inverse of `encode_tree`, refusing anything that is not plain data."""
    if obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        return obj
    if isinstance(obj, list):
        return [decode_tree(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if TAG in obj:
            return _decode_array(obj, where)
        return {k: decode_tree(v, f"{where}.{k}") for k, v in obj.items()}
    raise BadRequest(f"{where}: a {type(obj).__name__} is not plain data")


def plain_info(info: dict) -> dict:
    """A sampler's info reduced to what crosses the wire: numbers, strings and small
    containers of them (numpy scalars become Python numbers; tensors are left out)."""
    out = {}
    for key, value in info.items():
        value = _plain(value)
        if value is not _DROP:
            out[str(key)] = value
    return out


_DROP = object()


def _plain(value):
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value]
        return _DROP if any(v is _DROP for v in items) else items
    if isinstance(value, dict):
        return plain_info(value)
    return _DROP
