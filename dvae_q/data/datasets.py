"""The two benchmark datasets, read offline, verified, and batched for training.

Public API
----------
``load_dataset(name, split, data_dir=None) -> np.ndarray``
    uint8 array of shape (N, 784), rows are 28x28 images in row-major order. ``binarized_mnist``
    (train/valid/test: 50,000/10,000/10,000, values 0/1) and ``omniglot`` (train/valid/test:
    23,000/1,345/8,115 for OMNIGLOT-28 or 23,000/1,345/8,070 for ``chardata.mat``, grey 0..255).
``load_binarized(name, split, data_dir=None)``
    the 0/1 evaluation data: MNIST as stored; OMNIGLOT validation/test binarised once with a
    generator seeded 1 (identical on every machine).
``training_mean(name, data_dir=None)``
    the per-pixel mean of the training images as stored (grey/255 for OMNIGLOT): the x̄ of the
    model's centring and output bias.
``BatchIterator`` / ``training_batches(name, batch_size, seed, ...)``
    first epoch in file order, reshuffled at every epoch boundary, last partial batch dropped,
    OMNIGLOT re-binarised at every draw; its ``state_dict()`` makes resume exact.
``to_tensor(images, dtype=torch.float32, device=None)``
    a tensor torch owns, copied from a (read-only) dataset array.

Where the files are: the ``data_dir`` argument, else ``$DVAEQ_DATA_DIR``, else
``<cache>/data`` with ``<cache>`` = ``$DVAEQ_CACHE_DIR`` or ``$XDG_CACHE_HOME/dvae-q`` or
``~/.cache/dvae-q``, and, failing that, ``../shared/data`` beside a development checkout. Content hashes are checked on first load and the verdict is cached.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from dvae_q.data import formats as fmt
from dvae_q.errors import BadInput
from storage.cache import cache_root
from storage.files import write_atomic

SPLITS = ("train", "valid", "test")
OMNIGLOT_VALID_SIZE = 1345  # the last 1,345 training rows are the validation set (IWAE protocol)
EVAL_BINARIZATION_SEED = 1  # OMNIGLOT validation/test are binarised once with seed 1, everywhere

# content sha256 of each decoded split (row-major uint8 bytes); the .amat files decode
# to the same arrays as the packed archive (verified pixel-exact by the data's curator)
MNIST_HASHES = {
    "train": "43490d4d6ac9002727af4426d8748609fdb7e4094fa65ad8d681ea60082a7a5a",
    "valid": "069b4f0beb389b776478c3e872b4df71c95ac4be64d7cbe6d32e24ebac8e6d5e",
    "test": "ca0294c3b8d984c7a1dc891015a8eea6f37bae59a34e35ea0fc8c47110a8dd86",
}
OMNIGLOT28_HASHES = {
    "train": "5273d2abfcc1f4c36f8734236c0d9016dfed0775079b10c5ce127eac10965086",
    "test": "283e02eb1a975d21fdfd5bd8401486106c1b8b65cf1541fd876d898339e765ad",
}
CHARDATA_SIZES = {"train": 24345, "test": 8070}  # no published content hash is known to us


class DataError(BadInput):
    """A dataset file is missing, truncated, corrupted or of the wrong content."""


@dataclass(frozen=True)
class Source:
    """One way a dataset can be stored on disk, tried in order by `find_source`."""

    dataset: str
    variant: str  # the benchmark's name in reports
    files: tuple[str, ...]
    binary: bool  # stored as 0/1 (MNIST) or grey 0..255 (OMNIGLOT)


SOURCES = {
    "binarized_mnist": (
        Source("binarized_mnist", "binarized MNIST", ("binarized_mnist.npz",), True),
        Source(
            "binarized_mnist",
            "binarized MNIST",
            tuple(f"binarized_mnist_{s}.amat" for s in SPLITS),
            True,
        ),
    ),
    "omniglot": (
        Source("omniglot", "OMNIGLOT (chardata.mat)", ("omniglot_chardata.npz",), False),
        Source("omniglot", "OMNIGLOT (chardata.mat)", ("chardata.mat",), False),
        Source("omniglot", "OMNIGLOT-28", ("omniglot28.npz",), False),
    ),
}
DATASETS = tuple(SOURCES)


def cache_dir() -> Path:
    """dvae-q's per-user cache folder (downloads, hash verdicts, embeddings)."""
    return cache_root()


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding the dataset files: argument, else $DVAEQ_DATA_DIR, else the cache."""
    if data_dir is not None:
        return Path(data_dir)
    env = os.environ.get("DVAEQ_DATA_DIR")
    return Path(env) if env else cache_dir() / "data"


def _check_name(name: str, split: str | None = None) -> None:
    if name not in SOURCES:
        raise DataError(f"unknown dataset '{name}'; known: {', '.join(DATASETS)}")
    if split is not None and split not in SPLITS:
        raise DataError(f"unknown split '{split}'; known: {', '.join(SPLITS)}")


# a development checkout sits beside the project's shared/ folder, which holds the real data
CHECKOUT_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def _candidate_folders(data_dir) -> list[Path]:
    """Where to look: an explicit folder or $DVAEQ_DATA_DIR alone; otherwise the cache, then
    the checkout's ../shared/data."""
    if data_dir is not None or os.environ.get("DVAEQ_DATA_DIR"):
        return [resolve_data_dir(data_dir)]
    return [resolve_data_dir(None), CHECKOUT_DATA]


