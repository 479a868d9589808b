"""PNG figures people read: a run's curves, grids of decoded samples, reconstructions.

Only quantities with a meaning are drawn, in nats against the integer training step:

* training terms: the reconstruction −log p(x|ζ), and, once an AIS log Z exists, the KL
  estimate and the approximate bound (−ELBO or −IW bound, computed with the latest AIS log Z).
  The training loss is a surrogate whose value means nothing (−Σ sg(w̃)ℓ, or an ELBO with a
  log Z surrogate), so it is never drawn;
* the prior's AIS log Z with its standard error;
* validation/test NLL of the discrete model, each curve labelled with its split and K.

Image grids are upscaled by whole pixels (nearest neighbour, `SCALE` per image pixel) so that
28×28 digits are readable, and carry a caption (step, method, sampler) under the grid.

Metric rows are dicts as read from metrics.csv (strings, '' for absent) or as written (numbers,
None); evaluation values may sit in the same row as the step's training values or in a row of
their own.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

SIDE = 28  # images are rows of SIDE × SIDE pixels
SCALE = 3  # screen pixels per image pixel
GAP_GREY = 0.5  # separators between images: neither ink (1) nor background (0)
DPI = 100
CAPTION_LINE_PX = 16  # one caption line at 10 pt and DPI 100, with leading
CAPTION_PAD_PX = 6
BOUND_LABEL = "approximate bound with AIS log Z"


# --- curves ---------------------------------------------------------------------------------


def _number(row: dict, key: str) -> float | None:
    value = row.get(key)
    if value is None or value == "":
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def series(rows: list[dict], key: str, since: int | None = None) -> tuple[list[int], list[float]]:
    """(steps, values) of every row holding `key`, optionally from step `since` on."""
    points = []
    for row in rows:
        step, value = _number(row, "step"), _number(row, key)
        if step is not None and value is not None and (since is None or step >= since):
            points.append((int(step), value))
    return [p[0] for p in points], [p[1] for p in points]


def first_log_z_step(rows: list[dict]) -> int | None:
    """The step of the first AIS log Z estimate, from which the bound has a meaning."""
    steps, _ = series(rows, "log_z")
    return min(steps) if steps else None


def _step_axis(ax, title: str) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("training step")
    ax.set_ylabel("nats")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{int(x):,}"))
    ax.ticklabel_format(axis="y", useOffset=False)  # log Z ≈ 200 ± 0.01 reads as itself
    ax.grid(alpha=0.3)


def _finish_axis(ax, empty_message: str) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, empty_message, ha="center", va="center", transform=ax.transAxes)


def _plot_training_terms(ax, rows: list[dict]) -> None:
    _step_axis(ax, "training terms, per data point")
    since = first_log_z_step(rows)
    x, y = series(rows, "recon")
    if x:
        ax.plot(x, y, label="reconstruction −log p(x|ζ)")
    if since is not None:  # KL and bound use log Z: meaningless before the first estimate
        for key, label in (("kl", "KL estimate (with AIS log Z)"), ("approx_bound", BOUND_LABEL)):
            x, y = series(rows, key, since=since)
            if x:
                ax.plot(x, y, label=label)
    _finish_axis(ax, "no training rows yet")


def _plot_log_z(ax, rows: list[dict]) -> None:
    _step_axis(ax, "prior log Z (AIS)")
    points = [
        (int(_number(r, "step")), _number(r, "log_z"), _number(r, "log_z_stderr") or 0.0)
        for r in rows
        if _number(r, "step") is not None and _number(r, "log_z") is not None
    ]
    if points:
        x, y, err = zip(*points)
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label="AIS log Z ± stderr")
    _finish_axis(ax, "no AIS estimate yet")


def _k_label(eval_k: dict | None, split: str) -> str:
    k = (eval_k or {}).get(split)
    return f"K={k}" if k is not None else "K not recorded"


def _plot_nll(ax, rows: list[dict], eval_k: dict | None, final: dict | None) -> None:
    _step_axis(ax, "discrete-model NLL (with AIS log Z)")
    for split in ("valid", "test"):
        x, y = series(rows, f"{split}_nll")
        if x:
            ax.plot(x, y, marker="o", label=f"{split} NLL, {_k_label(eval_k, split)}")
    for split, (step, nll, k) in (final or {}).items():
        ax.plot([step], [nll], marker="*", markersize=12, linestyle="none",
                label=f"final {split} NLL, K={k} (best-validation weights)")
    _finish_axis(ax, "no evaluation yet")


def curves_figure(rows: list[dict], eval_k: dict | None = None, final: dict | None = None,
                  title: str | None = None) -> Figure:
    """The curves of a run as a matplotlib Figure (see `save_curves`)."""
    fig = Figure(figsize=(15, 4.4), dpi=DPI)
    ax_train, ax_log_z, ax_nll = fig.subplots(1, 3)
    _plot_training_terms(ax_train, rows)
    _plot_log_z(ax_log_z, rows)
    _plot_nll(ax_nll, rows, eval_k, final)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def save_curves(rows: list[dict], path: Path, eval_k: dict | None = None,
                final: dict | None = None, title: str | None = None) -> None:
    """Write the curves of a run as a PNG.

    ``eval_k`` maps each split to the K of its NLL curve, e.g. ``{"valid": 100, "test": 100}``;
    ``final`` maps a split to ``(step, nll, K)`` of the final evaluation, drawn as one marker;
    ``title`` names the run (dataset, structure, method, sampler).
    """
    curves_figure(rows, eval_k, final, title).savefig(path, dpi=DPI)


# --- image grids ----------------------------------------------------------------------------


def tile(images: np.ndarray, cols: int | None = None, gap: int = 1) -> np.ndarray:
    """(n, h, w) images in [0, 1] as one (H, W) grid, `gap` grey pixels around each image."""
    images = np.clip(np.asarray(images, dtype=np.float64), 0.0, 1.0)
    n, h, w = images.shape
    cols = cols or max(1, math.ceil(math.sqrt(n * h / w)))  # a roughly square grid
    rows = math.ceil(n / cols)
    grid = np.full((rows * (h + gap) + gap, cols * (w + gap) + gap), GAP_GREY)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        top, left = gap + r * (h + gap), gap + c * (w + gap)
        grid[top : top + h, left : left + w] = image
    return grid


def upscale(grid: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour upscaling by a whole factor: each pixel becomes scale × scale."""
    return np.repeat(np.repeat(grid, scale, axis=0), scale, axis=1)


