"""Figures: pixel-exact upscaled grids with captions, and curves of meaningful quantities only."""

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.image import imread

from dvae_q.evaluation import figures

SIDE, SCALE = 28, figures.SCALE
# pixels are written as 8-bit grey, rounded: one read back is within half a level of its value
LEVEL = 0.5 / 255 + 1e-6


def images(n, seed=0):
    return np.random.default_rng(seed).random((n, SIDE * SIDE))


def grey(png):
    """The PNG as one grey channel, after checking that it is grey (R = G = B)."""
    assert np.allclose(png[..., 0], png[..., 1]) and np.allclose(png[..., 1], png[..., 2])
    return png[..., 0]


# --- image grids ----------------------------------------------------------------------------


def test_grid_is_upscaled_pixel_exact(tmp_path):
    x = images(7)
    path = tmp_path / "grid.png"
    figures.save_image_grid(x, path)
    png = grey(imread(path))
    cols, rows = 3, 3  # 7 images: the smallest square grid holding them
    assert png.shape == ((rows * (SIDE + 1) + 1) * SCALE, (cols * (SIDE + 1) + 1) * SCALE)
    for i in (0, 4, 6):  # every image sits at its cell, each pixel a SCALE × SCALE block
        r, c = divmod(i, cols)
        top, left = (1 + r * (SIDE + 1)) * SCALE, (1 + c * (SIDE + 1)) * SCALE
        cell = png[top : top + SIDE * SCALE, left : left + SIDE * SCALE]
        want = np.kron(x[i].reshape(SIDE, SIDE), np.ones((SCALE, SCALE)))
        assert np.abs(cell - want).max() <= LEVEL
    assert np.allclose(png[:SCALE, :], figures.GAP_GREY, atol=1 / 255)  # separators are grey


def test_grid_caption_is_drawn_under_the_grid(tmp_path):
    caption = "step 1,500 · dvaes_power K=5 · sampler neal"
    fig = figures.sample_grid_figure(images(100), caption=caption)
    assert [t.get_text() for t in fig.texts] == [caption]
    path = tmp_path / "grid.png"
    figures.save_image_grid(images(100), path, caption=caption)
    png = grey(imread(path))
    height = (10 * (SIDE + 1) + 1) * SCALE
    band = png[height:]
    assert band.shape[0] == figures.CAPTION_LINE_PX + 2 * figures.CAPTION_PAD_PX  # one line
    assert band.max() == 1.0 and band.min() < 0.3  # white band with dark text in it


def test_long_caption_wraps_onto_more_lines():
    fig = figures.sample_grid_figure(images(4), caption="word " * 40)
    assert fig.texts[0].get_text().count("\n") >= 2


def test_reconstructions_beside_their_inputs(tmp_path):
    x, r = images(6, seed=1), images(6, seed=2)
    path = tmp_path / "rec.png"
    figures.save_reconstructions(x, r, path, caption="step 40 · test images")
    fig = figures.reconstructions_figure(x, r, caption="step 40 · test images")
    text = fig.texts[0].get_text().replace("\n", " ")
    assert "step 40 · test images" in text and "input (left), reconstruction (right)" in text
    png = grey(imread(path))
    gap, pair_width = 3, 2 * SIDE + 1
    top = left = gap * SCALE  # first pair, top-left
    block = np.ones((SCALE, SCALE))
    got_input = png[top : top + SIDE * SCALE, left : left + SIDE * SCALE]
    right = left + (SIDE + 1) * SCALE
    got_recon = png[top : top + SIDE * SCALE, right : right + SIDE * SCALE]
    assert np.abs(got_input - np.kron(x[0].reshape(SIDE, SIDE), block)).max() <= LEVEL
    assert np.abs(got_recon - np.kron(r[0].reshape(SIDE, SIDE), block)).max() <= LEVEL
    cols = 2  # 6 pairs twice as wide as high: a 2 × 3 grid is roughly square
    assert png.shape[1] == (cols * (pair_width + gap) + gap) * SCALE


def test_reconstructions_need_matching_shapes():
    with pytest.raises(ValueError, match="must both be"):
        figures.save_reconstructions(images(3), images(4), "unused.png")


