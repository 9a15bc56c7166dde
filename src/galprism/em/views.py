"""Views: sets of observations that share which sources they contain."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import ConfigError, ShapeError
from ..operators import SourceSum, Zero

__all__ = ["View"]


@dataclass
class View:
    """Observations ``y_i = sum_b A_ib x_ib + n_i`` of the sources named in ``sources``.

    Parameters
    ----------
    name
        View name (e.g. ``"sky"``, ``"galaxies"``), used in logs and history.
    sources
        Names of the sources this view contains, in the order of ``operator``'s terms.
    y
        Observations ``(N, *obs_shape)``.
    noise_var
        Noise variance, broadcastable to ``y``; > 0 (masked pixels get any positive
        value and a zero row in the operator).
    operator
        Batched :class:`~galprism.operators.SourceSum` over ``len(sources)`` sources.
    valid
        Optional boolean mask of the observed pixels ``(N, *obs_shape)``, used only to
        count pixels in the posterior-predictive chi^2.
    amplitudes
        Source name -> ``(N,)`` amplitudes of a normalised source (:mod:`galprism.amplitude`),
        already folded into its operator term; used to start its Gaussian prior at the
        normalised data's power.
    """

    name: str
    sources: list[str]
    y: Tensor
    noise_var: Tensor
    operator: SourceSum
    valid: Tensor | None = None
    amplitudes: dict[str, Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.sources = list(self.sources)
        if not self.sources:
            raise ConfigError(f"view {self.name!r}: contains no source")
        if len(set(self.sources)) != len(self.sources):
            raise ConfigError(f"view {self.name!r}: lists a source twice: {self.sources}")
        if self.y.ndim < 2 or self.y.shape[0] == 0:
            raise ConfigError(f"view {self.name!r}: has no observations")
        if not isinstance(self.operator, SourceSum) or self.operator.n_sources != len(self.sources):
            raise ShapeError(
                f"view {self.name!r}: operator must be a SourceSum over its {len(self.sources)} "
                "source(s)"
            )
        if tuple(self.y.shape[1:]) != self.operator.out_shape:
            raise ShapeError(
                f"view {self.name!r}: observations have shape {tuple(self.y.shape[1:])}, its "
                "operator "
                f"produces {self.operator.out_shape}"
            )
        if self.operator.batch_size not in (None, self.y.shape[0]):
            raise ShapeError(
                f"view {self.name!r}: {self.y.shape[0]} observations but the operator holds "
                f"{self.operator.batch_size}"
            )
        self.noise_var = torch.as_tensor(self.noise_var, dtype=self.y.dtype).expand_as(self.y)
        if not torch.isfinite(self.y).all():
            raise ShapeError(f"view {self.name!r}: observations contain non-finite values")
        if not torch.isfinite(self.noise_var).all() or (self.noise_var <= 0).any():
            raise ShapeError(f"view {self.name!r}: noise variance must be finite and > 0")
        if self.valid is not None and self.valid.shape != self.y.shape:
            raise ShapeError(
                f"view {self.name!r}: valid mask has shape {tuple(self.valid.shape)}, expected "
                f"{tuple(self.y.shape)}"
            )

    @classmethod
    def from_source_sum(
        cls,
        name: str,
        source_names: Sequence[str],
        y: Tensor,
        noise_var: Tensor | float,
        operator: SourceSum,
        valid: Tensor | None = None,
    ) -> View:
        """Build a view from an operator over *all* sources, dropping absent (``Zero``) ones."""
        if operator.n_sources != len(source_names):
            raise ShapeError(
                f"view {name!r}: {len(source_names)} source names for {operator.n_sources} "
                "operator terms"
            )
        keep = [k for k, op in enumerate(operator.ops) if not isinstance(op, Zero)]
        return cls(
            name,
            [source_names[k] for k in keep],
            y,
            torch.as_tensor(noise_var, dtype=y.dtype),
            SourceSum([operator.ops[k] for k in keep]),
            valid,
        )

    @property
    def n_obs(self) -> int:
        return int(self.y.shape[0])

    @property
    def source_shape(self) -> tuple[int, ...]:
        return tuple(self.operator.source_shape)

    def chi2(self, x: Tensor, index: Tensor) -> float:
        """Reduced chi^2 of posterior samples ``x`` ``(n, K, *shape)`` of observations ``index``.

        ``mean((y - A x)^2 / noise_var)`` over the observed pixels: about 1 when the
        samples explain the data down to the noise.
        """
        r2, valid = self._residual2(x, index)
        if valid is not None:
            return float(r2[valid].mean()) if valid.any() else float("nan")
        return float(r2.mean())

    def chi2_per_observation(self, x: Tensor, index: Tensor) -> Tensor:
        """Reduced chi^2 of each sample ``(n,)`` (NaN for an observation with no valid pixel)."""
        r2, valid = self._residual2(x, index)
        r2 = r2.reshape(r2.shape[0], -1)
        if valid is None:
            return r2.mean(1)
        valid = valid.reshape(valid.shape[0], -1)
        return (r2 * valid).sum(1) / valid.sum(1)

    def _residual2(self, x: Tensor, index: Tensor) -> tuple[Tensor, Tensor | None]:
        op = self.operator.take(index) if self.operator.batch_size is not None else self.operator
        r2 = (self.y[index] - op.apply(x.to(self.y.dtype))) ** 2 / self.noise_var[index]
        return r2, None if self.valid is None else self.valid[index]
