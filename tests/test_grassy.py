"""Grassy-digits data set: shapes, ranges, operators, independence and splits.

Most tests run on small fixture files written to a temporary folder (a 512x512 random
texture and 60 synthetic digits), so they check the loader's logic without the real
data; one test reads the real files when they are present.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pytest
import torch
from paper import grassy
from paper.grassy import (
    GRASS_ROWS,
    default_data_dir,
    digit_indices,
    grassy_problem,
    grassy_view,
    load_grass,
    load_mnist,
)

from galprism.errors import ConfigError, InputError
from galprism.operators import SourceSum, Zero

N_DIGITS = 60


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    digits = rng.integers(0, 256, size=(N_DIGITS, 784))
    labels = np.arange(N_DIGITS) % 10
    rows = np.concatenate([digits, labels[:, None]], axis=1)
    with gzip.open(folder / "mnist_5k.csv.gz", "wt") as fh:
        np.savetxt(fh, rows, fmt="%d", delimiter=",")
    texture = rng.random((512, 512))
    mpimg.imsave(folder / "grass.png", texture, cmap="gray", vmin=0.0, vmax=1.0)
    return folder


def test_shapes_ranges_and_operator(data_dir):
    """Documented shapes, values in [0, 1], the digit slot empty in the grass view, and
    y = operator(x) + noise with the requested noise level; anything else breaks EM."""
    views = grassy_problem(200, 300, size=28, amplitude=0.5, noise_sigma=0.01, data_dir=data_dir)
    for name, n in (("grass", 200), ("mixed", 300)):
        view = views[name]
        assert view.x.shape == (n, 2, 1, 28, 28) and view.y.shape == (n, 1, 28, 28)
        assert view.x.dtype == torch.float32 and view.y.dtype == torch.float32
        assert float(view.x.min()) >= 0.0 and float(view.x.max()) <= 1.0
        assert isinstance(view.operator, SourceSum) and view.operator.n_sources == 2
        assert view.sources == ("grass", "digit") and view.noise_var == pytest.approx(1e-4)
        resid = view.y - view.operator.apply(view.x)
        assert float(resid.std()) == pytest.approx(0.01, rel=0.05), "noise level is not noise_sigma"
        assert abs(float(resid.mean())) < 1e-3
    grass, mixed = views["grass"], views["mixed"]
    assert isinstance(grass.operator.ops[1], Zero) and float(grass.x[:, 1].abs().max()) == 0.0
    assert torch.all(grass.labels == -1) and torch.all(mixed.labels >= 0)
    # The mixed view really holds grass + 0.5 x digit.
    expected = mixed.x[:, 0] + 0.5 * mixed.x[:, 1]
    assert torch.allclose(mixed.operator.apply(mixed.x), expected, atol=1e-6)
    assert torch.allclose(mixed.sources_in_mixture.sum(1), expected, atol=1e-6)


def test_digits_and_crops_are_the_files_content(data_dir):
    """The truth must be the file's digit (/255) and the texture crop at the recorded
    origin, so that downstream metrics compare against real pixels."""
    view = grassy_view("mixed", 20, size=28, data_dir=data_dir)
    images, labels = load_mnist(data_dir)
    texture = load_grass(data_dir)
    for i in range(20):
        j = int(view.digit_index[i])
        assert torch.equal(view.x[i, 1, 0], images[j]) and int(view.labels[i]) == int(labels[j])
        r, c = (int(t) for t in view.crop_origin[i])
        assert torch.equal(view.x[i, 0, 0], texture[r : r + 28, c : c + 28])


def test_digits_are_padded_or_resampled_to_the_crop_size(data_dir):
    """Digits keep their pixels (zero padding) for larger crops and their mean (area
    resampling) for smaller ones."""
    big = grassy_view("mixed", 5, size=32, data_dir=data_dir, seed=3)
    images, _ = load_mnist(data_dir)
    for i in range(5):
        digit = images[int(big.digit_index[i])]
        assert torch.equal(big.x[i, 1, 0, 2:30, 2:30], digit)
        assert float(big.x[i, 1, 0].sum()) == pytest.approx(float(digit.sum()), rel=1e-6)
    small = grassy_view("mixed", 5, size=14, data_dir=data_dir, seed=3)
    for i in range(5):
        digit = images[int(small.digit_index[i])]
        assert float(small.x[i, 1, 0].mean()) == pytest.approx(float(digit.mean()), rel=1e-5)


@pytest.mark.parametrize("factor", [2, 4])
def test_downsampled_observations_are_block_means(data_dir, factor):
    """Coarse observations must equal the block mean of the fine mixture (plus noise),
    and the operator must say exactly that."""
    view = grassy_view("mixed", 50, size=32, downsample=factor, noise_sigma=0.0, data_dir=data_dir)
    fine = view.sources_in_mixture.sum(1)
    expected = torch.nn.functional.avg_pool2d(fine, factor)
    assert view.y.shape == (50, 1, 32 // factor, 32 // factor)
    assert torch.allclose(view.y, expected, atol=1e-6)
    assert torch.allclose(view.operator.apply(view.x), expected, atol=1e-6)


def test_views_are_independent_and_reproducible(data_dir):
    """The two views must not reuse crops or noise (the reference code's defect), while
    the same seed reproduces every draw and another seed changes them."""
    a = grassy_problem(400, 400, data_dir=data_dir, seed=5)
    b = grassy_problem(400, 400, data_dir=data_dir, seed=5)
    c = grassy_problem(400, 400, data_dir=data_dir, seed=6)
    for name in ("grass", "mixed"):
        assert torch.equal(a[name].y, b[name].y) and torch.equal(
            a[name].crop_origin, b[name].crop_origin
        )
        assert not torch.equal(a[name].y, c[name].y)
    g, m = a["grass"], a["mixed"]
    same_origin = (g.crop_origin == m.crop_origin).all(dim=1).float().mean()
    assert float(same_origin) < 0.01, "views share crop positions"
    corr = np.corrcoef(g.x[:, 0].flatten().numpy(), m.x[:, 0].flatten().numpy())[0, 1]
    assert abs(corr) < 0.05, f"grass crops of the two views are correlated ({corr:.3f})"
    noise_g = (g.y - g.operator.apply(g.x)).flatten()
    noise_m = (m.y - m.operator.apply(m.x)).flatten()
    assert abs(float(np.corrcoef(noise_g.numpy(), noise_m.numpy())[0, 1])) < 0.02, (
        "views share noise"
    )


def test_splits_are_disjoint(data_dir):
    """Train, validation and test must use disjoint digits and disjoint rows of the
    texture; otherwise test scores are measured on training material."""
    pools = {s: set(digit_indices(N_DIGITS, s).tolist()) for s in ("train", "val", "test")}
    assert (
        not (pools["train"] & pools["test"])
        and not (pools["train"] & pools["val"])
        and not (pools["val"] & pools["test"])
    )
    assert set().union(*pools.values()) == set(range(N_DIGITS))
    assert torch.equal(digit_indices(N_DIGITS, "test", 1), digit_indices(N_DIGITS, "test", 1))
    assert not torch.equal(digit_indices(N_DIGITS, "test", 0), digit_indices(N_DIGITS, "test", 1))
    for split in ("train", "val", "test"):
        view = grassy_view("mixed", 100, split=split, size=28, data_dir=data_dir)
        assert set(view.digit_index.tolist()) <= pools[split]
        lo, hi = GRASS_ROWS[split]
        rows = view.crop_origin[:, 0]
        assert int(rows.min()) >= lo and int(rows.max()) + 28 <= hi, (
            f"{split} crops leave their band"
        )


def test_bad_requests_give_one_line_errors(data_dir, tmp_path):
    """Missing files, unknown views/splits and impossible sizes are refused with a message
    naming the file or the parameter."""
    with pytest.raises(InputError, match="mnist_5k.csv.gz: grassy-digits data file not found"):
        load_mnist(tmp_path)
    with pytest.raises(ConfigError, match="unknown split 'dev'"):
        grassy_view("mixed", 3, split="dev", data_dir=data_dir)
    with pytest.raises(ConfigError, match="unknown view"):
        grassy_view("digits", 3, data_dir=data_dir)
    with pytest.raises(ConfigError, match="size must be an integer between 4 and 96"):
        grassy_view("grass", 3, split="test", size=100, data_dir=data_dir)
    with pytest.raises(ConfigError, match="dividing size=28"):
        grassy_view("grass", 3, downsample=3, data_dir=data_dir)
    with pytest.raises(ConfigError, match="noise_sigma"):
        grassy_view("grass", 3, noise_sigma=-1.0, data_dir=data_dir)
    bad = tmp_path / "bad"
    bad.mkdir()
    with gzip.open(bad / "mnist_5k.csv.gz", "wt") as fh:
        fh.write("1,2,3\n")
    with pytest.raises(InputError, match="expected 785 columns") as info:
        load_mnist(bad)
    assert "\n" not in str(info.value)


def test_image_folder_comes_from_the_environment_only(monkeypatch, tmp_path):
    """$GALPRISM_IMAGE_DATA wins, else $GALPRISM_DATA_DIR/images; with neither the error
    names both instead of guessing a folder."""
    monkeypatch.setenv(grassy.ENV_VAR, str(tmp_path))
    monkeypatch.setenv(grassy.DATA_ENV_VAR, "/elsewhere")
    assert default_data_dir() == tmp_path
    monkeypatch.delenv(grassy.ENV_VAR)
    assert default_data_dir() == Path("/elsewhere") / "images"
    monkeypatch.delenv(grassy.DATA_ENV_VAR)
    with pytest.raises(ConfigError, match="GALPRISM_IMAGE_DATA.*GALPRISM_DATA_DIR"):
        default_data_dir()


def test_real_files_match_their_description(shared_data, monkeypatch):
    """The real files must be what the data folder's README says: 5,000 digits, 500 per
    class, and a 512x512 texture in [0, 1]; the data set's splits depend on it. They are
    found through $GALPRISM_DATA_DIR/images, the default folder."""
    monkeypatch.delenv(grassy.ENV_VAR, raising=False)
    assert default_data_dir() == shared_data / "images"
    assert (default_data_dir() / grassy.MNIST_FILE).is_file()
    images, labels = load_mnist()
    assert images.shape == (5000, 28, 28) and float(images.max()) <= 1.0
    assert torch.bincount(labels).tolist() == [500] * 10
    texture = load_grass()
    assert (
        texture.shape == (512, 512) and 0.0 <= float(texture.min()) and float(texture.max()) <= 1.0
    )
