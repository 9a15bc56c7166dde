"""Linear observation operators with exact adjoints.

An observation of view ``a`` is ``y = sum_b A_b x_b + n`` (docs/method.md section 1). Each
``A_b`` here is a composition of small operators (mask, PSF convolution, block-sum
downsampling, amplitude) and :class:`SourceSum` adds the sources up.

Conventions
-----------
* Every operator maps a batch ``x`` of shape ``(B, *in_shape)`` to ``(B, *out_shape)``;
  ``adjoint`` maps back. Images are ``(C, H, W)`` with ``C`` bands, vectors ``(D,)``.
* Parameters are either shared by the whole batch or *batched*, with a leading axis of
  length ``B`` holding one value per observation (``batch_size`` is then ``B``).
  :meth:`LinearOperator.take` selects observations, e.g. to repeat each observation for
  several posterior samples.
* Everything works in linear flux units: convolution conserves flux (PSFs are normalised
  to unit sum), downsampling sums blocks.
* Operators work on CPU and CUDA, in float32 and float64: parameters follow the device
  and dtype of the tensor they are applied to.
* Grids related by anything other than an integer block split (other pixel scales,
  rotations, offsets) are mapped by :class:`Resample` (:mod:`galprism.resample`), a
  precomputed sparse area-overlap matrix, importable from here.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .errors import PSFError, ShapeError

if TYPE_CHECKING:
    from .resample import Resample, integer_factor

__all__ = [
    "LinearOperator",
    "Identity",
    "Zero",
    "Mask",
    "Scale",
    "MatrixOperator",
    "Convolve",
    "Downsample",
    "SelectBands",
    "Composition",
    "SourceSum",
    "Weight",
    "LowRankUpdate",
    "Resample",
    "integer_factor",
    "validate_psf",
]

Shape = tuple[int, ...]


def _as_shape(shape: Sequence[int] | int) -> Shape:
    if isinstance(shape, int):
        return (shape,)
    return tuple(int(s) for s in shape)


class LinearOperator(ABC):
    """A batched linear map ``(B, *in_shape) -> (B, *out_shape)`` with its adjoint.

    Subclasses implement :meth:`_apply` and :meth:`_adjoint`; the public methods check
    shapes so that a mismatch is reported with the operator's name instead of surfacing
    as a broadcasting error deep inside torch.
    """

    in_shape: Shape
    out_shape: Shape
    #: Number of observations the parameters describe, or ``None`` when shared.
    batch_size: int | None = None

    # -- public API -------------------------------------------------------------------
    def apply(self, x: Tensor) -> Tensor:
        """Return ``A x`` for a batch ``x`` of shape ``(B, *in_shape)``."""
        self._check(x, self.in_shape, "input")
        return self._apply(x)

    def adjoint(self, y: Tensor) -> Tensor:
        """Return ``A^T y`` for a batch ``y`` of shape ``(B, *out_shape)``."""
        self._check(y, self.out_shape, "adjoint input")
        return self._adjoint(y)

    def __call__(self, x: Tensor) -> Tensor:
        return self.apply(x)

    def __matmul__(self, other: LinearOperator) -> Composition:
        """``A @ B`` is the composition ``A o B`` (apply ``B`` first)."""
        return Composition([self, other])

    def take(self, index: Tensor) -> LinearOperator:
        """Return the operator of the observations ``index`` (shared ones return self)."""
        return self

    @property
    def name(self) -> str:
        return type(self).__name__

    def __repr__(self) -> str:
        batch = "" if self.batch_size is None else f", batch={self.batch_size}"
        return f"{self.name}({self.in_shape} -> {self.out_shape}{batch})"

    # -- helpers ----------------------------------------------------------------------
    @abstractmethod
    def _apply(self, x: Tensor) -> Tensor: ...

    @abstractmethod
    def _adjoint(self, y: Tensor) -> Tensor: ...

    def _check(self, t: Tensor, shape: Shape, what: str) -> None:
        if tuple(t.shape[1:]) != shape:
            raise ShapeError(
                f"{self!r}: {what} has shape {tuple(t.shape)}, expected (batch, "
                f"{', '.join(map(str, shape))})"
            )
        if self.batch_size is not None and t.shape[0] != self.batch_size:
            raise ShapeError(
                f"{self!r}: {what} has a batch of {t.shape[0]} but the operator holds "
                f"{self.batch_size} observations; use .take(index) to select them"
            )


def _batch_of(param: Tensor, event_ndim: int) -> int | None:
    """Leading batch length of a parameter, or None when it carries no batch axis."""
    return int(param.shape[0]) if param.ndim > event_ndim else None


def _param(param: Tensor, like: Tensor) -> Tensor:
    """Bring a parameter to the device and real dtype of the tensor it multiplies."""
    return param.to(device=like.device, dtype=like.dtype)


def _take(param: Tensor, index: Tensor, batched: bool) -> Tensor:
    return param[index.to(param.device)] if batched else param


class Identity(LinearOperator):
    """The identity on ``shape``."""

    def __init__(self, shape: Sequence[int] | int) -> None:
        self.in_shape = self.out_shape = _as_shape(shape)

    def _apply(self, x: Tensor) -> Tensor:
        return x

    def _adjoint(self, y: Tensor) -> Tensor:
        return y


class Zero(LinearOperator):
    """The zero map: used for a source that a view does not contain."""

    def __init__(self, in_shape: Sequence[int] | int, out_shape: Sequence[int] | int) -> None:
        self.in_shape = _as_shape(in_shape)
        self.out_shape = _as_shape(out_shape)

    def _apply(self, x: Tensor) -> Tensor:
        return x.new_zeros((x.shape[0], *self.out_shape))

    def _adjoint(self, y: Tensor) -> Tensor:
        return y.new_zeros((y.shape[0], *self.in_shape))


class Mask(LinearOperator):
    """Pixel mask: multiplies by 1 where a pixel is observed and 0 where it is not.

    Parameters
    ----------
    mask
        Boolean or 0/1 tensor of the event shape (shared) or ``(B, *shape)`` (batched).
        ``True``/1 marks a *valid* (observed) pixel.
    shape
        Event shape. When omitted the mask is taken as shared and its own shape is the
        event shape; a batched mask needs ``shape``.
    """

    def __init__(self, mask: Tensor, shape: Sequence[int] | None = None) -> None:
        mask = torch.as_tensor(mask)
        if shape is None:
            shape = tuple(mask.shape)
        self.in_shape = self.out_shape = _as_shape(shape)
        event_ndim = len(self.in_shape)
        if tuple(mask.shape[-event_ndim:]) != self.in_shape or mask.ndim > event_ndim + 1:
            raise ShapeError(
                f"Mask: mask has shape {tuple(mask.shape)}, expected {self.in_shape} or "
                f"(batch, {', '.join(map(str, self.in_shape))})"
            )
        self.mask = mask.to(torch.bool) if mask.dtype != torch.bool else mask
        self.batch_size = _batch_of(self.mask, event_ndim)

    def _apply(self, x: Tensor) -> Tensor:
        return x * _param(self.mask, x)

    _adjoint = _apply

    def take(self, index: Tensor) -> Mask:
        return Mask(_take(self.mask, index, self.batch_size is not None), self.in_shape)


class Scale(LinearOperator):
    """Multiplication by a scalar amplitude, shared or one per observation ``(B,)``."""

    def __init__(self, amplitude: float | Tensor, shape: Sequence[int] | int) -> None:
        self.in_shape = self.out_shape = _as_shape(shape)
        a = torch.as_tensor(amplitude, dtype=torch.float64)
        if a.ndim > 1:
            raise ShapeError(f"Scale: amplitude must be a scalar or (batch,), got {tuple(a.shape)}")
        if not torch.isfinite(a).all():
            raise ShapeError("Scale: amplitude contains non-finite values")
        self.amplitude = a
        self.batch_size = int(a.shape[0]) if a.ndim == 1 else None

    def _view(self, x: Tensor) -> Tensor:
        a = _param(self.amplitude, x)
        return a.reshape(-1, *([1] * len(self.in_shape))) if a.ndim == 1 else a

    def _apply(self, x: Tensor) -> Tensor:
        return x * self._view(x)

    _adjoint = _apply

    def take(self, index: Tensor) -> Scale:
        return Scale(_take(self.amplitude, index, self.batch_size is not None), self.in_shape)


class MatrixOperator(LinearOperator):
    """Dense matrix ``(m, n)`` (shared) or ``(B, m, n)`` (one per observation) on vectors."""

    def __init__(self, matrix: Tensor) -> None:
        matrix = torch.as_tensor(matrix)
        if matrix.ndim not in (2, 3):
            raise ShapeError(
                f"MatrixOperator: matrix must be (m, n) or (B, m, n), got {tuple(matrix.shape)}"
            )
        self.matrix = matrix
        self.out_shape = (int(matrix.shape[-2]),)
        self.in_shape = (int(matrix.shape[-1]),)
        self.batch_size = int(matrix.shape[0]) if matrix.ndim == 3 else None

    def _apply(self, x: Tensor) -> Tensor:
        return torch.einsum("...ij,...j->...i", _param(self.matrix, x), x)

    def _adjoint(self, y: Tensor) -> Tensor:
        return torch.einsum("...ij,...i->...j", _param(self.matrix, y), y)

    def take(self, index: Tensor) -> MatrixOperator:
        return MatrixOperator(_take(self.matrix, index, self.batch_size is not None))


class Weight(LinearOperator):
    """Multiplication by per-pixel weights, shared ``shape`` or one set per observation
    ``(B, *shape)`` (e.g. ``1 / sigma`` to whiten the noise)."""

    def __init__(self, weights: Tensor, shape: Sequence[int] | int) -> None:
        self.in_shape = self.out_shape = _as_shape(shape)
        w = torch.as_tensor(weights)
        if (
            tuple(w.shape[-len(self.in_shape) :]) != self.in_shape
            or w.ndim > len(self.in_shape) + 1
        ):
            raise ShapeError(
                f"Weight: weights of shape {tuple(w.shape)} do not match {self.in_shape}"
            )
        if not torch.isfinite(w).all():
            raise ShapeError("Weight: weights contain non-finite values")
        self.weights = w
        self.batch_size = _batch_of(w, len(self.in_shape))

    def _apply(self, x: Tensor) -> Tensor:
        return x * _param(self.weights, x)

    _adjoint = _apply

    def take(self, index: Tensor) -> Weight:
        return Weight(_take(self.weights, index, self.batch_size is not None), self.in_shape)


class LowRankUpdate(LinearOperator):
    """``I - U diag(g) U^T`` on ``shape``, one ``U`` ``(B, n, k)`` with orthonormal columns
    and ``g`` ``(B, k)`` per observation (``n`` = pixels of ``shape``).

    Symmetric; with ``g = 1`` it projects out the span of ``U``. Used to whiten a noise
    covariance ``I + U diag(d) U^T`` (``g = 1 - (1 + d)^(-1/2)``), see
    :mod:`galprism.freeform`.
    """

    def __init__(self, basis: Tensor, gains: Tensor, shape: Sequence[int] | int) -> None:
        self.in_shape = self.out_shape = _as_shape(shape)
        basis, gains = torch.as_tensor(basis), torch.as_tensor(gains)
        n = math.prod(self.in_shape)
        if (
            basis.ndim != 3
            or basis.shape[1] != n
            or gains.shape != (basis.shape[0], basis.shape[2])
        ):
            raise ShapeError(
                f"LowRankUpdate: basis {tuple(basis.shape)} and gains {tuple(gains.shape)} must be "
                f"(B, {n}, k) and (B, k) for images of shape {self.in_shape}"
            )
        self.basis, self.gains = basis, gains
        # Rows per observation: a posterior sampler repeats each observation once per
        # sample (``take`` with ``arange(B).repeat_interleave(S)``); the basis, which can
        # be hundreds of MB per copy, is then shared by reshaping the state instead.
        self.repeats = 1
        self.batch_size = int(basis.shape[0])

    def _apply(self, x: Tensor) -> Tensor:
        u, g = _param(self.basis, x), _param(self.gains, x)
        b, r = u.shape[0], self.repeats
        flat = x.reshape(b, r, -1)
        coef = torch.einsum("bnk,brn->brk", u, flat) * g[:, None]
        return (flat - torch.einsum("bnk,brk->brn", u, coef)).reshape(x.shape)

    _adjoint = _apply

    def take(self, index: Tensor) -> LowRankUpdate:
        i = index.to(self.basis.device)
        b = self.basis.shape[0]
        n = i.numel()
        if self.repeats == 1 and n % b == 0:
            pattern = torch.arange(b, device=i.device).repeat_interleave(n // b)
            if torch.equal(i, pattern):
                out = LowRankUpdate(self.basis, self.gains, self.in_shape)
                out.repeats, out.batch_size = n // b, n
                return out
        if self.repeats > 1:
            i = torch.div(i, self.repeats, rounding_mode="floor")
        return LowRankUpdate(self.basis[i], self.gains[i], self.in_shape)


def validate_psf(
    psf: Tensor,
    name: str = "PSF",
    *,
    normalize: bool = True,
    center_tolerance: float = 1.0,
    sum_tolerance: float = 1e-3,
) -> tuple[Tensor, bool]:
    """Check that a PSF is usable for flux-conserving convolution.

    Parameters
    ----------
    psf
        Kernel of shape ``(kh, kw)`` or ``(C, kh, kw)`` (optionally with a leading batch
        axis), any real dtype.
    name
        How the PSF is called in error messages (e.g. ``"cutout.fits[PSF]"``).
    normalize
        Rescale each kernel to unit sum. When false, a kernel whose sum is off by more
        than ``sum_tolerance`` is an error.
    center_tolerance
        Largest allowed distance, in pixels, between each kernel's centroid and the
        central pixel.
    sum_tolerance
        Relative tolerance on the unit sum below which no rescaling is reported.

    Returns
    -------
    psf, renormalised
        The (possibly renormalised) PSF and whether it had to be renormalised.

    Raises
    ------
    PSFError
        If the kernel is not 2-D per band, has an even size, contains non-finite values,
        has a non-positive sum, or its centroid is off-center.
    """
    psf = torch.as_tensor(psf)
    if psf.ndim < 2:
        raise PSFError(
            f"{name}: a PSF must be 2-D (or one 2-D kernel per band), got shape {tuple(psf.shape)}"
        )
    kh, kw = psf.shape[-2:]
    if kh % 2 == 0 or kw % 2 == 0:
        raise PSFError(
            f"{name}: PSF size {kh}x{kw} is even; galprism needs odd sizes so that the kernel has "
            "a central pixel"
        )
    if not torch.isfinite(psf).all():
        raise PSFError(f"{name}: PSF contains non-finite values (NaN or inf)")
    psf = psf.to(torch.float64)
    total = psf.sum(dim=(-2, -1), keepdim=True)
    if (total <= 0).any():
        raise PSFError(
            f"{name}: PSF sums to {float(total.min()):.3g}, which cannot be normalised to unit flux"
        )
    # Centroid of each kernel relative to the central pixel.
    yy = torch.arange(kh, dtype=torch.float64) - (kh - 1) / 2
    xx = torch.arange(kw, dtype=torch.float64) - (kw - 1) / 2
    cy = (psf.sum(-1) * yy).sum(-1) / total[..., 0, 0]
    cx = (psf.sum(-2) * xx).sum(-1) / total[..., 0, 0]
    offset = torch.sqrt(cy**2 + cx**2)
    if (offset > center_tolerance).any():
        worst = int(torch.argmax(offset.reshape(-1)))
        raise PSFError(
            f"{name}: PSF is off-center: centroid at ({float(cx.reshape(-1)[worst]):+.2f}, "
            f"{float(cy.reshape(-1)[worst]):+.2f}) px from the central pixel (tolerance "
            f"{center_tolerance} px)"
        )
    renormalised = bool(((total - 1).abs() > sum_tolerance).any())
    if renormalised and not normalize:
        raise PSFError(f"{name}: PSF sums to {float(total.reshape(-1)[0]):.6g}, not 1")
    return psf / total, renormalised


class Convolve(LinearOperator):
    """Convolution with a PSF, by FFT with zero padding (no wrap-around).

    The output has the input's size ("same" convolution): flux that the kernel spreads
    beyond the edge is lost, as it is for a real detector cutout. The adjoint is the
    correlation with the same kernel.

    Parameters
    ----------
    psf
        ``(kh, kw)`` (same kernel for every band), ``(C, kh, kw)`` (one per band) or
        ``(B, C, kh, kw)`` (one per observation and band). Validated with
        :func:`validate_psf` and normalised to unit sum.
    shape
        Image shape ``(C, H, W)``.
    """

    def __init__(self, psf: Tensor, shape: Sequence[int], *, name: str = "PSF") -> None:
        self.in_shape = self.out_shape = _as_shape(shape)
        if len(self.in_shape) != 3:
            raise ShapeError(f"Convolve: image shape must be (C, H, W), got {self.in_shape}")
        c, h, w = self.in_shape
        psf = torch.as_tensor(psf)
        if psf.ndim == 2:
            psf = psf.expand(c, *psf.shape)
        if psf.ndim not in (3, 4) or psf.shape[-3] != c:
            raise ShapeError(
                f"Convolve: {name} has shape {tuple(psf.shape)}, which does not give one kernel "
                f"for each of the {c} band(s) of the image"
            )
        kh, kw = psf.shape[-2:]
        if kh > 2 * h - 1 or kw > 2 * w - 1:
            raise PSFError(f"{name}: PSF of {kh}x{kw} is larger than the image ({h}x{w}) can use")
        self.psf, _ = validate_psf(psf, name)
        self.batch_size = int(psf.shape[0]) if psf.ndim == 4 else None
        self._pad = (h + kh - 1, w + kw - 1)
        self._offset = ((kh - 1) // 2, (kw - 1) // 2)
        self._fft_cache: dict[tuple, Tensor] = {}

    def _kernel_fft(self, like: Tensor) -> Tensor:
        key = (like.device, like.dtype)
        if key not in self._fft_cache:
            self._fft_cache[key] = torch.fft.rfft2(_param(self.psf, like), s=self._pad)
        return self._fft_cache[key]

    def _apply(self, x: Tensor) -> Tensor:
        _, h, w = self.in_shape
        oy, ox = self._offset
        full = torch.fft.irfft2(torch.fft.rfft2(x, s=self._pad) * self._kernel_fft(x), s=self._pad)
        return full[..., oy : oy + h, ox : ox + w]

    def _adjoint(self, y: Tensor) -> Tensor:
        _, h, w = self.in_shape
        oy, ox = self._offset
        ph, pw = self._pad
        # Zero-embed at the crop offset, then correlate (conjugate spectrum). With the
        # padded size h + kh - 1 the circular correlation has no aliasing on [0, h).
        padded = torch.nn.functional.pad(y, (ox, pw - w - ox, oy, ph - h - oy))
        full = torch.fft.irfft2(torch.fft.rfft2(padded) * self._kernel_fft(y).conj(), s=self._pad)
        return full[..., :h, :w]

    def take(self, index: Tensor) -> Convolve:
        if self.batch_size is None:
            return self
        return Convolve(self.psf[index.to(self.psf.device)], self.in_shape)


class Downsample(LinearOperator):
    """Integer downsampling onto the coarse grid by summing ``factor x factor`` blocks.

    Summing (rather than averaging) keeps flux units: a galaxy's total flux is the same
    on both grids.
    """

    def __init__(self, factor: int, shape: Sequence[int]) -> None:
        self.in_shape = _as_shape(shape)
        if len(self.in_shape) != 3:
            raise ShapeError(f"Downsample: image shape must be (C, H, W), got {self.in_shape}")
        if int(factor) != factor or factor < 1:
            raise ShapeError(f"Downsample: factor must be a positive integer, got {factor}")
        self.factor = int(factor)
        c, h, w = self.in_shape
        if h % self.factor or w % self.factor:
            raise ShapeError(
                f"Downsample: image {h}x{w} is not divisible by the factor {self.factor}"
            )
        self.out_shape = (c, h // self.factor, w // self.factor)

    def _apply(self, x: Tensor) -> Tensor:
        f = self.factor
        b = x.shape[0]
        c, h, w = self.out_shape
        return x.reshape(b, c, h, f, w, f).sum(dim=(3, 5))

    def _adjoint(self, y: Tensor) -> Tensor:
        f = self.factor
        return y.repeat_interleave(f, dim=-2).repeat_interleave(f, dim=-1)


class SelectBands(LinearOperator):
    """The observed bands of a source: ``(C, H, W) -> (len(index), H, W)``.

    An input that observes some of a prior's bands sees band ``index[j]`` of the source as
    its band ``j``. The adjoint puts each observed band back in its place and zeros the
    bands not observed.

    Parameters
    ----------
    index
        Distinct band indices into the source's ``C`` bands, in the observation's order.
    shape
        Source shape ``(C, H, W)``.
    """

    def __init__(self, index: Sequence[int], shape: Sequence[int]) -> None:
        self.in_shape = _as_shape(shape)
        if len(self.in_shape) != 3:
            raise ShapeError(f"SelectBands: image shape must be (C, H, W), got {self.in_shape}")
        c, h, w = self.in_shape
        idx = tuple(int(i) for i in index)
        if not idx or len(set(idx)) != len(idx) or not all(0 <= i < c for i in idx):
            raise ShapeError(
                f"SelectBands: band indices must be distinct and in 0..{c - 1}, got {list(idx)}"
            )
        self.index = idx
        self._index = torch.tensor(idx, dtype=torch.long)
        self.out_shape = (len(idx), h, w)

    def _apply(self, x: Tensor) -> Tensor:
        return x.index_select(1, self._index.to(x.device))

    def _adjoint(self, y: Tensor) -> Tensor:
        out = y.new_zeros((y.shape[0], *self.in_shape))
        return out.index_copy(1, self._index.to(y.device), y)

    def __repr__(self) -> str:
        return f"SelectBands({list(self.index)} of {self.in_shape[0]})"


class Composition(LinearOperator):
    """``ops[0] o ops[1] o ... o ops[-1]``: the last operator is applied first."""

    def __init__(self, ops: Sequence[LinearOperator]) -> None:
        flat: list[LinearOperator] = []
        for op in ops:
            flat.extend(op.ops if isinstance(op, Composition) else [op])
        if not flat:
            raise ShapeError("Composition: needs at least one operator")
        for outer, inner in zip(flat[:-1], flat[1:], strict=True):
            if outer.in_shape != inner.out_shape:
                raise ShapeError(
                    f"Composition: {inner!r} produces {inner.out_shape} but {outer!r} expects "
                    f"{outer.in_shape}"
                )
        sizes = {op.batch_size for op in flat} - {None}
        if len(sizes) > 1:
            raise ShapeError(
                f"Composition: operators hold different numbers of observations {sorted(sizes)}"
            )
        self.ops = flat
        self.in_shape = flat[-1].in_shape
        self.out_shape = flat[0].out_shape
        self.batch_size = sizes.pop() if sizes else None

    def _apply(self, x: Tensor) -> Tensor:
        for op in reversed(self.ops):
            x = op._apply(x)
        return x

    def _adjoint(self, y: Tensor) -> Tensor:
        for op in self.ops:
            y = op._adjoint(y)
        return y

    def take(self, index: Tensor) -> Composition:
        return Composition([op.take(index) for op in self.ops])

    def __repr__(self) -> str:
        return " @ ".join(repr(op) for op in self.ops)


class SourceSum(LinearOperator):
    """``y = sum_k A_k x_k`` over a stacked state ``x`` of shape ``(B, K, *in_shape)``.

    All per-source operators share input and output shapes; a source absent from a view
    gets a :class:`Zero` operator. The adjoint stacks ``A_k^T y`` over sources.
    """

    def __init__(self, ops: Sequence[LinearOperator]) -> None:
        ops = list(ops)
        if not ops:
            raise ShapeError("SourceSum: needs at least one source operator")
        for op in ops[1:]:
            if op.in_shape != ops[0].in_shape or op.out_shape != ops[0].out_shape:
                raise ShapeError(
                    f"SourceSum: source operators disagree on shapes: {ops[0]!r} vs {op!r}"
                )
        sizes = {op.batch_size for op in ops} - {None}
        if len(sizes) > 1:
            raise ShapeError(
                "SourceSum: source operators hold different numbers of observations "
                f"{sorted(sizes)}"
            )
        self.ops = ops
        self.source_shape = ops[0].in_shape
        self.in_shape = (len(ops), *ops[0].in_shape)
        self.out_shape = ops[0].out_shape
        self.batch_size = sizes.pop() if sizes else None

    @property
    def n_sources(self) -> int:
        return len(self.ops)

    def _apply(self, x: Tensor) -> Tensor:
        out = None
        for k, op in enumerate(self.ops):
            if isinstance(op, Zero):
                continue
            term = op._apply(x[:, k])
            out = term if out is None else out + term
        if out is None:
            out = x.new_zeros((x.shape[0], *self.out_shape))
        return out

    def _adjoint(self, y: Tensor) -> Tensor:
        return torch.stack([op._adjoint(y) for op in self.ops], dim=1)

    def take(self, index: Tensor) -> SourceSum:
        return SourceSum([op.take(index) for op in self.ops])

    def __repr__(self) -> str:
        return "SourceSum[" + ", ".join(repr(op) for op in self.ops) + "]"


def __getattr__(name: str) -> object:
    # The WCS resampler lives in its own module (it needs astropy and scipy, which most
    # users of the operators never load); it is re-exported here on first use.
    if name in ("Resample", "integer_factor"):
        from . import resample

        return getattr(resample, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def numel(shape: Shape) -> int:
    """Number of elements of an event shape."""
    return math.prod(shape)
