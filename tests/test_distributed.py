"""Losses that need the global batch, run in 2 gloo processes on CPU, equal one process on the
concatenated batch: the same loss, and gradients on each process's embeddings that are the world
size times the single-process ones (DDP's averaging of parameter gradients then makes them equal).
SwAV's Sinkhorn sums over both processes; its loss is a per-sample mean, so the processes' losses
average to the single-process one."""

import csv
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from methods.barlowtwins import barlow_twins_loss
from methods.dcl import dcl_loss
from methods.lejepa import lejepa_loss
from methods.simclr import nt_xent_loss
from methods.supcon import supcon_loss
from methods.swav import sinkhorn, swav_loss
from methods.vicreg import vicreg_loss
from probe import classifier_step
from tests.conftest import backbone_for
from utils.accel import Speed
from utils.data import EpochSampler, ShardSampler
from utils.distributed import gather, gather_with_grad, scale_gradient, sum_over_processes
from utils.knn import extract_features
from utils.processes import free_port, run_processes

pytestmark = pytest.mark.full  # whole runs: the full suite only (conftest --fast)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORLD, N, D = 2, 6, 8  # each process holds N of the 2N samples


def losses(z1, z2, labels, gathered: bool):
    """Each loss as its method's module calls it (with the gathers), on [n, D] embeddings."""
    g = gather_with_grad if gathered else (lambda x: x)
    world = dist.get_world_size() if gathered else 1
    glabels = gather(labels) if gathered else labels
    scores = [torch.nn.functional.normalize(z, dim=1) @ PROTOTYPES.T for z in (z1, z2)]
    return {
        "nt_xent": nt_xent_loss(g(z1), g(z2), 0.5),
        # DCL's and DCLW's two directions over the gathered batch, as their module sums them
        "dcl": dcl_loss(g(z1), g(z2), 0.5) + dcl_loss(g(z2), g(z1), 0.5),
        "dclw": dcl_loss(g(z1), g(z2), 0.5, 0.5) + dcl_loss(g(z2), g(z1), 0.5, 0.5),
        "supcon": supcon_loss(g(torch.stack([z1, z2], dim=1)), glabels, 0.1),
        "barlow": barlow_twins_loss(g(z1), g(z2), 5e-3),
        # the official main.py's gradient under DDP (BarlowTwins' official_ddp_gradient)
        "barlow_official": scale_gradient(barlow_twins_loss(g(z1), g(z2), 5e-3), 1 / world),
        "vicreg": vicreg_loss(g(z1), g(z2)),
        "swav": swav_loss(scores, [], 0.1),  # Sinkhorn all-reduces inside
        # LeJEPA: the prediction term over this process's images, SIGReg over everyone's
        "lejepa": lejepa_loss(
            torch.stack([z1, z2]), 2, DIRECTIONS, 0.5, torch.stack([g(z1), g(z2)])
        ),  # fmt: skip
    }


torch.manual_seed(0)
Z1, Z2 = torch.randn(WORLD * N, D), torch.randn(WORLD * N, D)
LABELS = torch.tensor([0, 1, 2, 0, 1, 2, 3, 0, 3, 1, 2, 3])
PROTOTYPES = torch.nn.functional.normalize(torch.randn(5, D), dim=1)
DIRECTIONS = torch.nn.functional.normalize(torch.randn(D, 7), dim=0)
# DINOv2's masked patches: unequal counts per process (4 and 7), Sinkhorn-Knopp over all 11
PATCH_SCORES = 0.3 * torch.randn(11, 5)
PATCH_PARTS = (slice(0, 4), slice(4, 11))


def grads_of(z1, z2, labels, gathered):
    out = {}
    for name in losses(z1, z2, labels, gathered):
        a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
        loss = losses(a, b, labels, gathered)[name]
        loss.backward()
        out[name] = (loss.detach(), a.grad, b.grad)
    return out


