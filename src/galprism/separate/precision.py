"""Lower-precision prior networks for separation: bf16 autocast or TF32 around the backbone.

Only the backbone of each :class:`~galprism.diffusion.denoiser.DiffusionPrior` (its U-Net
or MLP) runs in lower precision: its output is cast back to the state's dtype before the
EDM preconditioning, so the denoiser's skip connection, the likelihood, the
conjugate-gradient solve and the operators stay float32. Under bf16 the vector-Jacobian
products of MMPS go through the same casts (autograd records them), so they run in bf16
too; under TF32 only the forward pass uses TF32 matrix products, the VJPs run with
torch's global settings. ``float32`` changes nothing: on CUDA, torch's defaults then
apply (cuDNN convolutions may use TF32 unless ``torch.backends.cudnn.allow_tf32`` is
False). Under bf16 the self-attention blocks stay float32 (see
:func:`_keep_attention_float32`).

:func:`network_precision` swaps each backbone for a :class:`LowPrecisionNet` for the
duration of a ``with`` block and puts the original back afterwards, so that a prior
object is never left changed and its checkpoints keep their keys.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from ..diffusion.denoiser import DiffusionPrior
from ..errors import ConfigError
from ..nn.unet import Attention

__all__ = ["LowPrecisionNet", "network_precision"]


class LowPrecisionNet(nn.Module):
    """A backbone run under bf16 autocast or with TF32 matrix products.

    Parameters
    ----------
    net
        The backbone, called as ``net(x, t)``.
    precision
        ``"bf16"`` or ``"tf32"``.
    device_type
        ``"cuda"`` or ``"cpu"``: the autocast device type of ``"bf16"``.
    """

    def __init__(self, net: nn.Module, precision: str, device_type: str) -> None:
        super().__init__()
        if precision not in ("bf16", "tf32"):
            raise ConfigError(f"LowPrecisionNet: precision must be bf16 or tf32, got {precision!r}")
        if precision == "tf32" and device_type != "cuda":
            raise ConfigError(f"LowPrecisionNet: tf32 needs a CUDA device, got {device_type}")
        self.net = net
        self.precision = precision
        self.device_type = device_type

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if self.precision == "bf16":
            with torch.autocast(self.device_type, dtype=torch.bfloat16):
                out = self.net(x, t)
        else:
            matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
            try:
                out = self.net(x, t)
            finally:
                torch.backends.cuda.matmul.allow_tf32 = matmul
                torch.backends.cudnn.allow_tf32 = cudnn
        return out.to(x.dtype)


class _Float32Block(nn.Module):
    """A block run in float32 with autocast off, inside a bf16 network."""

    def __init__(self, block: nn.Module, device_type: str) -> None:
        super().__init__()
        self.block = block
        self.device_type = device_type

    def forward(self, x: Tensor) -> Tensor:
        with torch.autocast(self.device_type, enabled=False):
            return self.block(x.float())


def _keep_attention_float32(
    net: nn.Module, device_type: str
) -> list[tuple[nn.Module, str, nn.Module]]:
    """Swap the self-attention blocks of ``net`` for float32 ones; return what to put back.

    Torch's attention backward fails ("expected scalar type Float but found BFloat16") when
    its forward ran under CPU autocast on transposed inputs and ``torch.func.vjp`` calls
    it outside autocast, as MMPS does. The blocks run at the lowest resolution only, so
    float32 there costs little.
    """
    swapped = []
    for parent in list(net.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Attention):
                setattr(parent, name, _Float32Block(child, device_type))
                swapped.append((parent, name, child))
    return swapped


@contextmanager
def network_precision(prior: Any, precision: str, device: str) -> Iterator[int]:
    """Run the diffusion backbones of ``prior`` in ``precision`` inside the block.

    Parameters
    ----------
    prior
        A separator; its ``priors`` that are :class:`DiffusionPrior` are affected, anything
        else (Gaussian priors, aSVD models, priors without networks) runs as it is.
    precision
        ``"float32"`` (nothing changes), ``"bf16"`` or ``"tf32"``.
    device
        The resolved torch device of the run.

    Yields
    ------
    int
        How many backbones run in lower precision.
    """
    if precision == "float32":
        yield 0
        return
    device_type = torch.device(device).type
    swapped = [p for p in getattr(prior, "priors", ()) if isinstance(p, DiffusionPrior)]
    originals = [p.net for p in swapped]
    blocks: list[tuple[nn.Module, str, nn.Module]] = []
    try:
        for p, net in zip(swapped, originals, strict=True):
            if precision == "bf16":
                blocks += _keep_attention_float32(net, device_type)
            p.net = LowPrecisionNet(net, precision, device_type)
        yield len(swapped)
    finally:
        for parent, name, child in reversed(blocks):
            setattr(parent, name, child)
        for p, net in zip(swapped, originals, strict=True):
            p.net = net
