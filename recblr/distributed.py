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
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
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
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT")
        if restart is None:
            dist.init_process_group(backend, rank=world.rank, world_size=world.size)
        else:  # torchrun keeps one store across restarts: keys of a dead group must not be read back
            store, _, _ = next(dist.rendezvous("env://", world.rank, world.size))
            dist.init_process_group(backend, store=dist.PrefixStore(f"recblr/restart_{restart}", store),
                                    rank=world.rank, world_size=world.size)
    return device


def shutdown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def shard(batch: Any, world: World) -> Any:
    """This rank's rows of a global batch (rows rank, rank+size, ...): with batches sorted by
    length, strided rows also split the tokens evenly."""
    return batch[world.rank :: world.size]


def shard_batch(batch: Any, world: World) -> Any:
    """This rank's rows of a training batch (recblr.train.Batch). A rank left without rows (a
    batch with fewer rows than ranks) gets one row of padding, which trains nothing but keeps
    the rank in the step's gradient all-reduce."""
    rows = np.arange(world.rank, len(batch.lengths), world.size)
    if len(rows) == 0:
        empty = np.zeros((1, 1), dtype=np.int64)
        return replace(batch, items=empty, lengths=np.ones(1, dtype=np.int64), targets=empty.copy(),
                       context=[np.zeros(0, dtype=np.int64)])
    return replace(batch, items=batch.items[rows], lengths=batch.lengths[rows], targets=batch.targets[rows],
                   context=[batch.context[r] for r in rows])


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


# exit codes every rank gives together on purpose: done, a user error, stopped by SIGINT / SIGTERM
_TOGETHER = (0, 2, 130, 143)


def launch(nproc: int, argv: list[str], settle_s: float = 10.0, grace_s: float = 30.0) -> int:
    """Run `recblr train argv` on `nproc` local processes with torchrun's environment.

    Ranks that stop together with the same exit code (a finished run, a user error rank 0 has
    printed, a stop by SIGTERM) give that code. When one rank fails alone, the others get
    `settle_s` to notice (their next collective fails), then SIGTERM, then SIGKILL after
    `grace_s`, and a RecblrError names the rank. SIGTERM/SIGINT to the launcher go to every
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
        while all(p.poll() is None for p in procs):
            time.sleep(0.05)
        first = next((r, p.returncode) for r, p in enumerate(procs) if p.returncode is not None)
        deadline = time.monotonic() + (0.0 if first[1] == 0 else settle_s)
        while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
            time.sleep(0.05)
        if first[1] == 0:
            for p in procs:
                p.wait()
        _stop(procs, grace_s)
        codes = [p.returncode for p in procs]
        if len(set(codes)) == 1 and codes[0] in _TOGETHER:
            return codes[0]
        rank, code = first if first[1] != 0 else next((r, c) for r, c in enumerate(codes) if c != 0)
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