def worker(rank: int, results: dict) -> None:
    part = slice(rank * N, (rank + 1) * N)
    results[rank] = grads_of(Z1[part], Z2[part], LABELS[part], gathered=True)
    results[f"features{rank}"] = sharded_features(rank)
    results[f"probe{rank}"] = probe_accuracy(rank)
    results[f"codes{rank}"] = sinkhorn(PATCH_SCORES[PATCH_PARTS[rank]], 0.07, 3, torch.tensor(11.0))
    # the engine's logged sums (monitors' tensors, or floats): rank 0 has 1 and 2.5, rank 1 2, 5
    results[f"sums{rank}"] = sum_over_processes(
        {"acc": torch.tensor(rank + 1.0), "std": 2.5 * (rank + 1)}
    )


def probe_accuracy(rank: int | None) -> tuple[float, float]:
    """The probe step's train_acc1 as the engine averages it (sums over processes / count), when
    each process holds its half of the batch (images) and when each holds all of it (cached
    features); rank None: one process on the whole batch."""
    head = torch.nn.Linear(D, 4)
    with torch.no_grad():
        head.weight.copy_(PROTOTYPES[:4])
        head.bias.zero_()
    accuracies = []
    for sharded in (True, False):
        step = classifier_step(
            head, torch.nn.Identity(), torch.device("cpu"), Speed(), False, None, sharded
        )
        part = slice(rank * N, (rank + 1) * N) if sharded and rank is not None else slice(None)
        _, count, sums = step(Z1[part], LABELS[part])
        accuracies.append(sum_over_processes(sums)["train_acc1"] / count)
    return tuple(accuracies)


def sharded_features(rank: int, count: int = 7):
    """extract_features over a loader that reads this process's shard (as main.py's kNN does)."""
    data = torch.utils.data.TensorDataset(Z1[:count], LABELS[:count])
    sampler = ShardSampler(count, rank, WORLD) if dist.is_initialized() else None
    loader = torch.utils.data.DataLoader(data, batch_size=2, sampler=sampler)
    torch.manual_seed(1)
    return extract_features(torch.nn.Linear(D, 3), loader, torch.device("cpu"))


@pytest.fixture(scope="module")
def two_processes():
    return run_processes(worker, WORLD)


@pytest.mark.parametrize(
    "name", ["nt_xent", "dcl", "dclw", "supcon", "barlow", "vicreg", "swav", "lejepa"]
)
def test_two_processes_equal_one_on_the_whole_batch(name, two_processes):
    single_loss, single_g1, single_g2 = grads_of(Z1, Z2, LABELS, gathered=False)[name]
    rank_losses = [two_processes[r][name][0] for r in range(WORLD)]
    if name in ("swav", "lejepa"):  # per-sample means: the processes' average to the whole
        assert torch.allclose(sum(rank_losses) / WORLD, single_loss, atol=1e-5)
    else:
        assert all(torch.allclose(loss, single_loss, atol=1e-5) for loss in rank_losses)
    for r in range(WORLD):
        part = slice(r * N, (r + 1) * N)
        _, g1, g2 = two_processes[r][name]
        assert torch.allclose(g1 / WORLD, single_g1[part], atol=1e-5), name
        assert torch.allclose(g2 / WORLD, single_g2[part], atol=1e-5), name


def test_sinkhorn_over_unequal_counts_equals_one_process(two_processes):
    """DINOv2's codes of the masked patches, which the processes hold in different numbers:
    given the count over all processes, they are those of one process on all the patches."""
    codes = torch.cat([two_processes["codes0"], two_processes["codes1"]])
    assert torch.allclose(codes, sinkhorn(PATCH_SCORES, 0.07, 3), atol=1e-6)


def test_barlow_twins_official_ddp_gradient_is_each_process_own_images(two_processes):
    """main.py's all_reduce of the cross-correlation is outside autograd: each process's
    embedding gradient is the single process's on its own slice (no sum over processes), so
    DDP's average of parameter gradients is 1/W of the whole batch's, as the official run's."""
    single_loss, single_g1, single_g2 = grads_of(Z1, Z2, LABELS, gathered=False)["barlow"]
    for r in range(WORLD):
        part = slice(r * N, (r + 1) * N)
        loss, g1, g2 = two_processes[r]["barlow_official"]
        assert torch.allclose(loss, single_loss, atol=1e-5)  # the loss logged is the same
        assert torch.allclose(g1, single_g1[part], atol=1e-5)
        assert torch.allclose(g2, single_g2[part], atol=1e-5)
        assert torch.allclose(g1, two_processes[r]["barlow"][1] / WORLD, atol=1e-6)


