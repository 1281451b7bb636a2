"""Losses that need the global batch, run in 2 gloo processes on CPU, equal one process on the
concatenated batch: the same loss, and gradients on each process's embeddings that are the world
size times the single-process ones (DDP's averaging of parameter gradients then makes them equal).
SwAV's Sinkhorn sums over both processes; its loss is a per-sample mean, so the processes' losses
average to the single-process one."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from methods.barlowtwins import barlow_twins_loss
from methods.simclr import nt_xent_loss
from methods.supcon import supcon_loss
from methods.swav import swav_loss
from methods.vicreg import vicreg_loss
from utils.distributed import gather, gather_with_grad

WORLD, N, D = 2, 6, 8  # each process holds N of the 2N samples


def losses(z1, z2, labels, gathered: bool):
    """Each loss as its method's module calls it (with the gathers), on [n, D] embeddings."""
    g = gather_with_grad if gathered else (lambda x: x)
    glabels = gather(labels) if gathered else labels
    scores = [torch.nn.functional.normalize(z, dim=1) @ PROTOTYPES.T for z in (z1, z2)]
    return {
        "nt_xent": nt_xent_loss(g(z1), g(z2), 0.5),
        "supcon": supcon_loss(g(torch.stack([z1, z2], dim=1)), glabels, 0.1),
        "barlow": barlow_twins_loss(g(z1), g(z2), 5e-3),
        "vicreg": vicreg_loss(g(z1), g(z2)),
        "swav": swav_loss(scores, [], 0.1),  # Sinkhorn all-reduces inside
    }


torch.manual_seed(0)
Z1, Z2 = torch.randn(WORLD * N, D), torch.randn(WORLD * N, D)
LABELS = torch.tensor([0, 1, 2, 0, 1, 2, 3, 0, 3, 1, 2, 3])
PROTOTYPES = torch.nn.functional.normalize(torch.randn(5, D), dim=1)


def grads_of(z1, z2, labels, gathered):
    out = {}
    for name in losses(z1, z2, labels, gathered):
        a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
        loss = losses(a, b, labels, gathered)[name]
        loss.backward()
        out[name] = (loss.detach(), a.grad, b.grad)
    return out


def worker(rank: int, port: int, results: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    part = slice(rank * N, (rank + 1) * N)
    results[rank] = grads_of(Z1[part], Z2[part], LABELS[part], gathered=True)
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes():
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(worker, args=(free_port(), results), nprocs=WORLD, join=True)
        return dict(results)


@pytest.mark.parametrize("name", ["nt_xent", "supcon", "barlow", "vicreg", "swav"])
def test_two_processes_equal_one_on_the_whole_batch(name, two_processes):
    single_loss, single_g1, single_g2 = grads_of(Z1, Z2, LABELS, gathered=False)[name]
    rank_losses = [two_processes[r][name][0] for r in range(WORLD)]
    if name == "swav":  # a mean of per-sample terms: the processes' means average to the whole
        assert torch.allclose(sum(rank_losses) / WORLD, single_loss, atol=1e-5)
    else:
        assert all(torch.allclose(loss, single_loss, atol=1e-5) for loss in rank_losses)
    for r in range(WORLD):
        part = slice(r * N, (r + 1) * N)
        _, g1, g2 = two_processes[r][name]
        assert torch.allclose(g1 / WORLD, single_g1[part], atol=1e-5), name
        assert torch.allclose(g2 / WORLD, single_g2[part], atol=1e-5), name
