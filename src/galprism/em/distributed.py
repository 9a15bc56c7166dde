"""EM across several processes (``torchrun``): who does what, and the few collectives.

Under ``torchrun`` (the ``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` variables set) every
process runs the same EM loop on the same views:

- the E-step observations of a view are split into contiguous shards, one per rank; each
  observation's noise comes from its own generator, seeded from a per-lap seed of the run's
  stream and the observation's index, so its sample does not depend on the world size;
  the shards are put back together (:meth:`Distributed.assemble`) so that every rank holds
  all samples;
- each M-step minibatch is drawn by every rank from the shared stream; each rank computes
  the loss of its share of the rows and the gradients are summed over the ranks, so the
  update equals the one-process full-batch update up to summation order;
- the PPCA fit runs on rank 0 and its result is broadcast;
- only rank 0 writes the run folder; the other ranks read its checkpoints when resuming.

Without ``WORLD_SIZE`` nothing of this applies and EM runs as a single process, drawing
all its noise from the run's single stream.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

from ..errors import GalprismError

__all__ = [
    "Distributed",
    "auto_device",
    "env_rank",
    "observation_generators",
]

T = TypeVar("T")


def env_rank() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` from ``torchrun``'s environment, or None without it."""
    if "WORLD_SIZE" not in os.environ:
        return None
    world = int(os.environ["WORLD_SIZE"])
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    return rank, world, local


def auto_device() -> str:
    """The device ``--device auto`` means: ``cuda:LOCAL_RANK`` under ``torchrun`` when CUDA
    exists (one GPU per process), ``cuda`` or ``cpu`` otherwise."""
    if not torch.cuda.is_available():
        return "cpu"
    env = env_rank()
    return f"cuda:{env[2] % torch.cuda.device_count()}" if env is not None else "cuda"


def observation_generators(seed: int, index: Tensor, draw: int = 0) -> list[torch.Generator]:
    """One CPU generator per observation, seeded from ``(seed, index[i], draw)`` only.

    ``draw`` numbers the attempts at an observation (0, then one per redraw round), so a
    redraw gets fresh noise. The seeds mix the three numbers (numpy's SeedSequence), so
    nearby indices get unrelated streams.
    """
    gens = []
    for i in index.tolist():
        words = np.random.SeedSequence([int(seed), int(i), int(draw)]).generate_state(2)
        value = (int(words[0]) << 31) ^ int(words[1])
        gens.append(torch.Generator().manual_seed(value))
    return gens


@dataclass
class Distributed:
    """The process's place in a ``torchrun`` job.

    Parameters
    ----------
    rank, world_size
        This process's rank and the number of processes.
    device
        Where collectives move tensors (the process's GPU under ``nccl``, else the CPU).
    enabled
        Whether EM runs in its distributed form (per-observation E-step seeds, sharded
        work). A single process may run it (``world_size = 1``), giving the same
        result as any number of processes.
    owns_group
        Whether :meth:`from_env` created the process group (then :meth:`close` ends it).
    """

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    enabled: bool = False
    owns_group: bool = False

    @classmethod
    def from_env(cls, device: str | torch.device = "cpu") -> Distributed:
        """The job ``torchrun`` started this process in, joining its process group
        (``nccl`` for a CUDA device, else ``gloo``); disabled without ``WORLD_SIZE``.
        An already initialised process group is used as it is."""
        device = torch.device(device)
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            comm = _comm_device(dist.get_backend(), device)
            return cls(dist.get_rank(), dist.get_world_size(), comm, True, False)
        env = env_rank()
        if env is None:
            return cls()
        rank, world, _ = env
        if world == 1:
            return cls(0, 1, device, True, False)
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend, rank=rank, world_size=world)
        return cls(rank, world, _comm_device(backend, device), True, True)

    @property
    def is_main(self) -> bool:
        """Whether this process writes the run folder and speaks."""
        return self.rank == 0

    @property
    def _collective(self) -> bool:
        return self.enabled and self.world_size > 1

    def close(self) -> None:
        """End the process group if :meth:`from_env` started it."""
        if self.owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
            self.owns_group = False

    def barrier(self) -> None:
        if self._collective:
            torch.distributed.barrier()

    def shard(self, n: int) -> tuple[int, int]:
        """Rows ``[lo, hi)`` of ``n`` that this rank works on (contiguous, sizes differ
        by at most one, together exactly ``range(n)``)."""
        base, extra = divmod(n, self.world_size)
        lo = self.rank * base + min(self.rank, extra)
        return lo, lo + base + (1 if self.rank < extra else 0)

    def all_sum(self, tensor: Tensor) -> Tensor:
        """Sum of ``tensor`` over the ranks (a new tensor on ``tensor``'s device)."""
        if not self._collective:
            return tensor
        work = tensor.detach().to(self.device, copy=True)
        torch.distributed.all_reduce(work)
        return work.to(tensor.device)

    def all_sum_(self, tensors: Sequence[Tensor]) -> None:
        """Sum ``tensors`` over the ranks in place, in one collective."""
        if not self._collective or not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors]).to(self.device)
        torch.distributed.all_reduce(flat)
        start = 0
        for t in tensors:
            t.copy_(flat[start : start + t.numel()].reshape(t.shape))
            start += t.numel()

    def assemble(self, part: Tensor, lo: int, n: int) -> Tensor:
        """The ``(n, ...)`` tensor whose rows ``[lo, lo + len(part))`` each rank holds.

        The rows are disjoint, so a sum of zero-padded copies rebuilds them exactly
        (adding zeros changes no value). Booleans travel as integers.
        """
        if not self._collective:
            return part
        dtype = part.dtype
        wire = torch.int32 if dtype == torch.bool else dtype
        full = torch.zeros((n, *part.shape[1:]), dtype=wire, device=self.device)
        full[lo : lo + part.shape[0]] = part.to(self.device, wire)
        torch.distributed.all_reduce(full)
        return full.to(part.device, dtype)

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` (any picklable object) on every rank."""
        if not self._collective:
            return value
        box = [value if self.is_main else None]
        torch.distributed.broadcast_object_list(box, src=0, device=self._object_device)
        return box[0]

    def on_main(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 only and give its result, or its galprism error, to every
        rank (so that a refused run folder stops all ranks with the same message)."""
        if not self._collective:
            return fn()
        outcome: tuple[str, Any] = ("ok", None)
        if self.is_main:
            try:
                outcome = ("ok", fn())
            except (GalprismError, OSError) as exc:
                outcome = ("error", exc)
        outcome = self.broadcast(outcome)
        if outcome[0] == "error":
            raise outcome[1]
        return outcome[1]

    def sync_generator(self, generator: torch.Generator) -> None:
        """Give every rank rank 0's state of ``generator`` (after work only rank 0 did)."""
        if self._collective:
            generator.set_state(self.broadcast(generator.get_state()))

    @property
    def _object_device(self) -> torch.device | None:
        return self.device if self.device.type == "cuda" else None


def _comm_device(backend: str, device: torch.device) -> torch.device:
    # nccl moves only CUDA tensors; gloo works on CPU tensors.
    return device if backend == "nccl" else torch.device("cpu")