def test_features_of_shards_gather_into_the_whole_set_in_order(two_processes):
    features, labels = sharded_features(0)  # one process: plain loader, no sampler
    for r in range(WORLD):  # 7 items in blocks of 4: the padding row is dropped
        got_features, got_labels = two_processes[f"features{r}"]
        assert got_features.shape == (7, 3)
        assert torch.allclose(got_features, features) and torch.equal(got_labels, labels)


def test_probe_train_accuracy_is_over_the_whole_batch(two_processes):
    """main_linear's train_acc1 under DDP: on images (each process its share) and on cached
    features (each process all of them), the single process's figure on the whole batch."""
    single = probe_accuracy(None)[0]
    assert 0 < single < 100  # the check can tell halves apart
    for r in range(WORLD):
        assert two_processes[f"probe{r}"] == pytest.approx((single, single))


def test_logged_sums_are_over_all_processes(two_processes):
    """The online probe's and collapse monitors' window sums count every process's images."""
    for r in range(WORLD):
        assert two_processes[f"sums{r}"] == {"acc": 3.0, "std": 7.5}
    assert sum_over_processes({"acc": torch.tensor(4.0)}) == {"acc": 4.0}  # one process: as is


@pytest.mark.parametrize("start_batches", [0, 3])
def test_epoch_sampler_shards_make_the_single_process_batches(start_batches):
    """With per-process batches of B/W, the W processes' j-th batches together hold the images
    of the j-th batch of B in one process, also when resuming after some batches."""
    n, batch, world = 50, 8, 2
    single = EpochSampler(n, seed=5)
    single.set_epoch(3, start_batches * batch)
    order = list(single)
    shards = []
    for r in range(world):
        sampler = EpochSampler(n, seed=5, rank=r, num_replicas=world)
        sampler.set_epoch(3, start_batches * batch)
        shards.append(list(sampler))
        assert len(sampler) == len(shards[-1]) == (n - start_batches * batch) // world
    per_process = batch // world
    for j in range(len(order) // batch):
        together = {i for shard in shards for i in shard[j * per_process : (j + 1) * per_process]}
        assert together == set(order[j * batch : (j + 1) * batch])


def test_shard_sampler_blocks_cover_the_set_in_order():
    blocks = [list(ShardSampler(7, r, 3)) for r in range(3)]
    assert blocks == [[0, 1, 2], [3, 4, 5], [6, 6, 6]]  # padded with the last index
    assert sum(blocks, [])[:7] == list(range(7))


def torchrun() -> list[str]:
    """The command prefix of `torchrun --nproc_per_node=2` on a free port."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
            "--master_port", str(free_port())]  # fmt: skip


def test_torchrun_two_processes_write_one_run(tmp_path):
    """`torchrun --nproc_per_node=2 main.py ...` on the CPU (gloo): --batch_size is the global
    batch, rank 0 alone writes one metrics.csv, args.json and set of checkpoints."""
    flags = ["--model_name", "simclr", "--backbone", "small_cnn", "--image_size", "16",
             "--dataset_name", "synthetic", "--device", "cpu", "--limit", "256",
             "--num_epochs", "2", "--batch_size", "64", "--num_workers", "0", "--knn_freq", "2",
             "--knn_k", "20", "--logs_dir", str(tmp_path / "logs"),
             "--ckpt_dir", str(tmp_path / "ckpts"), "--run_name", "ddp"]  # fmt: skip
    command = [*torchrun(), "main.py", *flags]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("done in") == 1  # rank 1 prints nothing
    run = tmp_path / "logs" / "ddp"
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    epochs = [r for r in rows if r["kind"] == "epoch"]
    assert [r["step"] for r in epochs] == ["0", "4", "8"]  # 256 images / 64 global = 4 steps
    assert all(float(r["knn_acc1"]) > 0 for r in epochs[::2])
    assert json.loads((run / "args.json").read_text())["world_size"] == 2
    assert sorted(os.listdir(tmp_path / "ckpts" / "ddp")) == ["epoch_0002.pt", "last.pt"]
    state = torch.load(tmp_path / "ckpts" / "ddp" / "last.pt", weights_only=True)
    assert state["epoch"] == 2 and not any(k.startswith("module.") for k in state["model"])

    # kNN evaluation of that checkpoint: 2 processes (features gathered) == 1 process
    knn = ["--eval", "knn", "--ckpt", str(tmp_path / "ckpts" / "ddp" / "last.pt")]
    results = []
    for launcher in (torchrun(), [sys.executable]):
        done = subprocess.run(
            [*launcher, "main_linear.py", *flags[:-2], *knn, "--run_name", f"knn{len(results)}"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        results.append(
            json.loads((tmp_path / "logs" / f"knn{len(results)}" / "results.json").read_text())
        )
    assert results[0]["acc1"] == results[1]["acc1"] and results[0]["acc5"] == results[1]["acc5"]


TIMED = ("images_per_s", "data_wait")  # metrics.csv's wall-clock columns


@pytest.mark.full
@pytest.mark.parametrize("method", ["mae", "ijepa", "mocov2", "dinov2"])
def test_torchrun_trains_and_resumes_the_methods_with_per_process_parts(method, tmp_path):
    """Under `torchrun --nproc_per_node=2` (gloo), MAE, I-JEPA and DINOv2 each mask their own 8
    images of the global batch of 16 (DINOv2's Sinkhorn-Knopp over both), and MoCo v2 shuffles
    its keys across the processes (Shuffle-BN, one BatchNorm split per process); the run writes
    one set of files, and a second torchrun continues it from its epoch-2 checkpoint to the third
    epoch, in a new run folder (resuming in place would overwrite the later checkpoints) that
    starts with the first run's metrics up to that checkpoint."""
    backbone, size = backbone_for(method)
    flags = ["--model_name", method, "--backbone", backbone, "--image_size", str(size),
             "--dataset_name", "synthetic", "--device", "cpu", "--limit", "32",
             "--batch_size", "16", "--num_workers", "0", "--warmup_epochs", "0",
             "--online_probe", "false", "--rankme_images", "0",
             "--logs_dir", str(tmp_path / "logs"), "--ckpt_dir", str(tmp_path / "ckpts"),
             "--run_name", "ddp"]  # fmt: skip
    flags += {"mae": ["--decoder_depth", "1"], "ijepa": ["--pred_depth", "1"],
              "mocov2": ["--queue_size", "64"],
              "dinov2": ["--out_dim", "64", "--proj_hidden_dim", "64", "--num_crops", "0",
                         "--image_size", "16"]}[method]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    resume = ["--resume", str(tmp_path / "ckpts" / "ddp" / "epoch_0002.pt"), "--run_name", "ddp2"]
    for extra in ([], resume):
        command = [*torchrun(), "main.py", *flags, "--num_epochs", "3", "--save_freq", "1", *extra]
        done = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "logs" / "ddp2"
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    epochs = [r for r in rows if r["kind"] == "epoch"]
    assert [r["step"] for r in epochs] == ["2", "4", "6"]  # 32 images / 16 global = 2 steps
    steps = [float(r["loss"]) for r in rows if r["kind"] == "step"]
    assert steps and all(torch.isfinite(torch.tensor(steps)))
    assert json.loads((run / "args.json").read_text())["world_size"] == 2
    state = torch.load(tmp_path / "ckpts" / "ddp2" / "last.pt", weights_only=True)
    assert state["epoch"] == 3 and not any(k.startswith("module.") for k in state["model"])
    # each process's random state was saved and restored: the weights of a run never stopped
    straight = torch.load(tmp_path / "ckpts" / "ddp" / "last.pt", weights_only=True)["model"]
    for key, value in state["model"].items():
        assert torch.allclose(value.float(), straight[key].float(), atol=1e-6), key
    with open(tmp_path / "logs" / "ddp" / "metrics.csv") as f:
        untimed = lambda row: {k: v for k, v in row.items() if k not in TIMED}  # noqa: E731
        assert [untimed(r) for r in csv.DictReader(f)] == [untimed(r) for r in rows]
