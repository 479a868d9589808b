"""Datasets: real files, splits, hashes, binarisation protocol, batching, formats, fetching."""

import hashlib
import http.server
import shutil
import subprocess
import sys
import threading
import warnings
from functools import partial

import numpy as np
import pytest
import scipy.io
import torch

from dvae_q.cli.main import main
from dvae_q.data import datasets as data
from dvae_q.data import formats as data_formats
from dvae_q.data.fetch import fetch
from dvae_q.errors import RunFailure

# the README of ../shared/data quotes these; recomputed here with hashlib, not with dvae_q
README_HASHES = {
    ("binarized_mnist", "train"): "43490d4d6ac9002727af4426d8748609fdb7e4094fa65ad8d681ea60082a7a5a",
    ("binarized_mnist", "valid"): "069b4f0beb389b776478c3e872b4df71c95ac4be64d7cbe6d32e24ebac8e6d5e",
    ("binarized_mnist", "test"): "ca0294c3b8d984c7a1dc891015a8eea6f37bae59a34e35ea0fc8c47110a8dd86",
}


def sha(a):
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


@pytest.fixture(autouse=True)
def _fresh_reads():
    data._read_stored.cache_clear()
    yield
    data._read_stored.cache_clear()


def test_mnist_splits_shapes_values_and_hashes(data_dir):
    sizes = {"train": 50000, "valid": 10000, "test": 10000}
    means = {"train": 0.13056, "valid": 0.13113, "test": 0.13251}
    for split, n in sizes.items():
        x = data.load_dataset("binarized_mnist", split, data_dir)
        assert x.shape == (n, 784) and x.dtype == np.uint8
        assert set(np.unique(x)) == {0, 1}
        assert abs(x.mean() - means[split]) < 5e-6
        assert sha(x) == README_HASHES[("binarized_mnist", split)]


def test_omniglot_protocol_splits(data_dir):
    raw = np.load(data_dir / "omniglot28.npz")
    train = data.load_dataset("omniglot", "train", data_dir)
    valid = data.load_dataset("omniglot", "valid", data_dir)
    test = data.load_dataset("omniglot", "test", data_dir)
    assert (train.shape, valid.shape, test.shape) == ((23000, 784), (1345, 784), (8115, 784))
    assert train.max() == 255 and train.dtype == np.uint8
    # validation is the last 1,345 stored training rows
    np.testing.assert_array_equal(valid, raw["train"][-1345:])
    np.testing.assert_array_equal(train, raw["train"][:-1345])
    assert data.dataset_variant("omniglot", data_dir) == "OMNIGLOT-28"


def test_omniglot_eval_binarization_is_fixed_and_bernoulli(data_dir):
    grey = data.load_dataset("omniglot", "valid", data_dir)
    once = data.load_binarized("omniglot", "valid", data_dir)
    again = data.load_binarized("omniglot", "valid", data_dir)
    np.testing.assert_array_equal(once, again)
    # independent reference: PCG64 seeded 1, uniform < grey/255
    expected = np.random.Generator(np.random.PCG64(1)).random(grey.shape) < grey / 255.0
    np.testing.assert_array_equal(once, expected.astype(np.uint8))
    assert set(np.unique(once)) == {0, 1}
    with pytest.raises(data.DataError, match="re-binarised"):
        data.load_binarized("omniglot", "train", data_dir)


def test_training_mean(data_dir):
    mean = data.training_mean("omniglot", data_dir)
    raw = np.load(data_dir / "omniglot28.npz")["train"][:-1345]
    np.testing.assert_allclose(mean, raw.mean(0) / 255.0)
    assert mean.shape == (784,) and 0 <= mean.min() and mean.max() <= 1
    assert abs(data.training_mean("binarized_mnist", data_dir).mean() - 0.13056) < 5e-6


