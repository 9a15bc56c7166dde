"""Linear operators: adjoint identities, flux conservation, batching, validation."""

import pytest
import torch
from scipy.signal import convolve2d

from galprism.errors import PSFError, ShapeError
from galprism.operators import (
    Composition,
    Convolve,
    Downsample,
    Identity,
    LowRankUpdate,
    Mask,
    MatrixOperator,
    Scale,
    SourceSum,
    Weight,
    Zero,
    validate_psf,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = [torch.float32, torch.float64]
TOL = {torch.float32: 1e-4, torch.float64: 1e-10}


def _dot(a, b):
    return (a.double() * b.double()).sum()


def _random_ops(gen, b):
    """Every operator kind on random shapes, shared and batched parameters."""
    c = int(torch.randint(1, 4, (1,), generator=gen))
    h = 2 * int(torch.randint(3, 9, (1,), generator=gen))
    w = 2 * int(torch.randint(3, 9, (1,), generator=gen))
    shape = (c, h, w)
    kh, kw = (2 * int(torch.randint(1, 4, (1,), generator=gen)) + 1 for _ in range(2))

    def psf(*lead):
        k = torch.rand(*lead, kh, kw, generator=gen, dtype=torch.float64) + 0.1
        k[..., kh // 2, kw // 2] += 2.0  # keep the centroid near the center
        return k

    coarse = (c, h // 2, w // 2)
    conv_b = Convolve(psf(b, c), shape)
    ops = {
        "identity": Identity(shape),
        "zero": Zero(shape, coarse),
        "mask_shared": Mask(torch.rand(shape, generator=gen) > 0.3),
        "mask_batched": Mask(torch.rand(b, *shape, generator=gen) > 0.3, shape),
        "scale_shared": Scale(1.7, shape),
        "scale_batched": Scale(torch.rand(b, generator=gen), shape),
        "conv_one_kernel": Convolve(psf(), shape),
        "conv_per_band": Convolve(psf(c), shape),
        "conv_per_obs": conv_b,
        "downsample": Downsample(2, shape),
        "matrix_shared": MatrixOperator(torch.randn(3, 5, generator=gen)),
        "matrix_batched": MatrixOperator(torch.randn(b, 3, 5, generator=gen)),
        "weight_shared": Weight(torch.rand(shape, generator=gen, dtype=torch.float64), shape),
        "weight_batched": Weight(torch.rand(b, *shape, generator=gen, dtype=torch.float64), shape),
        "low_rank_update": LowRankUpdate(
            torch.linalg.qr(torch.randn(b, c * h * w, 3, generator=gen, dtype=torch.float64))[0],
            torch.rand(b, 3, generator=gen, dtype=torch.float64),
            shape,
        ),
    }
    view = Composition(
        [Mask(torch.rand(b, *coarse, generator=gen) > 0.2, coarse), Downsample(2, shape), conv_b]
    )
    ops["composition"] = Composition([view, Scale(torch.rand(b, generator=gen), shape)])
    ops["matmul_syntax"] = Downsample(2, shape) @ Convolve(psf(c), shape) @ Scale(0.3, shape)
    ops["source_sum"] = SourceSum(
        [view, Composition([view, Scale(0.5, shape)]), Zero(shape, coarse)]
    )
    return ops


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_adjoint_identity_every_operator(device, dtype, seed):
    """<A x, y> == <x, A^T y>: a wrong adjoint would bias every posterior sample."""
    gen = torch.Generator().manual_seed(seed)
    b = 3
    for name, op in _random_ops(gen, b).items():
        x = torch.randn(b, *op.in_shape, generator=gen, dtype=dtype).to(device)
        y = torch.randn(b, *op.out_shape, generator=gen, dtype=dtype).to(device)
        lhs, rhs = _dot(op.apply(x), y), _dot(x, op.adjoint(y))
        scale = max(1.0, abs(float(lhs)))
        assert abs(float(lhs - rhs)) <= TOL[dtype] * scale * 10, (
            f"{name}: {float(lhs)} != {float(rhs)}"
        )
        assert op.apply(x).dtype == dtype and op.apply(x).device.type == device, name


def test_convolution_matches_direct_same_mode_convolution():
    """FFT convolution must equal zero-padded direct convolution (no wrap-around)."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 1, 13, 10, generator=gen, dtype=torch.float64)
    k = torch.rand(7, 5, generator=gen, dtype=torch.float64)
    k[3, 2] += 2
    op = Convolve(k, (1, 13, 10))
    k = k / k.sum()
    for i in range(2):
        ref = convolve2d(x[i, 0].numpy(), k.numpy(), mode="same")
        assert torch.allclose(op.apply(x)[i, 0], torch.from_numpy(ref), atol=1e-12)


def test_convolution_and_downsampling_conserve_flux():
    """A point source far from the edges keeps its flux through PSF and block sum."""
    shape = (2, 16, 16)
    x = torch.zeros(1, *shape, dtype=torch.float64)
    x[0, :, 8, 8] = torch.tensor([3.0, 5.0])
    psf = torch.rand(2, 5, 5, dtype=torch.float64) + 0.5
    op = Downsample(4, shape) @ Convolve(psf, shape)
    assert torch.allclose(
        op.apply(x).sum(dim=(-2, -1)), torch.tensor([[3.0, 5.0]], dtype=torch.float64)
    )


def test_take_selects_observations_and_rejects_batch_mismatch():
    """take() must pick each observation's own parameters; wrong batch sizes must fail loudly."""
    shape = (1, 4, 4)
    amps = torch.tensor([1.0, 2.0, 3.0])
    op = Scale(amps, shape)
    idx = torch.tensor([2, 2, 0])
    x = torch.ones(3, *shape)
    assert torch.equal(op.take(idx).apply(x)[:, 0, 0, 0], torch.tensor([3.0, 3.0, 1.0]))
    with pytest.raises(ShapeError, match="batch of 2"):
        op.apply(torch.ones(2, *shape))
    with pytest.raises(ShapeError, match="expected"):
        op.apply(torch.ones(3, 1, 4, 5))


def test_shape_errors_name_the_operator():
    """Inconsistent compositions are refused with a message naming both operators."""
    with pytest.raises(ShapeError, match="Downsample"):
        Composition([Mask(torch.ones(1, 4, 4)), Downsample(2, (1, 4, 4))])
    with pytest.raises(ShapeError, match="not divisible"):
        Downsample(3, (1, 4, 4))
    with pytest.raises(ShapeError, match="disagree"):
        SourceSum([Identity((1, 4, 4)), Identity((1, 2, 2))])


@pytest.mark.parametrize(
    "psf, message",
    [
        (torch.ones(4, 5), "even"),
        (torch.tensor([[1.0, float("nan"), 1.0]] * 3), "non-finite"),
        (-torch.ones(3, 3), "cannot be normalised"),
        (torch.nn.functional.pad(torch.ones(3, 3), (6, 0, 0, 0)), "off-center"),
        (torch.ones(5), "2-D"),
    ],
)
def test_invalid_psfs_are_rejected_with_reason(psf, message):
    """Each PSF defect gets its own explanation instead of a silently wrong model."""
    with pytest.raises(PSFError, match=message):
        validate_psf(psf, "test.fits[PSF]")


def test_psf_normalisation_is_reported():
    """An unnormalised PSF is rescaled to unit flux and the caller is told."""
    psf, renorm = validate_psf(torch.ones(3, 3) * 2)
    assert renorm and torch.isclose(psf.sum(), torch.tensor(1.0, dtype=torch.float64))
    psf, renorm = validate_psf(torch.ones(3, 3) / 9)
    assert not renorm


def test_psf_larger_than_image_is_an_error():
    """A PSF that cannot fit the image is refused rather than cropped silently."""
    with pytest.raises(PSFError, match="larger"):
        Convolve(torch.ones(41, 41), (1, 8, 8))


def test_low_rank_update_repeated_rows_share_the_basis_and_match_a_gathered_copy():
    """A posterior sampler repeats each observation once per sample: the taken operator must
    keep one basis (no per-row copy, which reaches hundreds of MB) and give exactly what an
    operator built from the gathered rows gives, also when taken again (resampling)."""
    from galprism.operators import LowRankUpdate

    g = torch.Generator().manual_seed(3)
    b, n, k, s = 3, 16, 4, 5
    basis = torch.linalg.qr(torch.randn(b, n, k, generator=g, dtype=torch.float64))[0]
    gains = torch.rand(b, k, generator=g, dtype=torch.float64)
    op = LowRankUpdate(basis, gains, (4, 4))
    rows = torch.arange(b).repeat_interleave(s)
    taken = op.take(rows)
    assert taken.basis.data_ptr() == basis.data_ptr() and taken.batch_size == b * s
    gathered = LowRankUpdate(basis[rows], gains[rows], (4, 4))
    x = torch.randn(b * s, 4, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(taken.apply(x), gathered.apply(x), rtol=1e-12, atol=1e-12)
    again = torch.tensor([14, 0, 7, 7])
    torch.testing.assert_close(
        taken.take(again).apply(x[again]),
        gathered.take(again).apply(x[again]),
        rtol=1e-12,
        atol=1e-12,
    )
