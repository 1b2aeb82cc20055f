"""Data-parallel plumbing: process group set-up and the few collectives the loop needs.

Rank 0 runs in the calling process (so the caller's callbacks work unchanged); ranks 1..N-1
are started with the spawn method, never forked from a process that already ran torch.
"""

from __future__ import annotations

import datetime
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from .quantizer import LsqQuantizer

TIMEOUT = datetime.timedelta(minutes=30)


@dataclass(frozen=True)
class Rank:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init(rank: Rank, port: int, device_type: str) -> None:
    """Join the job's process group: NCCL between GPUs, gloo on the CPU."""
    dist.init_process_group(
        "nccl" if device_type == "cuda" else "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank.rank,
        world_size=rank.world,
        timeout=TIMEOUT,
    )


def close() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def all_sum(*values: torch.Tensor) -> None:
    """Sum tensors over all ranks, in place (no-op outside a process group)."""
    if dist.is_initialized():
        for v in values:
            dist.all_reduce(v)


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when it is true on any (so all ranks stop at the same batch)."""
    if not dist.is_initialized():
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def broadcast_steps(model: nn.Module) -> None:
    """Give every replica rank 0's step sizes and level sets (each initialised from its own
    first batch)."""
    if dist.is_initialized():
        for q in (m for m in model.modules() if isinstance(m, LsqQuantizer)):
            dist.broadcast(q.step.data, src=0)
            if q.offset is not None:
                dist.broadcast(q.offset.data, src=0)
            if q.activation:
                signed = q.signed.to(torch.uint8)  # not every backend sends bool
                dist.broadcast(signed, src=0)
                q.signed.copy_(signed.bool())
                q.sync_levels()


SINGLE = Rank()
T = TypeVar("T")


def launch(
    world: int,
    device_type: str,
    rank_main: Callable[..., None],
    args: tuple[Any, ...],
    main: Callable[[Rank], T],
) -> T:
    """Run `main(rank 0)` in this process and `rank_main(index, world, port, device_type, *args)`
    in spawned processes for ranks 1..world-1 (index 0-based); return rank 0's result."""
    port = free_port()
    others = torch.multiprocessing.start_processes(
        rank_main,
        args=(world, port, device_type, *args),
        nprocs=world - 1,
        join=False,
        start_method="spawn",
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads // world))  # the ranks share this host's cores
    try:
        init(Rank(0, world), port, device_type)
        result = main(Rank(0, world))
    except BaseException:
        for p in others.processes:  # they would wait in a collective for rank 0 until timeout
            p.kill()
            p.join()
        raise
    finally:
        close()
        torch.set_num_threads(threads)
    while not others.join():
        pass
    return result


def join(index: int, world: int, port: int, device_type: str) -> Rank:
    """In a spawned process: join the job's process group as rank index + 1."""
    rank = Rank(index + 1, world)
    torch.set_num_threads(max(1, torch.get_num_threads() // world))
    init(rank, port, device_type)
    return rank