def test_dynamic_binarization_tracks_grey_mean(data_dir):
    it = data.training_batches("omniglot", 100, seed=0, data_dir=data_dir)
    grey = data.load_dataset("omniglot", "train", data_dir)
    first = next(it)
    assert first.dtype == torch.float32 and set(first.unique().tolist()) <= {0.0, 1.0}
    # the first epoch is in file order: batch 0 binarises rows 0..99
    p = grey[:100] / 255.0
    # mean of 78,400 independent Bernoullis: 5 sigma of their own spread
    sigma = np.sqrt((p * (1 - p)).sum()) / p.size
    assert abs(first.mean().item() - p.mean()) < 5 * sigma
    # a second draw of the same rows is binarised afresh
    it2 = data.BatchIterator(grey[:100], 100, seed=0, dynamic_binarization=True)
    a, b = next(it2), next(it2)
    assert not torch.equal(a, b)
    # later epochs reshuffle the rows, so compare the per-pixel mean over all 100 images:
    # 200 x 100 Bernoulli draws per pixel, std <= 0.5/sqrt(20000) = 0.0035, bound = 6 sigma
    pixel_mean = torch.stack([next(it2) for _ in range(200)]).mean((0, 1))
    assert float((pixel_mean - torch.as_tensor(p.mean(0), dtype=torch.float32)).abs().max()) < 0.021


def test_batch_iterator_epochs_shuffle_and_drop_last():
    images = np.arange(23, dtype=np.uint8).reshape(23, 1).repeat(784, 1)
    it = data.BatchIterator(images, 5, seed=3, dynamic_binarization=False)
    assert it.batches_per_epoch == 4
    first_epoch = torch.cat([next(it)[:, 0] for _ in range(4)]).long().tolist()
    assert first_epoch == list(range(20))  # file order, 3 rows dropped
    epochs = []
    for _ in range(3):
        rows = torch.cat([next(it)[:, 0] for _ in range(4)]).long().tolist()
        assert len(set(rows)) == 20 and set(rows) <= set(range(23))
        epochs.append(rows)
    assert epochs[0] != first_epoch and epochs[0] != epochs[1]
    with pytest.raises(data.DataError):
        data.BatchIterator(images, 24, seed=0, dynamic_binarization=False)


def test_batch_iterator_resume_is_exact(data_dir):
    grey = data.load_dataset("omniglot", "train", data_dir)[:250]
    it = data.BatchIterator(grey, 60, seed=11, dynamic_binarization=True)
    for _ in range(7):
        next(it)
    state = it.state_dict()
    expected = [next(it) for _ in range(6)]
    resumed = data.BatchIterator(grey, 60, seed=999, dynamic_binarization=True)
    resumed.load_state_dict(state)
    for want in expected:
        assert torch.equal(next(resumed), want)


def test_data_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("DVAEQ_DATA_DIR", str(tmp_path / "env"))
    assert data.resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert data.resolve_data_dir() == tmp_path / "env"
    monkeypatch.delenv("DVAEQ_DATA_DIR")
    monkeypatch.setenv("DVAEQ_CACHE_DIR", str(tmp_path / "cache"))
    assert data.resolve_data_dir() == tmp_path / "cache" / "data"


