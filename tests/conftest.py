"""Suite-wide fixtures: the real datasets from ../shared/data and an isolated cache folder."""

import os
from pathlib import Path

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # parallel workers share 2 cores: one intra-op thread each avoids oversubscription
    torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("DVAEQ_DATA_DIR") or REPO.parent / "shared" / "data")
# training tests read the real data through the library's own lookup ($DVAEQ_DATA_DIR)
if (SHARED_DATA / "binarized_mnist.npz").is_file():
    os.environ["DVAEQ_DATA_DIR"] = str(SHARED_DATA)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """Folder of the real datasets; the suite needs them (the Makefile points at ../shared/data)."""
    if not (SHARED_DATA / "binarized_mnist.npz").is_file():
        pytest.fail(f"real datasets not found in {SHARED_DATA}; set DVAEQ_DATA_DIR")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Hash verdicts, embeddings and downloads go to a per-session temporary cache."""
    cache = tmp_path_factory.getbasetemp() / "dvaeq-cache"
    monkeypatch.setenv("DVAEQ_CACHE_DIR", str(cache))
