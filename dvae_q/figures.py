"""PNG figures of a run: image grids of decoded prior samples and the training curves."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on training machines
    import matplotlib.pyplot as plt

    return plt


def save_image_grid(images: np.ndarray, path: Path, side: int = 28) -> None:
    """Tile (n, side*side) images in [0, 1] into a square grid and write a PNG."""
    images = np.asarray(images, dtype=np.float64).reshape(-1, side, side)
    n = len(images)
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.ones((rows * (side + 1) + 1, cols * (side + 1) + 1))
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        grid[1 + r * (side + 1) : (r + 1) * (side + 1), 1 + c * (side + 1) : (c + 1) * (side + 1)] = image
    _pyplot().imsave(path, grid, cmap="gray", vmin=0.0, vmax=1.0)


def save_curves(rows: list[dict], path: Path) -> None:
    """Training loss and reconstruction, and validation/test NLL, against the step."""
    plt = _pyplot()

    def series(key):
        pts = [(int(r["step"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
        return zip(*pts) if pts else ((), ())

    fig, (ax_train, ax_eval) = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("loss", "recon"):
        x, y = series(key)
        ax_train.plot(x, y, label=key)
    ax_train.set_xlabel("step")
    ax_train.set_title("training (loss is a surrogate, not a bound)")
    ax_train.legend()
    for key in ("valid_nll", "test_nll"):
        x, y = series(key)
        ax_eval.plot(x, y, marker="o", label=key)
    ax_eval.set_xlabel("step")
    ax_eval.set_title("discrete-model NLL (nats, AIS log Z)")
    ax_eval.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