def find_source(name: str, data_dir: str | os.PathLike | None = None) -> tuple[Source, Path]:
    """The first complete storage of `name` in the data folder, or a DataError saying what to do."""
    _check_name(name)
    folders = _candidate_folders(data_dir)
    for folder in folders:
        for source in SOURCES[name]:
            if all((folder / f).is_file() for f in source.files):
                return source, folder
    folder = folders[0]
    wanted = " or ".join("+".join(s.files) for s in SOURCES[name])
    raise DataError(
        f"dataset '{name}' not found in {folder} (looked for {wanted}); set DVAEQ_DATA_DIR to "
        f"the folder that holds it, or run `dvae-q data fetch {name}`"
    )


# --- hash verdict cache -------------------------------------------------------------------


def _verdict_file() -> Path:
    return cache_dir() / "verified.json"


def _file_key(paths: list[Path]) -> str:
    stats = [(str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
    return json.dumps(stats)


def _verdict_cached(key: str) -> bool:
    try:
        return key in json.loads(_verdict_file().read_text())
    except (OSError, ValueError):
        return False


def _remember_verdict(key: str) -> None:
    path = _verdict_file()
    try:
        known = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, ValueError):
        known = {}
    known[key] = True
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(known))
    except OSError:
        pass  # a read-only cache only costs re-hashing next time


def _verify(source: Source, paths: list[Path], splits: dict[str, np.ndarray]) -> None:
    if source.files == ("omniglot28.npz",):
        expected = OMNIGLOT28_HASHES
    elif source.dataset == "binarized_mnist":
        expected = MNIST_HASHES
    else:
        expected = None
    if expected is None:
        for split, size in CHARDATA_SIZES.items():
            if splits[split].shape != (size, fmt.NUM_PIXELS):
                raise DataError(
                    f"{paths[0]}: '{split}' has shape {splits[split].shape}, expected "
                    f"({size}, {fmt.NUM_PIXELS}); the file is not IWAE's chardata.mat"
                )
        return
    for split, digest in expected.items():
        got = fmt.content_sha256(splits[split])
        if got != digest:
            where = paths[0] if len(paths) == 1 else paths[SPLITS.index(split)]
            raise DataError(
                f"{where}: content of split '{split}' does not match its sha256 "
                f"({got[:12]}... instead of {digest[:12]}...); the file is corrupted or not "
                f"this dataset: replace it (e.g. `dvae-q data fetch {source.dataset}`)"
            )


@lru_cache(maxsize=4)
def _read_stored(source: Source, folder: Path, key: str) -> dict[str, np.ndarray]:
    """Decode every stored split of a source once per process (key changes if files change)."""
    paths = [folder / f for f in source.files]
    try:
        if source.files == ("binarized_mnist.npz",):
            packed = fmt.read_npz_arrays(paths[0], SPLITS)
            splits = {s: fmt.unpack_bits(packed[s]) for s in SPLITS}
        elif source.files[0].endswith(".amat"):
            splits = {s: fmt.read_amat(p) for s, p in zip(SPLITS, paths)}
        elif source.files == ("chardata.mat",):
            splits = fmt.read_chardata(paths[0])
        else:
            splits = fmt.read_npz_arrays(paths[0], ("train", "test"))
    except fmt.FormatError as exc:
        raise DataError(
            f"{exc}; delete it and run `dvae-q data fetch {source.dataset}` or restore it"
        ) from None
    for split, array in splits.items():
        if array.dtype != np.uint8 or array.ndim != 2 or array.shape[1] != fmt.NUM_PIXELS:
            raise DataError(f"{paths[0]}: split '{split}' has shape {array.shape}/{array.dtype}")
    if not _verdict_cached(key):
        _verify(source, paths, splits)
        _remember_verdict(key)
    for array in splits.values():
        array.setflags(write=False)
    return splits


def _stored_splits(name: str, data_dir) -> tuple[Source, dict[str, np.ndarray]]:
    source, folder = find_source(name, data_dir)
    paths = [folder / f for f in source.files]
    return source, _read_stored(source, folder, _file_key(paths))


def load_dataset(name: str, split: str, data_dir: str | os.PathLike | None = None) -> np.ndarray:
    """The split as stored: uint8 (N, 784), 0/1 for binarized MNIST, grey 0..255 for OMNIGLOT.

    The returned array is read-only (it is shared between callers); copy it to modify it.
    """
    _check_name(name, split)
    source, stored = _stored_splits(name, data_dir)
    if source.dataset == "binarized_mnist":
        return stored[split]
    train = stored["train"]
    if split == "train":
        return train[:-OMNIGLOT_VALID_SIZE]
    if split == "valid":
        return train[-OMNIGLOT_VALID_SIZE:]
    return stored["test"]


