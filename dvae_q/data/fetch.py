"""`dvae-q data fetch NAME`: download the canonical public files, convert, verify, store.

For users with internet only; nothing else in dvae-q downloads. The canonical files are
Larochelle's `binarized_mnist_{train,valid,test}.amat` and IWAE's `chardata.mat`; they are
converted to dvae-q archives (`binarized_mnist.npz`, `omniglot_chardata.npz`) in the data
folder, written atomically, after their content has been verified: binarized MNIST against the
published content sha256 of every split, chardata.mat against its known split sizes (no content
hash of it is published that we could check against; the file's own sha256 is returned so a run
record can state exactly what was used).
"""

from __future__ import annotations

import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from dvae_q.data import formats as fmt
from dvae_q.data.datasets import (
    CHARDATA_SIZES,
    MNIST_HASHES,
    SPLITS,
    DataError,
    resolve_data_dir,
)
from dvae_q.errors import RunFailure
from dvae_q.progress import Progress, as_progress

CANONICAL_URLS = {
    "binarized_mnist": "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/",
    "omniglot": "https://raw.githubusercontent.com/yburda/iwae/master/datasets/OMNIGLOT/",
}
CANONICAL_FILES = {
    "binarized_mnist": tuple(f"binarized_mnist_{s}.amat" for s in SPLITS),
    "omniglot": ("chardata.mat",),
}
OUTPUT_FILES = {"binarized_mnist": "binarized_mnist.npz", "omniglot": "omniglot_chardata.npz"}


@dataclass(frozen=True)
class FetchResult:
    path: Path  # the converted archive
    downloaded: dict[str, str]  # canonical file name -> its file sha256


CHUNK_BYTES = 1 << 16


def _download(url: str, target: Path, timeout: float, progress: Progress,
              expected: int | None) -> int | None:
    """Stream `url` to `target`, reporting bytes; returns the bytes announced so far (None once
    a server did not say how many it would send)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(target, "wb") as out:
            length = response.headers.get("Content-Length", "")
            expected = expected + int(length) if expected is not None and length.isdigit() else None
            progress.set_total(expected)
            while chunk := response.read(CHUNK_BYTES):
                out.write(chunk)
                progress.update(len(chunk))
    except (urllib.error.URLError, OSError, TimeoutError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RunFailure(f"could not download {url}: {reason}") from None
    return expected


def fetch(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    base_url: str | None = None,
    expected_hashes: dict[str, str] | None = None,
    timeout: float = 60.0,
    progress: Progress | None = None,
) -> FetchResult:
    """Download `name`'s canonical files, convert and verify them, and store the archive.

    ``base_url`` replaces the canonical location (a mirror, or a loopback server in tests);
    ``expected_hashes`` replaces the published MNIST content hashes (tests with fixtures).
    ``progress`` (see `dvae_q.progress`) counts bytes downloaded, its total the bytes the
    servers announce, the file being fetched as postfix.
    Nothing is written to the data folder unless every check passes.
    """
    if name not in CANONICAL_FILES:
        raise DataError(f"unknown dataset '{name}'; known: {', '.join(CANONICAL_FILES)}")
    base = base_url or CANONICAL_URLS[name]
    if not base.endswith("/"):
        base += "/"
    folder = resolve_data_dir(data_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        staging = tempfile.TemporaryDirectory(dir=folder, prefix=".fetch-")
    except OSError as exc:
        raise DataError(f"cannot write to the data folder {folder} "
                        f"({exc.strerror or type(exc).__name__}); choose another with --data-dir") from None
    progress, expected = as_progress(progress), 0
    with staging as tmp:
        downloaded = {}
        for file_name in CANONICAL_FILES[name]:
            target = Path(tmp) / file_name
            progress.set_postfix(file=file_name)
            expected = _download(base + file_name, target, timeout, progress, expected)
            downloaded[file_name] = fmt.file_sha256(target)
        try:
            arrays = _convert(name, Path(tmp), expected_hashes)
        except fmt.FormatError as exc:
            raise DataError(f"downloaded file rejected: {exc}") from None
        out = folder / OUTPUT_FILES[name]
        fmt.write_npz_atomic(out, arrays)
    return FetchResult(out, downloaded)


def _convert(name: str, folder: Path, expected_hashes: dict[str, str] | None) -> dict:
    if name == "binarized_mnist":
        expected = expected_hashes or MNIST_HASHES
        splits = {s: fmt.read_amat(folder / f"binarized_mnist_{s}.amat") for s in SPLITS}
        for split, array in splits.items():
            got = fmt.content_sha256(array)
            if got != expected[split]:
                raise DataError(
                    f"downloaded binarized_mnist_{split}.amat fails its checksum "
                    f"({got[:12]}... instead of {expected[split][:12]}...); nothing was stored"
                )
        return {s: fmt.pack_bits(a) for s, a in splits.items()}
    splits = fmt.read_chardata(folder / "chardata.mat")
    sizes = {s: len(a) for s, a in splits.items()}
    wanted = expected_hashes and {s: fmt.content_sha256(a) for s, a in splits.items()}
    if expected_hashes and wanted != expected_hashes:
        raise DataError("downloaded chardata.mat fails its checksum; nothing was stored")
    if not expected_hashes and sizes != CHARDATA_SIZES:
        raise DataError(
            f"downloaded chardata.mat has split sizes {sizes}, expected {CHARDATA_SIZES}"
        )
    return splits
