"""Thin helpers around torch.distributed so single-process code paths need no special cases."""

from __future__ import annotations

import os
import time
from contextlib import contextmanager

import torch
import torch.distributed as dist


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_dist() else 0


def world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main() -> bool:
    return rank() == 0


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (returns a new tensor; identity without a process group)."""
    if not is_dist():
        return t
    out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / dist.get_world_size()


def max_over_ranks(value: int, device: torch.device | str = "cpu") -> int:
    """The largest of every rank's `value` (a collective: every rank must call it at the same point)."""
    if not is_dist():
        return int(value)
    t = torch.tensor([int(value)], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def gather_objects(obj: object) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank (picklable objects; [obj] without a group)."""
    if not is_dist():
        return [obj]
    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if is_dist():
        dist.barrier()


def init_from_env(device: str) -> tuple[int, int, int]:
    """Join the process group `torchrun` describes (RANK/WORLD_SIZE/LOCAL_RANK); no-op otherwise.

    Returns (rank, world_size, local_rank). NCCL on CUDA, gloo on CPU.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return 0, 1, 0
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)  # the device comes from the LOCAL rank, never the global one
    if not is_dist():
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size(), local_rank


# ----------------------------------------------------------------------------- data parallel on one CPU machine

CORES_ENV = "SDDIT_CORES"  # cores a launched run may use in all: rank 0 takes them while the others wait


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a cluster's allocation)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def local_procs(requested: int, device: torch.device) -> int:
    """How many data-parallel processes `sddit train` starts itself (`train.cpu_procs`).

    Only on a CPU device and outside torchrun. 0 = auto: two processes on a machine with two or more
    cores; 1 = one process using every core (the default: docs/results/cpu_procs.json, on this
    project's 2-core machine two 1-thread processes trained the default run at 0.93x the img/s of
    one 2-thread process; a machine whose threads scale worse may gain).
    """
    if device.type != "cpu" or "RANK" in os.environ:
        return 1
    cores = usable_cores()
    n = (2 if cores >= 2 else 1) if requested == 0 else requested
    return max(1, min(n, cores))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In a child before exec (Linux): get SIGTERM when the launcher dies, so no rank trains orphaned."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, 15)  # PR_SET_PDEATHSIG, SIGTERM
    except OSError:
        pass


def launch_local(argv: list[str], procs: int) -> int:
    """Run `sddit <argv>` as `procs` gloo data-parallel processes on this machine, as torchrun would.

    Why not torchrun itself: a failing rank would end in its multi-screen ChildFailedError, and the
    user would have to type it. Each rank gets cores/procs threads (and rank 0 all of them while the
    others wait: the FID reference, grids, the final FID). Rank 0 prints as a single process does;
    the other ranks' stderr is kept and printed only if one of them fails alone. A signal to this
    process (Ctrl-C, SIGTERM) goes to every rank, which save and stop at the same step.
    Returns the exit status: rank 0's, else the first failing rank's.
    """
    import signal
    import subprocess
    import sys
    import tempfile

    cores = usable_cores()
    env = {
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(_free_port()),
        "WORLD_SIZE": str(procs),
        "LOCAL_WORLD_SIZE": str(procs),
        "OMP_NUM_THREADS": str(max(1, cores // procs)),
        CORES_ENV: str(cores),
    }
    cmd = [sys.executable, "-m", "sddit.cli", *argv]
    logs = [tempfile.TemporaryFile() for _ in range(procs - 1)]
    children = []
    for r in range(procs):
        out = {} if r == 0 else {"stdout": subprocess.DEVNULL, "stderr": logs[r - 1]}
        children.append(
            subprocess.Popen(
                cmd,
                env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                start_new_session=True,
                preexec_fn=_die_with_parent,
                **out,
            )
        )

    def forward(signum, frame):
        for c in children:
            if c.poll() is None:
                c.send_signal(signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        codes: list[int | None] = [None] * procs
        while any(c is None for c in codes):
            for i, c in enumerate(children):
                codes[i] = c.poll()
            failed = [c for c in codes if c]
            if failed:  # one rank is gone: the others would wait for it in a collective
                for c in children:
                    if c.poll() is None:
                        try:
                            c.wait(timeout=30)
                        except subprocess.TimeoutExpired:
                            c.terminate()
                codes = [c.wait() for c in children]
                break
            time.sleep(0.2)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if codes[0] == 0 and any(codes[1:]):
        r = next(i for i, c in enumerate(codes) if c)
        logs[r - 1].seek(0)
        lines = logs[r - 1].read().decode(errors="replace").strip().splitlines()
        print(
            f"error: rank {r} of {procs} failed: {lines[-1] if lines else f'exit status {codes[r]}'}", file=sys.stderr
        )
    for f in logs:
        f.close()
    return codes[0] or next((c for c in codes if c), 0)


@contextmanager
def all_cores():
    """While rank 0 works alone and the other ranks wait (FID reference, grids, FID), give it every
    core the launch had (`launch_local`); a no-op otherwise."""
    cores, previous = int(os.environ.get(CORES_ENV, 0)), torch.get_num_threads()
    widen = is_main() and cores > previous
    if widen:
        torch.set_num_threads(cores)
    try:
        yield
    finally:
        if widen:
            torch.set_num_threads(previous)
