"""Training a diffusion prior on (posterior) samples, with EMA weights, resumable."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor

from .denoiser import DiffusionPrior
from .ema import EMA
from .loss import denoising_loss

__all__ = ["BatchSplit", "Trainer", "random_flux_scaling"]

#: ``Trainer(amp=...)`` values: bfloat16 autocast on CUDA only, never, or on any device.
AMP_MODES = ("cuda", "off", "on")


class BatchSplit(Protocol):
    """How :meth:`Trainer.fit` shares each minibatch among processes (data parallelism);
    :class:`galprism.em.distributed.Distributed` is one."""

    def shard(self, n: int) -> tuple[int, int]:
        """Rows ``[lo, hi)`` of a batch of ``n`` that this process computes."""
        ...

    def all_sum_(self, tensors: Sequence[Tensor]) -> None:
        """Sum ``tensors`` over the processes, in place."""
        ...


class Trainer:
    """Adam optimisation of a :class:`DiffusionPrior` plus an EMA copy used for sampling.

    Parameters
    ----------
    prior
        The network to train (it is trained in place).
    lr
        Learning rate (after a short linear warm-up).
    ema_decay
        Decay of the weight average that :attr:`ema_prior` holds.
    grad_clip
        Largest gradient norm (stabilises the first EM laps, whose posterior samples
        can contain outliers).
    warmup
        Steps of linear learning-rate warm-up.
    amp
        bfloat16 autocast of the network's forward pass: ``"cuda"`` (or True) on CUDA
        devices only, ``"off"`` (or False) never, ``"on"`` on any device that supports
        it (CPU too; for tests). The loss and the optimiser stay float32.
    time_sampling
        Distribution of the training noise levels (see
        :func:`~galprism.diffusion.loss.denoising_loss`).
    lr_schedule
        ``"constant"`` (after the warm-up) or ``"cosine"``: each :meth:`fit` call decays
        the rate from ``lr`` to 0 along a half cosine. EM calls ``fit`` once per lap on
        new posterior samples; decaying within the lap lets the network settle on them
        (the reference decays linearly to 1e-6 in every lap), which sharpens the learned
        Jacobian that posterior sampling relies on (docs/em.md).
    """

    def __init__(
        self,
        prior: DiffusionPrior,
        *,
        lr: float = 1e-3,
        ema_decay: float = 0.999,
        grad_clip: float = 1.0,
        warmup: int = 100,
        weight_decay: float = 0.0,
        amp: bool | str = True,
        time_sampling: str = "beta33",
        lr_schedule: str = "constant",
    ) -> None:
        if lr_schedule not in ("constant", "cosine"):
            raise ValueError(
                f"Trainer: lr_schedule must be 'constant' or 'cosine', got {lr_schedule!r}"
            )
        amp = {True: "cuda", False: "off"}.get(amp, amp) if isinstance(amp, bool) else amp
        if amp not in AMP_MODES:
            raise ValueError(f"Trainer: amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")
        self.prior = prior
        self.lr = lr
        self.grad_clip = grad_clip
        self.warmup = warmup
        self.amp = amp
        self.time_sampling = time_sampling
        self.lr_schedule = lr_schedule
        self.optimizer = torch.optim.AdamW(prior.parameters(), lr=lr, weight_decay=weight_decay)
        self.ema = EMA(prior, ema_decay)
        self.step = 0

    @property
    def ema_prior(self) -> DiffusionPrior:
        """The averaged weights: what sampling and checkpoints use."""
        return self.ema.shadow

    def fit(
        self,
        data: Tensor,
        steps: int,
        batch_size: int = 256,
        *,
        generator: torch.Generator | None = None,
        callback: Callable[[int, float], None] | None = None,
        augment: Callable[[Tensor, torch.Generator | None], Tensor] | None = None,
        split: BatchSplit | None = None,
    ) -> float:
        """Train for ``steps`` steps on minibatches of ``data`` ``(N, *shape)``.

        ``augment(batch, generator)``, if given, transforms each minibatch before the
        loss (e.g. :func:`random_flux_scaling`). With ``split``, every process draws the
        same minibatch and noise (same ``data`` and generator state), computes the loss of
        its rows only, and the gradients and loss are summed over the processes before
        the update, which then equals the single-process update up to summation order.
        Returns the mean loss over the last quarter of the steps.
        """
        self.prior.train()
        device = next(self.prior.parameters()).device
        data = data.to(device)
        n = data.shape[0]
        use_amp = self.amp == "on" or (self.amp == "cuda" and device.type == "cuda")
        params = list(self.prior.parameters())
        tail: list[float] = []
        for i in range(steps):
            idx = torch.randint(
                n,
                (min(batch_size, n),),
                generator=generator,
                device=generator.device if generator else "cpu",
            )
            batch = data[idx.to(device)]
            if augment is not None:
                batch = augment(batch, generator)
            lr = self.lr * min(1.0, (self.step + 1) / max(1, self.warmup))
            if self.lr_schedule == "cosine":
                lr *= 0.5 * (1 + math.cos(math.pi * i / steps))
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            rows = split.shard(batch.shape[0]) if split is not None else None
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                loss = denoising_loss(
                    self.prior,
                    batch,
                    generator=_gen_for(generator, device),
                    time_sampling=self.time_sampling,
                    rows=rows,
                )
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if split is not None:
                for p in params:
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                loss = loss.detach().float().reshape(1)
                split.all_sum_([p.grad for p in params] + [loss])
                loss = loss[0]
            if self.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.prior.parameters(), self.grad_clip)
            self.optimizer.step()
            self.ema.update(self.prior)
            self.step += 1
            value = float(loss.detach())
            if i >= steps - max(1, steps // 4):
                tail.append(value)
            if callback is not None:
                callback(i + 1, value)
        self.prior.eval()
        return sum(tail) / max(1, len(tail))

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": self.prior.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.prior.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])

    def snapshot(self) -> DiffusionPrior:
        """A frozen copy of the EMA prior (safe to keep while training continues)."""
        return copy.deepcopy(self.ema_prior).eval().requires_grad_(False)


def random_flux_scaling(
    low: float, high: float, fraction: float = 1.0
) -> Callable[[Tensor, torch.Generator | None], Tensor]:
    """An ``augment`` for :meth:`Trainer.fit` that brightens or dims whole samples.

    A ``fraction`` of the rows of each minibatch is multiplied by a factor drawn
    log-uniformly in ``[low, high]`` (one factor per row); the other rows are unchanged.
    A source's shape does not depend on its brightness, so this teaches a prior the
    shapes it has seen at fluxes it has seen too rarely (EM's ``flux_augment``).
    """
    if not (0 < low <= high and 0 < fraction <= 1):
        raise ValueError(
            f"random_flux_scaling: need 0 < low <= high and 0 < fraction <= 1, got {low}, {high}, "
            f"{fraction}"
        )
    lo, hi = math.log(low), math.log(high)

    def scale(batch: Tensor, generator: torch.Generator | None) -> Tensor:
        b = batch.shape[0]
        device = generator.device if generator else "cpu"
        u = torch.rand(b, generator=generator, device=device)
        pick = torch.rand(b, generator=generator, device=device) < fraction
        factor = torch.where(pick, torch.exp(lo + (hi - lo) * u), torch.ones_like(u))
        return batch * factor.to(batch.device, batch.dtype).reshape(b, *([1] * (batch.dim() - 1)))

    return scale


def _gen_for(generator: torch.Generator | None, device: torch.device) -> torch.Generator | None:
    # The loss draws noise on the data's device; a CPU generator cannot drive CUDA draws,
    # so on GPU the noise comes from the device's default generator (seeded by the caller).
    if generator is None or generator.device == device:
        return generator
    return None