def test_missing_truncated_and_corrupted_files(tmp_path, data_dir):
    with pytest.raises(data.DataError, match="dvae-q data fetch binarized_mnist"):
        data.load_dataset("binarized_mnist", "train", tmp_path)
    blob = (data_dir / "binarized_mnist.npz").read_bytes()
    (tmp_path / "binarized_mnist.npz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(data.DataError, match="truncated or corrupted"):
        data.load_dataset("binarized_mnist", "train", tmp_path)
    arrays = dict(np.load(data_dir / "binarized_mnist.npz"))
    arrays["valid"] = arrays["valid"].copy()
    arrays["valid"][17, 3] ^= 0b00010000  # one flipped pixel
    np.savez(tmp_path / "binarized_mnist.npz", **arrays)
    with pytest.raises(data.DataError, match="split 'valid' does not match its sha256"):
        data.load_dataset("binarized_mnist", "test", tmp_path)
    with pytest.raises(data.DataError, match="unknown dataset"):
        data.load_dataset("cifar", "train", tmp_path)
    with pytest.raises(data.DataError, match="unknown split"):
        data.load_dataset("omniglot", "validation", tmp_path)


def test_hash_verdict_is_cached(data_dir, monkeypatch):
    data.load_dataset("binarized_mnist", "valid", data_dir)
    data._read_stored.cache_clear()

    def no_hashing(_):
        raise AssertionError("content hashed again although the verdict is cached")

    monkeypatch.setattr(data_formats, "content_sha256", no_hashing)
    assert data.load_dataset("binarized_mnist", "valid", data_dir).shape == (10000, 784)


def _fixture_images(n, seed):
    return (np.random.default_rng(seed).random((n, 784)) < 0.3).astype(np.uint8)


def _write_amat(path, images):
    np.savetxt(path, images, fmt="%d")


def test_amat_reader_and_loading_local_amat(tmp_path):
    images = _fixture_images(7, 0)
    _write_amat(tmp_path / "x.amat", images)
    np.testing.assert_array_equal(data_formats.read_amat(tmp_path / "x.amat"), images)
    (tmp_path / "bad.amat").write_text("0 1 2\n")
    with pytest.raises(data_formats.FormatError):
        data_formats.read_amat(tmp_path / "bad.amat")
    # local .amat files are found, decoded and hash-checked (fixtures fail the real hashes)
    for split in data.SPLITS:
        _write_amat(tmp_path / f"binarized_mnist_{split}.amat", images)
    with pytest.raises(data.DataError, match="does not match its sha256"):
        data.load_dataset("binarized_mnist", "train", tmp_path)


def test_chardata_reader_transposes_matlab_images(tmp_path):
    image = np.zeros((28, 28))
    image[2, 20] = 1.0  # row 2, column 20: asymmetric, so a missing transpose shows
    grey = np.random.default_rng(1).random((784, 5))
    grey[:, 0] = image.flatten(order="F")  # MATLAB stores each image column-major
    scipy.io.savemat(tmp_path / "chardata.mat", {"data": grey, "testdata": grey[:, :3]})
    out = data_formats.read_chardata(tmp_path / "chardata.mat")
    assert out["train"].shape == (5, 784) and out["test"].shape == (3, 784)
    np.testing.assert_array_equal(out["train"][0].reshape(28, 28), (image * 255).astype(np.uint8))
    np.testing.assert_array_equal(out["train"][1:], np.rint(grey[:, 1:].T.reshape(-1, 28, 28).transpose(0, 2, 1).reshape(-1, 784) * 255))
    # a local chardata.mat of the wrong size is refused
    with pytest.raises(data.DataError, match="not IWAE's chardata.mat"):
        data.load_dataset("omniglot", "train", tmp_path)


@pytest.fixture
def loopback_server(tmp_path):
    """An HTTP server on 127.0.0.1 serving `tmp_path/www`: the only address tests download from."""
    root = tmp_path / "www"
    root.mkdir()
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_fetch_over_loopback_converts_and_verifies(loopback_server, tmp_path):
    root, url = loopback_server
    images = {s: _fixture_images(4 + i, i) for i, s in enumerate(data.SPLITS)}
    for split, x in images.items():
        _write_amat(root / f"binarized_mnist_{split}.amat", x)
    hashes = {s: sha(x) for s, x in images.items()}
    out_dir = tmp_path / "store"
    result = fetch("binarized_mnist", data_dir=out_dir, base_url=url, expected_hashes=hashes)
    assert result.path == out_dir / "binarized_mnist.npz"
    with np.load(result.path) as stored:
        for split, x in images.items():
            np.testing.assert_array_equal(np.unpackbits(stored[split], axis=1)[:, :784], x)
    assert result.downloaded["binarized_mnist_test.amat"] == hashlib.sha256(
        (root / "binarized_mnist_test.amat").read_bytes()
    ).hexdigest()
    assert not list(out_dir.glob(".fetch-*"))  # no leftovers


def test_fetch_rejects_bad_checksum_and_stores_nothing(loopback_server, tmp_path):
    root, url = loopback_server
    for split in data.SPLITS:
        _write_amat(root / f"binarized_mnist_{split}.amat", _fixture_images(3, 5))
    out_dir = tmp_path / "store"
    with pytest.raises(data.DataError, match="fails its checksum"):
        fetch("binarized_mnist", data_dir=out_dir, base_url=url)  # the real hashes
    assert not (out_dir / "binarized_mnist.npz").exists()
    with pytest.raises(RunFailure, match="could not download"):
        fetch("omniglot", data_dir=out_dir, base_url=url)  # 404: chardata.mat not served


def test_fetch_chardata_over_loopback(loopback_server, tmp_path):
    root, url = loopback_server
    grey = np.random.default_rng(2).random((784, 6))
    scipy.io.savemat(root / "chardata.mat", {"data": grey, "testdata": grey[:, :2]})
    expected = data_formats.read_chardata(root / "chardata.mat")
    hashes = {s: sha(a) for s, a in expected.items()}
    result = fetch("omniglot", data_dir=tmp_path / "s", base_url=url, expected_hashes=hashes)
    with np.load(result.path) as stored:
        np.testing.assert_array_equal(stored["train"], expected["train"])


def test_cli_data_info_and_bad_input(data_dir, tmp_path, capsys):
    assert main(["data", "info", "binarized_mnist", "--data-dir", str(data_dir)]) == 0
    assert "train 50000" in capsys.readouterr().out
    assert main(["data", "info", "omniglot", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not found" in err and "Traceback" not in err
    assert main(["data", "fetch", "cifar"]) == 2


def test_console_script_exit_status(tmp_path):
    exe = shutil.which("dvae-q", path=str(__import__("pathlib").Path(sys.executable).parent))
    assert exe, "the dvae-q console script is installed with the package"
    proc = subprocess.run(
        [exe, "data", "info", "--data-dir", str(tmp_path)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("dvae-q: error:") and proc.stderr.count("\n") == 1


def test_checkout_sibling_data_is_the_last_resort(tmp_path, monkeypatch):
    monkeypatch.delenv("DVAEQ_DATA_DIR", raising=False)
    monkeypatch.setenv("DVAEQ_CACHE_DIR", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(data, "CHECKOUT_DATA", tmp_path / "shared")
    with pytest.raises(data.DataError, match="empty-cache"):
        data.find_source("binarized_mnist")
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "binarized_mnist.npz").write_bytes(b"")
    assert data.find_source("binarized_mnist")[1] == tmp_path / "shared"
    # an explicit folder is used alone
    with pytest.raises(data.DataError):
        data.find_source("binarized_mnist", tmp_path / "elsewhere")


def test_batches_and_to_tensor_give_torch_its_own_memory(data_dir):
    stored = data.load_binarized("binarized_mnist", "valid", data_dir)[:40]
    assert not stored.flags.writeable  # the shared arrays are read-only...
    with pytest.warns(UserWarning, match="not writable"):
        torch.as_tensor(stored, dtype=torch.float32)  # ...which torch.as_tensor warns about
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = data.to_tensor(stored)
        batch = next(data.BatchIterator(stored, 40, seed=0, dynamic_binarization=False))
    assert x.dtype == torch.float32 and torch.equal(x, torch.tensor(stored.astype(np.float32)))
    assert torch.equal(batch, x)  # the first epoch is in stored order
    x[0, 0] = 7.0  # torch's copy, not a view of the stored array
    assert stored[0, 0] in (0, 1)


def test_fetch_reports_bytes_through_progress(loopback_server, tmp_path):
    root, url = loopback_server
    images = {s: _fixture_images(4 + i, i) for i, s in enumerate(data.SPLITS)}
    for split, x in images.items():
        _write_amat(root / f"binarized_mnist_{split}.amat", x)
    hashes = {s: sha(x) for s, x in images.items()}
    sizes = [(root / f"binarized_mnist_{s}.amat").stat().st_size for s in data.SPLITS]

    class Recorder:
        def __init__(self):
            self.n, self.totals, self.files = 0, [], []

        def set_total(self, total):
            self.totals.append(total)

        def update(self, n=1):
            self.n += n

        def set_postfix(self, **values):
            self.files.append(values["file"])

    seen = Recorder()
    fetch("binarized_mnist", data_dir=tmp_path / "s", base_url=url, expected_hashes=hashes,
          progress=seen)
    assert seen.n == sum(sizes)  # every byte counted once
    assert seen.totals == [sizes[0], sizes[0] + sizes[1], sum(sizes)]  # grows as servers announce
    assert seen.files == [f"binarized_mnist_{s}.amat" for s in data.SPLITS]
