"""Place source stamps of the prior's grid into a blend frame, and the star model.

A source modelled by a prior is a stamp of the prior's grid, shape ``(C, h, w)``, whose
geometric center ``((w - 1) / 2, (h - 1) / 2)`` is the source's position. A blend frame
``(C, H, W)`` holds several sources at sub-pixel positions ``(x, y)`` (0-based pixels of
the frame, pixel ``i`` covering ``[i - 0.5, i + 0.5]``). :class:`PlaceStamps` sums the
placed stamps: ``frame = sum_k P(x_k, y_k) stamp_k``; :class:`PlaceStamp` is the same map
for one source, with the stamp shape as its input shape so that it composes with the
observation's operators inside :class:`~galprism.operators.SourceSum`.

How a stamp is moved
--------------------
The offset of the stamp's corner is split into an integer part (rounded to the nearest
pixel) and a fraction in ``[-0.5, 0.5)``. The fraction is a Fourier phase shift of the
stamp zero-padded by ``pad`` pixels on each side; the padded, shifted stamp is then
embedded at the integer offset and whatever falls outside the frame is dropped.

The phase shift is used rather than bilinear interpolation because

* it conserves flux exactly (the zero-frequency term is untouched), so a source's total
  flux does not depend on its sub-pixel position;
* it is unitary: it does not smooth. Bilinear interpolation of a half-pixel shift halves
  the highest frequencies, i.e. it would blur a source by an amount that depends on its
  sub-pixel position, a position-dependent PSF error that the prior cannot explain;
* its adjoint is the opposite shift, so ``A^T`` is as exact and as cheap as ``A``.

Its price is ringing for stamps that are not band-limited (e.g. an undersampled PSF):
the sinc side lobes of a shifted sharp peak wrap around the padded stamp. The padding
keeps that wrap-around away from the stamp's light; the map stays exactly linear with an
exact adjoint whatever the stamp. Padded sizes are odd so that there is no Nyquist
frequency: on an even grid the Nyquist term of a real image cannot be shifted, only
scaled by ``cos(pi f)`` (zero for a half-pixel shift), which would smooth again. With odd
sizes the shift is unitary, maps real stamps to real stamps, and its transpose is the
shift by the opposite fraction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import ShapeError
from ..operators import LinearOperator, validate_psf

__all__ = ["PlaceStamps", "PlaceStamp", "StarOperator", "split_offset"]


def split_offset(position: float, size: int) -> tuple[int, float]:
    """Integer and fractional offset of a stamp of ``size`` pixels centered at ``position``.

    Parameters
    ----------
    position
        Frame coordinate (0-based pixels) of the stamp's geometric center.
    size
        Stamp size along that axis.

    Returns
    -------
    integer, fraction
        The stamp's first pixel lands on frame pixel ``integer + fraction`` with
        ``fraction`` in ``[-0.5, 0.5)``.
    """
    start = float(position) - (size - 1) / 2.0
    integer = math.floor(start + 0.5)
    return integer, start - integer


def _odd_padded(size: int, pad: int) -> tuple[int, int]:
    """Padded size (odd) and the pad before the stamp along one axis."""
    total = size + 2 * pad
    if total % 2 == 0:
        total += 1  # the extra pixel goes after the stamp (see the module notes)
    return total, pad


class PlaceStamps(LinearOperator):
    """Sum of ``K`` stamps ``(K, C, h, w)`` placed at sub-pixel positions in ``(C, H, W)``.

    Parameters
    ----------
    positions
        ``(K, 2)`` array of ``(x, y)`` frame coordinates (0-based pixels) of each stamp's
        geometric center. Positions may put a stamp partly or wholly outside the frame:
        its light outside the frame is dropped (the frame is a window on the sky).
    stamp_shape
        ``(C, h, w)``: the prior's grid.
    frame_shape
        ``(C, H, W)``: the blend frame, on the same pixel grid as the stamps.
    pad
        Zero padding, in pixels on each side, of the stamp before the sub-pixel shift.

    Notes
    -----
    The positions are shared by the whole batch (``batch_size`` is None): the batch axis
    holds posterior samples or observations of the same blend.
    """

    def __init__(
        self,
        positions: Sequence[Sequence[float]] | np.ndarray | Tensor,
        stamp_shape: Sequence[int],
        frame_shape: Sequence[int],
        *,
        pad: int = 8,
    ) -> None:
        pos = np.asarray(torch.as_tensor(positions, dtype=torch.float64).cpu().numpy())
        if pos.ndim != 2 or pos.shape[1] != 2 or pos.shape[0] < 1:
            raise ShapeError(f"PlaceStamps: positions must be (K, 2) with K >= 1, got {pos.shape}")
        if not np.isfinite(pos).all():
            raise ShapeError("PlaceStamps: positions contain non-finite values")
        stamp_shape, frame_shape = tuple(map(int, stamp_shape)), tuple(map(int, frame_shape))
        if len(stamp_shape) != 3 or len(frame_shape) != 3 or min(stamp_shape + frame_shape) < 1:
            raise ShapeError(
                f"PlaceStamps: stamp {stamp_shape} and frame {frame_shape} must both be (C, H, W)"
            )
        if stamp_shape[0] != frame_shape[0]:
            raise ShapeError(
                f"PlaceStamps: stamp has {stamp_shape[0]} band(s) but the frame {frame_shape[0]}"
            )
        if int(pad) != pad or pad < 0:
            raise ShapeError(f"PlaceStamps: pad must be a non-negative integer, got {pad}")
        self.positions = pos
        self.stamp_shape, self.frame_shape, self.pad = stamp_shape, frame_shape, int(pad)
        self.in_shape = (pos.shape[0], *stamp_shape)
        self.out_shape = frame_shape
        _, h, w = stamp_shape
        self._hp, self._py = _odd_padded(h, self.pad)
        self._wp, self._px = _odd_padded(w, self.pad)
        self._offsets: list[tuple[int, int]] = []
        fractions = []
        for x, y in pos:
            ix, fx = split_offset(x, w)
            iy, fy = split_offset(y, h)
            # Frame pixel of the padded stamp's first pixel.
            self._offsets.append((iy - self._py, ix - self._px))
            fractions.append((fy, fx))
        self.fractions = np.asarray(fractions, dtype=np.float64)  # (K, 2) as (fy, fx)
        self._phase_cache: dict[tuple, Tensor] = {}

    @property
    def n_sources(self) -> int:
        """Number of stamps placed."""
        return int(self.positions.shape[0])

    # -- sub-pixel shift --------------------------------------------------------------
    def _phase(self, like: Tensor, sign: float) -> Tensor:
        """``exp(-2 pi i (ky fy + kx fx))`` on the rfft grid, ``(K, 1, hp, wp // 2 + 1)``."""
        key = (like.device, like.dtype, sign)
        if key not in self._phase_cache:
            ky = torch.fft.fftfreq(self._hp, dtype=torch.float64)
            kx = torch.fft.rfftfreq(self._wp, dtype=torch.float64)
            f = torch.as_tensor(self.fractions, dtype=torch.float64)
            arg = ky[None, :, None] * f[:, 0, None, None] + kx[None, None, :] * f[:, 1, None, None]
            phase = torch.polar(torch.ones_like(arg), -2.0 * math.pi * sign * arg)
            complex_dtype = torch.complex128 if like.dtype == torch.float64 else torch.complex64
            self._phase_cache[key] = phase[:, None].to(device=like.device, dtype=complex_dtype)
        return self._phase_cache[key]

    def _shift(self, padded: Tensor, sign: float) -> Tensor:
        spec = torch.fft.rfft2(padded) * self._phase(padded, sign)
        return torch.fft.irfft2(spec, s=(self._hp, self._wp))

    # -- integer embedding ------------------------------------------------------------
    def _window(self, k: int) -> tuple[slice, slice, slice, slice] | None:
        """Overlap of padded stamp ``k`` with the frame: (frame y, frame x, stamp y, stamp x)."""
        _, fh, fw = self.frame_shape
        oy, ox = self._offsets[k]
        y0, y1 = max(oy, 0), min(oy + self._hp, fh)
        x0, x1 = max(ox, 0), min(ox + self._wp, fw)
        if y0 >= y1 or x0 >= x1:
            return None
        return slice(y0, y1), slice(x0, x1), slice(y0 - oy, y1 - oy), slice(x0 - ox, x1 - ox)

    def _apply(self, x: Tensor) -> Tensor:
        _, h, w = self.stamp_shape
        py, px = self._py, self._px
        padded = torch.nn.functional.pad(
            x, (px, self._wp - w - px, py, self._hp - h - py)
        )  # (B, K, C, hp, wp)
        shifted = self._shift(padded, 1.0)
        out = x.new_zeros((x.shape[0], *self.frame_shape))
        for k in range(self.n_sources):
            win = self._window(k)
            if win is not None:
                fy, fx, sy, sx = win
                out[..., fy, fx] += shifted[:, k, :, sy, sx]
        return out

    def _adjoint(self, y: Tensor) -> Tensor:
        _, h, w = self.stamp_shape
        gathered = y.new_zeros(
            (y.shape[0], self.n_sources, self.frame_shape[0], self._hp, self._wp)
        )
        for k in range(self.n_sources):
            win = self._window(k)
            if win is not None:
                fy, fx, sy, sx = win
                gathered[:, k, :, sy, sx] = y[..., fy, fx]
        back = self._shift(gathered, -1.0)
        return back[..., self._py : self._py + h, self._px : self._px + w]

    def source(self, k: int) -> PlaceStamp:
        """The single-source operator ``(C, h, w) -> (C, H, W)`` of stamp ``k``."""
        return PlaceStamp(self.positions[k], self.stamp_shape, self.frame_shape, pad=self.pad)


class PlaceStamp(LinearOperator):
    """One stamp ``(C, h, w)`` placed at a sub-pixel position ``(x, y)`` in ``(C, H, W)``.

    The same map as :class:`PlaceStamps` with ``K = 1``; its input shape is the stamp's,
    so that it composes with an observation operator as one source of a
    :class:`~galprism.operators.SourceSum`.
    """

    def __init__(
        self,
        position: Sequence[float] | np.ndarray | Tensor,
        stamp_shape: Sequence[int],
        frame_shape: Sequence[int],
        *,
        pad: int = 8,
    ) -> None:
        pos = torch.as_tensor(position, dtype=torch.float64).reshape(-1)
        if pos.shape != (2,):
            raise ShapeError(f"PlaceStamp: position must be (x, y), got {tuple(pos.shape)}")
        self._many = PlaceStamps(pos[None], stamp_shape, frame_shape, pad=pad)
        self.position = (float(pos[0]), float(pos[1]))
        self.in_shape = self._many.stamp_shape
        self.out_shape = self._many.frame_shape

    def _apply(self, x: Tensor) -> Tensor:
        return self._many._apply(x[:, None])

    def _adjoint(self, y: Tensor) -> Tensor:
        return self._many._adjoint(y)[:, 0]


class StarOperator(LinearOperator):
    """A point source: the PSF placed at a sub-pixel position, times its flux.

    Maps a flux to the observed image, so it belongs *after* the observation's PSF
    convolution (a star is not drawn on the prior's grid and then convolved: a sub-pixel
    delta function has no exact representation there). With ``per_band=False`` the input
    is one flux ``(1,)`` shared by all bands (the PSF of each band has unit sum, so each
    band receives that flux); with ``per_band=True`` it is one flux per band ``(C,)``.

    Parameters
    ----------
    psf
        ``(kh, kw)`` or ``(C, kh, kw)`` PSF of the observed image; validated with
        :func:`~galprism.operators.validate_psf` and normalised to unit sum.
    position
        ``(x, y)``: the star's position in the image (0-based pixels); the PSF's center
        pixel goes there.
    frame_shape
        ``(C, H, W)`` of the observed image (or of the blend's window on it).
    per_band
        One free flux per band instead of one shared flux.
    pad
        Zero padding of the PSF for its sub-pixel shift (see :class:`PlaceStamps`).
    name
        How the PSF is called in error messages.
    """

    def __init__(
        self,
        psf: Tensor | np.ndarray,
        position: Sequence[float] | np.ndarray | Tensor,
        frame_shape: Sequence[int],
        *,
        per_band: bool = False,
        pad: int = 8,
        name: str = "PSF",
    ) -> None:
        frame_shape = tuple(map(int, frame_shape))
        if len(frame_shape) != 3:
            raise ShapeError(f"StarOperator: frame shape must be (C, H, W), got {frame_shape}")
        c = frame_shape[0]
        psf_t = torch.as_tensor(psf, dtype=torch.float64)
        if psf_t.ndim == 2:
            psf_t = psf_t.expand(c, *psf_t.shape)
        if psf_t.ndim != 3 or psf_t.shape[0] != c:
            raise ShapeError(
                f"StarOperator: {name} has shape {tuple(psf_t.shape)}, which does not give one "
                f"kernel for each of the {c} band(s) of the frame"
            )
        psf_t, _ = validate_psf(psf_t, name)
        place = PlaceStamp(position, tuple(psf_t.shape), frame_shape, pad=pad)
        # The star's image for unit flux in each band: (C, C, H, W) with column b holding
        # band b only, or (1, C, H, W) with all bands together.
        placed = place.apply(psf_t[None])[0]
        if per_band:
            columns = torch.zeros((c, *frame_shape), dtype=torch.float64)
            for b in range(c):
                columns[b, b] = placed[b]
        else:
            columns = placed[None]
        self.columns = columns
        self.position = place.position
        self.per_band = bool(per_band)
        self.in_shape = (int(columns.shape[0]),)
        self.out_shape = frame_shape

    def _apply(self, x: Tensor) -> Tensor:
        cols = self.columns.to(device=x.device, dtype=x.dtype)
        return torch.einsum("bf,fchw->bchw", x, cols)

    def _adjoint(self, y: Tensor) -> Tensor:
        cols = self.columns.to(device=y.device, dtype=y.dtype)
        return torch.einsum("bchw,fchw->bf", y, cols)