# --- curves ---------------------------------------------------------------------------------


def csv_rows(log_z_from=None):
    """metrics.csv-shaped rows (strings, '' when absent): training every 10 steps, evaluation
    at steps 50 and 100 merged into that step's row. The loss is a surrogate that jumps."""
    rows = []
    for step in range(10, 101, 10):
        row = {"step": str(step), "loss": str(-53.25 if step < 50 else 127.75),
               "recon": str(200.0 - step), "kl": "", "approx_bound": "", "log_z": "",
               "log_z_stderr": "", "valid_nll": "", "test_nll": ""}
        if log_z_from is not None and step >= log_z_from:
            row.update(kl="12.5", approx_bound=str(215.0 - step))
        if log_z_from is not None and step % 50 == 0:
            row.update(log_z="196.8", log_z_stderr="0.13", valid_nll=str(150.0 - step / 10),
                       test_nll=str(151.0 - step / 10))
        rows.append(row)
    return rows


def lines_by_label(ax):
    return {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}


def test_no_bound_without_a_log_z_estimate():
    rows = csv_rows(log_z_from=None)
    for row in rows:
        row["approx_bound"] = "180.0"  # even if a bound value were there, without log Z: none
    fig = figures.curves_figure(rows)
    train = lines_by_label(fig.axes[0])
    assert list(train) == ["reconstruction −log p(x|ζ)"]
    assert all(not lines_by_label(ax) for ax in fig.axes[1:])
    assert [t.get_text() for t in fig.axes[2].texts] == ["no evaluation yet"]


def test_bound_only_from_the_first_log_z_and_labelled_as_approximate():
    fig = figures.curves_figure(csv_rows(log_z_from=40), eval_k={"valid": 100, "test": 100})
    train = lines_by_label(fig.axes[0])
    bound = train[figures.BOUND_LABEL]
    assert min(bound.get_xdata()) == 50  # rows before the first AIS log Z are left out
    assert "approximate bound with AIS log Z" in figures.BOUND_LABEL


def test_the_loss_is_never_drawn():
    fig = figures.curves_figure(csv_rows(log_z_from=40), eval_k={"valid": 100, "test": 100})
    for ax in fig.axes:
        for line in ax.get_lines():
            assert "loss" not in line.get_label()
            assert not set(np.asarray(line.get_ydata(), float)) & {-53.25, 127.75}


def test_axes_are_labelled_and_nll_curves_name_split_and_k():
    fig = figures.curves_figure(
        csv_rows(log_z_from=40), eval_k={"valid": 100, "test": 100}, final={"test": (100, 139.2, 4000)}
    )
    FigureCanvasAgg(fig).draw()
    for ax in fig.axes:
        assert ax.get_xlabel() == "training step" and ax.get_ylabel() == "nats"
        ticks = ax.get_xticks()
        assert np.all(ticks == np.round(ticks))  # integer steps only
    nll = lines_by_label(fig.axes[2])
    assert set(nll) == {"valid NLL, K=100", "test NLL, K=100",
                        "final test NLL, K=4000 (best-validation weights)"}
    assert list(nll["valid NLL, K=100"].get_xdata()) == [50, 100]
    log_z = fig.axes[1]
    assert "AIS" in log_z.get_title()
    assert [t.get_text() for t in fig.axes[2].get_legend().get_texts()] == list(nll)


def test_nll_without_a_known_k_says_so():
    fig = figures.curves_figure(csv_rows(log_z_from=40), eval_k={"valid": 100})
    assert "test NLL, K not recorded" in lines_by_label(fig.axes[2])


def test_save_curves_writes_a_png(tmp_path):
    path = tmp_path / "curves.png"
    figures.save_curves(csv_rows(log_z_from=40), path, eval_k={"valid": 100, "test": 100},
                        title="binarized MNIST 1-layer-nonlin dvaes_power K=5 · sampler neal")
    png = imread(path)
    assert png.shape[:2] == (440, 1500)
    assert figures.save_curves([], tmp_path / "empty.png") is None  # an empty run still draws
    assert imread(tmp_path / "empty.png").shape[:2] == (440, 1500)
