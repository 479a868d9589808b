"""Readers and writers of the dataset file formats dvae-q understands.

* dvae-q archives (`binarized_mnist.npz`, `omniglot28.npz`, `omniglot_chardata.npz`): numpy
  archives, binarized MNIST bit-packed along axis 1, OMNIGLOT as uint8 grey levels 0..255.
* Larochelle's `binarized_mnist_{train,valid,test}.amat`: text, one image per line, 784
  space-separated 0/1 values, row-major 28x28.
* IWAE's `chardata.mat`: MATLAB file with `data` (784 x 24345) and `testdata` (784 x 8070),
  floats in [0, 1], each image stored column-major (MATLAB order).

All readers return uint8 arrays of shape (N, 784) in row-major image order.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np

from storage.files import write_atomic

IMAGE_SIDE = 28
NUM_PIXELS = IMAGE_SIDE * IMAGE_SIDE


class FormatError(ValueError):
    """A data file is truncated, corrupted or not in the expected format."""


def content_sha256(array: np.ndarray) -> str:
    """sha256 of the array's bytes in C order: the hash the data README quotes."""
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_npz_arrays(path: Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Load the named arrays of a numpy archive, mapping every failure to FormatError."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in keys if k not in archive.files]
            if missing:
                raise FormatError(f"{path}: missing array(s) {', '.join(missing)}")
            return {k: archive[k] for k in keys}
    except FormatError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as exc:
        raise FormatError(f"{path} is truncated or corrupted ({type(exc).__name__})") from None


def unpack_bits(packed: np.ndarray) -> np.ndarray:
    """Decode a bit-packed (N, 98) uint8 array to (N, 784) values in {0, 1}."""
    if packed.ndim != 2 or packed.dtype != np.uint8 or packed.shape[1] * 8 < NUM_PIXELS:
        raise FormatError(f"bit-packed images have shape {packed.shape} / dtype {packed.dtype}")
    return np.unpackbits(packed, axis=1)[:, :NUM_PIXELS]


def pack_bits(binary: np.ndarray) -> np.ndarray:
    return np.packbits(binary.astype(np.uint8), axis=1)


def read_amat(path: Path) -> np.ndarray:
    """Read a Larochelle `.amat` file of binarized MNIST."""
    try:
        values = np.loadtxt(path, dtype=np.float64, ndmin=2)
    except (OSError, ValueError) as exc:
        raise FormatError(f"{path} is not a readable .amat file ({exc})") from None
    if values.shape[1] != NUM_PIXELS:
        raise FormatError(f"{path}: rows have {values.shape[1]} values, expected {NUM_PIXELS}")
    if not np.all((values == 0) | (values == 1)):
        raise FormatError(f"{path}: values other than 0 and 1")
    return values.astype(np.uint8)


def read_chardata(path: Path) -> dict[str, np.ndarray]:
    """Read IWAE's `chardata.mat` into {'train': (24345, 784), 'test': (8070, 784)} grey uint8."""
    import scipy.io

    try:
        mat = scipy.io.loadmat(path, variable_names=["data", "testdata"])
    except Exception as exc:  # scipy raises many types for a bad file; all mean "unreadable"
        raise FormatError(f"{path} is not a readable MATLAB file ({type(exc).__name__})") from None
    out = {}
    for key, split in (("data", "train"), ("testdata", "test")):
        if key not in mat:
            raise FormatError(f"{path}: variable '{key}' is missing")
        images = np.asarray(mat[key], dtype=np.float64)
        if images.ndim != 2 or images.shape[0] != NUM_PIXELS:
            raise FormatError(f"{path}: '{key}' has shape {images.shape}, expected (784, N)")
        if images.min() < 0 or images.max() > 1:
            raise FormatError(f"{path}: '{key}' values outside [0, 1]")
        # columns are images; each image is stored column-major, so transpose every 28x28 image
        images = images.T.reshape(-1, IMAGE_SIDE, IMAGE_SIDE).transpose(0, 2, 1)
        out[split] = np.rint(images.reshape(-1, NUM_PIXELS) * 255.0).astype(np.uint8)
    return out


def write_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write a numpy archive to a temporary file beside `path`, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda handle: np.savez_compressed(handle, **arrays))