def image_figure(pixels: np.ndarray, caption: str | None = None) -> Figure:
    """A Figure showing `pixels` (H, W) in [0, 1] at exactly one figure pixel each, with the
    caption wrapped in a white band underneath."""
    h, w = pixels.shape
    lines = textwrap.wrap(caption, width=max(20, w // 7)) if caption else []
    band = CAPTION_LINE_PX * len(lines) + 2 * CAPTION_PAD_PX if lines else 0
    fig = Figure(figsize=(w / DPI, (h + band) / DPI), dpi=DPI, facecolor="white")
    # 8-bit RGB drawn as is: no colour map or resampling between the values and the PNG
    rgb = np.repeat(np.round(np.clip(pixels, 0.0, 1.0) * 255).astype(np.uint8)[..., None], 3, axis=2)
    fig.figimage(rgb, xo=0, yo=band, origin="upper")
    if lines:
        fig.text(0.5, band / 2 / (h + band), "\n".join(lines), ha="center", va="center",
                 fontsize=10, linespacing=1.2)
    return fig


def sample_grid_figure(images: np.ndarray, side: int = SIDE, caption: str | None = None,
                       scale: int = SCALE) -> Figure:
    """The figure `save_image_grid` writes."""
    grid = tile(np.asarray(images).reshape(-1, side, side))
    return image_figure(upscale(grid, scale), caption)


def save_image_grid(images: np.ndarray, path: Path, side: int = SIDE, caption: str | None = None,
                    scale: int = SCALE) -> None:
    """Tile (n, side*side) images in [0, 1] into a square grid, upscaled `scale`× per pixel,
    with `caption` underneath (e.g. "step 1,500 · dvaes_power K=5 · sampler neal")."""
    sample_grid_figure(images, side, caption, scale).savefig(path, dpi=DPI)


def reconstruction_pairs(inputs: np.ndarray, reconstructions: np.ndarray,
                         side: int = SIDE) -> np.ndarray:
    """(n, side, 2·side + 1) images: each input, a grey column, its reconstruction."""
    x = np.asarray(inputs, dtype=np.float64)
    r = np.asarray(reconstructions, dtype=np.float64)
    if x.shape != r.shape or x.ndim != 2 or x.shape[1] != side * side:
        raise ValueError(
            f"inputs {x.shape} and reconstructions {r.shape} must both be (n, {side * side})"
        )
    x, r = x.reshape(-1, side, side), r.reshape(-1, side, side)
    return np.concatenate([x, np.full((len(x), side, 1), GAP_GREY), r], axis=2)


def reconstructions_figure(inputs, reconstructions, side: int = SIDE, caption: str | None = None,
                           scale: int = SCALE) -> Figure:
    """The figure `save_reconstructions` writes."""
    grid = tile(reconstruction_pairs(inputs, reconstructions, side), gap=3)
    note = "each pair: input (left), reconstruction (right)"
    return image_figure(upscale(grid, scale), f"{caption} · {note}" if caption else note)


def save_reconstructions(inputs: np.ndarray, reconstructions: np.ndarray, path: Path,
                         caption: str | None = None, side: int = SIDE, scale: int = SCALE) -> None:
    """A grid of (input, reconstruction) pairs, both (n, side*side) in [0, 1], upscaled
    `scale`× per pixel, with `caption` underneath."""
    reconstructions_figure(inputs, reconstructions, side, caption, scale).savefig(path, dpi=DPI)
