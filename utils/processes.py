"""Run a function in several gloo processes on this machine: the two-process tests and
`scripts/official_check.py --processes`."""

import os
import socket
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank: int, fn: Callable, port: int, world: int, results: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        fn(rank, results)
    finally:
        dist.destroy_process_group()


def run_processes(fn: Callable[[int, dict], None], world: int) -> dict:
    """Call fn(rank, results) in `world` processes of one process group; return what they put
    in `results` (a shared dict). `fn` must be a module-level function (spawn pickles it)."""
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_join, args=(fn, free_port(), world, results), nprocs=world, join=True)
        return dict(results)
