"""Training on several processes: DDP setup from torchrun's environment, the user sharding, the
few collectives the loop needs, and `--nproc N` (a launcher that sets the same environment).

Every rank builds the same global batch list from the same seed; rank r trains on rows
r, r+N, r+2N, ... of each global batch, so one epoch sees the same (prefix, next item) pairs in
the same global batches as one process with the same `--batch-size`. Each rank's loss is its
shard's summed loss over the global batch's pair count, times N: DDP's gradient average then
equals the one-process mean over the whole batch. Only rank 0 evaluates, logs and writes files;
the other ranks receive the validation score so that early stopping stops every rank together.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from recblr.errors import RecblrError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """The rank that evaluates, logs and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world_from_env() -> World:
    """The world torchrun (or `--nproc`) describes in RANK / WORLD_SIZE / LOCAL_RANK."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise RecblrError("RANK / WORLD_SIZE / LOCAL_RANK are not integers; start with torchrun or --nproc") from None
    return World(rank, size, local)


def init(world: World, device: torch.device) -> torch.device:
    """Join the process group (gloo on CPU, NCCL on CUDA); returns this rank's device."""
    if not world.distributed:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, rank=world.rank, world_size=world.size)
    return device


def shutdown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def shard(batch: Any, world: World) -> Any:
    """This rank's rows of a global batch (rows rank, rank+size, ...): with batches sorted by
    length, strided rows also split the tokens evenly."""
    return batch[world.rank :: world.size]


def _tensor(values: list[float], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, device=device)


def all_sum(values: list[float], world: World, device: torch.device) -> list[float]:
    """Element-wise sum over ranks (loss totals for the log)."""
    if not world.distributed:
        return values
    t = _tensor(values, device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def any_rank(flags: list[bool], world: World, device: torch.device) -> list[bool]:
    """Element-wise OR over ranks: a stop request or a due save seen by one rank is seen by all,
    at the same step."""
    if not world.distributed:
        return flags
    t = _tensor([float(f) for f in flags], device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def from_main(value: float, world: World, device: torch.device) -> float:
    """Rank 0's value on every rank (the validation score that drives early stopping)."""
    if not world.distributed:
        return value
    t = _tensor([value], device)
    dist.broadcast(t, src=0)
    return float(t.item())


def gather_to_main(obj: Any, world: World) -> list[Any] | None:
    """Every rank's `obj` on rank 0 (in rank order), None elsewhere: per-rank RNG states."""
    if not world.distributed:
        return [obj]
    out = [None] * world.size if world.main else None
    dist.gather_object(obj, out, dst=0)
    return out


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(nproc: int, argv: list[str], grace_s: float = 30.0) -> int:
    """Run `recblr train argv` on `nproc` local processes with torchrun's environment.

    When one rank exits with an error the others are stopped (SIGTERM, then SIGKILL after
    `grace_s`) and a RecblrError names the rank. SIGTERM/SIGINT to the launcher go to every
    rank, which then write their resumable checkpoint and exit.
    """
    if nproc < 1:
        raise RecblrError(f"--nproc {nproc}: must be >= 1")
    port = _free_port()
    procs = []
    for rank in range(nproc):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(nproc),
                   LOCAL_WORLD_SIZE=str(nproc), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, "-m", "recblr", "train", *argv], env=env))

    def forward(signum, _frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        failed = None
        while failed is None and any(p.poll() is None for p in procs):
            failed = next(((r, p.returncode) for r, p in enumerate(procs) if p.poll() not in (None, 0)), None)
            time.sleep(0.05)
        if failed is None:
            failed = next(((r, p.returncode) for r, p in enumerate(procs) if p.returncode != 0), None)
        if failed is None:
            return 0
        _stop(procs, grace_s)
        rank, code = failed
        if code == 2 and all(p.returncode == 2 for p in procs):
            return 2  # the same user error on every rank, already printed once per rank
        how = f"signal {-code}" if code < 0 else f"exit code {code}"
        raise RecblrError(f"--nproc {nproc}: rank {rank} failed ({how}); stopped the other ranks")
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _stop(procs: list[subprocess.Popen], grace_s: float) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
