"""Running on several processes: ``torchrun`` setup, the training sampler, sharding, rank-0 writing.

Under ``torchrun`` (environment ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) :func:`setup` joins the
process group (NCCL on CUDA, gloo on CPU) and picks this rank's device. Without it everything here
degrades to the single-process case (rank 0 of 1), so callers never branch on "am I distributed".

Equivalence with one process: :class:`ShardedSampler` cuts the same global (seed, epoch)
permutation into the same global batches as a single process would, and gives rank ``r`` the
slice ``batch[r::world]``. The union of the ranks' micro-batches at step k is the single-process
batch at step k; with a mean loss per rank and DDP's gradient averaging, the update is the same.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator, List, Optional, Sequence, TypeVar

import torch
import torch.distributed as dist

from traitlens.errors import UserError

T = TypeVar("T")


@dataclass
class DistContext:
    """Where this process runs: its rank among ``world`` processes and its device."""

    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def env_world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def resolve_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> this rank's GPU when CUDA is available, else the CPU."""
    if isinstance(device, torch.device):
        return device
    device = str(device)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"device {device!r} asked for, but CUDA is not available here; use the cpu device",
                            option="device")
        if device == "cuda":
            return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device(device)


def setup(device: str = "auto") -> DistContext:
    """Join the process group when launched by ``torchrun``; return this process's :class:`DistContext`."""
    world = env_world()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs = {"device_id": dev} if backend == "nccl" else {}
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=30), **kwargs)
    return DistContext(rank=rank(), world=world_size(), local_rank=local_rank, device=dev)


def cleanup(sync: bool = True) -> None:
    """Leave the process group (if this process joined one).

    With ``sync`` (the normal end of a command) the ranks first meet at a barrier, so that no rank
    tears its connections down while another is still writing results and yet to leave: an early
    leaver could abort at exit (seen once with gloo: "terminate called without an active
    exception"). After an error pass ``sync=False``: the other ranks may never reach the barrier.
    """
    if dist.is_available() and dist.is_initialized():
        if sync and world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()


@contextlib.contextmanager
def leaving() -> Iterator[None]:
    """Run a command's body, then leave the process group: in step with the other ranks when the body
    finished, at once when it raised (:func:`cleanup`)."""
    try:
        yield
    except BaseException:
        cleanup(sync=False)
        raise
    cleanup()


def rank() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def is_main() -> bool:
    """True on the process that writes files and prints (rank 0, or the only process)."""
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def shard(items: Sequence[T], rank: Optional[int] = None, world: Optional[int] = None) -> List[T]:
    """This process's share of ``items``: every ``world``-th item starting at ``rank``.

    Interleaving keeps the shares balanced (sizes differ by at most one) and needs no padding, so a
    bulk command processes every input exactly once across the ranks.
    """
    r = globals()["rank"]() if rank is None else rank
    w = world_size() if world is None else world
    if not 0 <= r < w:
        raise ValueError(f"rank {r} outside a world of {w}")
    return list(items)[r::w]


def gather_objects(obj: Any) -> List[Any]:
    """Every rank's ``obj`` in rank order, on every rank (``[obj]`` in a single process)."""
    if world_size() == 1:
        return [obj]
    out: List[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (no-op in a single process)."""
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of the ``n`` training samples in ``epoch``: a function of (seed, epoch) only."""
    g = torch.Generator()
    g.manual_seed(int(seed) * 1_000_003 + int(epoch))
    return torch.randperm(n, generator=g)


class ShardedSampler:
    """Batch sampler for training that gives the same global batches on any number of processes.

    Each epoch, the (seed, epoch) permutation of ``n`` indices is truncated to a multiple of the
    global ``batch_size`` and cut into global batches; this rank yields ``batch[rank::world]``
    (``batch_size / world`` indices). Use as ``DataLoader(dataset, batch_sampler=sampler)``.
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, rank: Optional[int] = None,
                 world: Optional[int] = None, shuffle: bool = True):
        self.n = int(n)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.rank = globals()["rank"]() if rank is None else int(rank)
        self.world = world_size() if world is None else int(world)
        self.shuffle = shuffle
        self.epoch = 0
        if self.batch_size % self.world:
            raise UserError(f"batch_size {self.batch_size} is not divisible by the {self.world} processes; "
                            f"use a multiple of {self.world}")
        if self.n < self.batch_size:
            raise UserError(f"batch_size {self.batch_size} is larger than the {self.n} training images; "
                            f"lower batch_size")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n // self.batch_size

    def global_batches(self) -> List[List[int]]:
        order = epoch_permutation(self.n, self.seed, self.epoch) if self.shuffle else torch.arange(self.n)
        order = order[: len(self) * self.batch_size].tolist()
        return [order[i: i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    def __iter__(self) -> Iterator[List[int]]:
        for batch in self.global_batches():
            yield batch[self.rank:: self.world]


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model inside a DistributedDataParallel wrapper (or the model itself)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def wrap(model: torch.nn.Module, ctx: DistContext) -> torch.nn.Module:
    """Wrap ``model`` in DDP when running on several processes (BatchNorm synchronised on CUDA)."""
    if not ctx.distributed:
        return model
    find_unused = bool(getattr(model, "traitlens_ddp_find_unused", False))
    if ctx.device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=[ctx.device.index],
                                                         find_unused_parameters=find_unused)
    return torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=find_unused)