def dataset_variant(name: str, data_dir: str | os.PathLike | None = None) -> str:
    """The benchmark name of what `load_dataset` reads, e.g. 'OMNIGLOT-28', for reports."""
    return find_source(name, data_dir)[0].variant


def is_binary(name: str) -> bool:
    """Whether the dataset is stored binarised (no dynamic binarisation of training batches)."""
    _check_name(name)
    return SOURCES[name][0].binary


def binarize_once(grey: np.ndarray, seed: int = EVAL_BINARIZATION_SEED) -> np.ndarray:
    """Bernoulli(grey/255) with a fresh PCG64 generator: the same bits on every machine."""
    uniforms = np.random.default_rng(seed).random(grey.shape)
    return (uniforms < grey / 255.0).astype(np.uint8)


def load_binarized(name: str, split: str, data_dir: str | os.PathLike | None = None) -> np.ndarray:
    """0/1 data for evaluation: MNIST as stored, OMNIGLOT valid/test binarised once (seed 1)."""
    images = load_dataset(name, split, data_dir)
    if is_binary(name):
        return images
    if split == "train":
        raise DataError(
            "OMNIGLOT training images are re-binarised at every draw; use training_batches()"
        )
    return binarize_once(images)


def training_mean(name: str, data_dir: str | os.PathLike | None = None) -> np.ndarray:
    """Per-pixel mean of the training images as stored, in [0, 1] (float64, shape (784,))."""
    train = load_dataset(name, "train", data_dir)
    scale = 1.0 if is_binary(name) else 255.0
    return train.mean(axis=0, dtype=np.float64) / scale


def to_tensor(images: np.ndarray, dtype: torch.dtype = torch.float32,
              device: torch.device | str | None = None) -> torch.Tensor:
    """A copy of `images` that torch owns. The arrays `load_dataset` returns are shared and
    read-only; `torch.as_tensor` would wrap their memory (and warn that it is not writable)."""
    return torch.tensor(np.asarray(images), dtype=dtype, device=device)


class BatchIterator:
    """Endless training batches over `images` (uint8, 0/1 or grey 0..255).

    The first epoch is in stored order; the order is reshuffled at every epoch boundary and the
    last incomplete batch of an epoch is dropped. With ``dynamic_binarization`` each batch is
    Bernoulli(grey/255) drawn afresh. Data order and binarisation use separate generators
    spawned from ``seed``; ``state_dict()`` captures both and the position so that a restored
    iterator yields exactly the batches the original would have.
    """

    def __init__(
        self,
        images: np.ndarray,
        batch_size: int,
        *,
        seed: int,
        dynamic_binarization: bool,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ):
        if batch_size < 1 or batch_size > len(images):
            raise DataError(f"batch_size {batch_size} must be in [1, {len(images)}]")
        self.images = images
        self.batch_size = batch_size
        self.dynamic_binarization = dynamic_binarization
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.dtype = dtype
        order_seq, binarize_seq = np.random.SeedSequence(seed).spawn(2)
        self._order_rng = np.random.Generator(np.random.PCG64(order_seq))
        self._binarize_rng = np.random.Generator(np.random.PCG64(binarize_seq))
        self.epoch = 0
        self.position = 0  # batches already drawn in this epoch
        self._order = np.arange(len(images))

    @property
    def batches_per_epoch(self) -> int:
        return len(self.images) // self.batch_size

    def __iter__(self):
        return self

    def __next__(self) -> torch.Tensor:
        if self.position == self.batches_per_epoch:
            self.epoch += 1
            self.position = 0
            self._order = self._order_rng.permutation(len(self.images))
        start = self.position * self.batch_size
        rows = self.images[self._order[start : start + self.batch_size]]
        self.position += 1
        if self.dynamic_binarization:
            rows = self._binarize_rng.random(rows.shape) < rows / 255.0
        return to_tensor(rows, self.dtype, self.device)

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "order": self._order.copy(),
            "order_rng": self._order_rng.bit_generator.state,
            "binarize_rng": self._binarize_rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict) -> None:
        if len(state["order"]) != len(self.images):
            raise DataError("data-order state does not match the dataset size; wrong run?")
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._order = np.asarray(state["order"]).copy()
        self._order_rng.bit_generator.state = state["order_rng"]
        self._binarize_rng.bit_generator.state = state["binarize_rng"]


def training_batches(
    name: str,
    batch_size: int,
    seed: int,
    *,
    data_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    device: torch.device | str | None = None,
) -> BatchIterator:
    """Training batches of `name` with its protocol (OMNIGLOT re-binarised at every draw).

    ``limit`` keeps only the first rows of the training split (smoke runs and tests).
    """
    images = load_dataset(name, "train", data_dir)
    if limit is not None:
        images = images[:limit]
    return BatchIterator(
        images,
        batch_size,
        seed=seed,
        dynamic_binarization=not is_binary(name),
        device=device,
    )
