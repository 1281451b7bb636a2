"""Watching a run (monitors.py, engine.py): the online linear probe, the label-free collapse
monitors, the collapse warning and the data-wait fraction."""

import csv
import math
import os
import signal
import time
from contextlib import nullcontext

import pytest
import torch

import engine
import main
from monitors import (
    COLLAPSE_LOGS,
    FeatureTap,
    Monitors,
    OnlineProbe,
    alignment,
    embedding_std,
    rankme,
    uniformity,
)
from tests.conftest import small_test_split
from tests.test_reliability import FLAGS  # 4 steps x 2 epochs of simclr on small_cnn
from utils.checkpoint import load_checkpoint


def test_embedding_std_alignment_uniformity_on_constructed_embeddings():
    same = torch.ones(8, 16)
    assert embedding_std(same).item() == pytest.approx(0.0, abs=1e-6)  # collapsed
    torch.manual_seed(0)
    spread = torch.randn(4096, 64)  # isotropic: std of each normalised coordinate 1/sqrt(d)
    assert embedding_std(spread).item() == pytest.approx(1.0, abs=0.03)
    assert alignment(spread, spread).item() == pytest.approx(0.0, abs=1e-6)
    opposite = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert alignment(opposite, -opposite).item() == pytest.approx(4.0)
    # two points at distance 2: log exp(-2 * 4) = -8; one point repeated: log 1 = 0
    assert uniformity(opposite).item() == pytest.approx(-8.0)
    assert uniformity(torch.ones(3, 2)).item() == pytest.approx(0.0, abs=1e-6)


def test_rankme_is_the_effective_rank():
    torch.manual_seed(0)
    basis = torch.linalg.qr(torch.randn(32, 3))[0]  # 3 orthonormal columns
    coords = torch.linalg.qr(torch.randn(100, 3))[0]
    equal = coords @ basis.T  # rank 3, equal singular values
    assert rankme(equal) == pytest.approx(3.0, abs=0.01)
    assert rankme(torch.ones(50, 20)) == pytest.approx(1.0, abs=0.01)  # collapsed to a line
    full = torch.randn(2000, 16)
    assert 15 < rankme(full) <= 16


def test_feature_geometry_splits_the_shared_part_from_the_deviations():
    """scripts/feature_geometry.py: a large shared vector plus rank-2 deviations of norm 1 reads
    as rank 1.58 as it is, rank 2 once centred."""
    from scripts.feature_geometry import geometry

    shared = torch.zeros(8)
    shared[0] = 10.0
    deviations = torch.tensor([[0, 1.0, 0], [0, -1.0, 0], [0, 0, 1.0], [0, 0, -1.0]])
    features = shared + torch.cat([deviations, torch.zeros(4, 5)], dim=1)
    g = geometry(features)
    assert g["shared"] == pytest.approx(10.0) and g["deviation"] == pytest.approx(1.0)
    assert g["rankme_centred"] == pytest.approx(2.0, abs=0.01)
    p = torch.tensor([20.0, 2**0.5, 2**0.5])  # singular values: 10 x sqrt(4), then sqrt(2) x 2
    p = p / p.sum()
    assert g["rankme"] == pytest.approx(math.exp(-(p * p.log()).sum().item()), abs=1e-3)  # 1.58


def test_online_probe_learns_a_separable_problem():
    torch.manual_seed(0)
    centers = torch.randn(4, 32) * 3
    labels = torch.randint(0, 4, (2048,))
    features = centers[labels] + torch.randn(2048, 32)
    probe = OnlineProbe(32, 4, lr=0.1, seed=0)
    for _ in range(3):
        for i in range(0, 2048, 64):
            probe.train_step(features[i : i + 64], labels[i : i + 64])
    test_labels = torch.randint(0, 4, (512,))
    test = centers[test_labels] + torch.randn(512, 32)
    assert probe.evaluate(test, test_labels)["online_acc1"] > 95


def test_the_probes_batchnorm_reads_features_whose_shared_part_dwarfs_their_spread():
    """As an I-JEPA ViT-Tiny's mean-pooled tokens after 234 CIFAR-10 steps (norm 13.1, of which
    the shared mean 12.9, per-dimension std 0.14): plain SGD at lr 0.1 is thrown about by the
    shared part (measured: 19 % of 10 classes); normalised first, the probe separates them."""
    torch.manual_seed(0)
    shared = torch.randn(192)
    shared = 13 * shared / shared.norm()
    centers = torch.randn(10, 192) * 0.03

    def data(n):
        labels = torch.randint(0, 10, (n,))
        return shared + centers[labels] + 0.13 * torch.randn(n, 192), labels

    features, labels = data(100 * 256)
    test = data(1000)
    accuracy = {}
    for batch_norm in (False, True):
        probe = OnlineProbe(192, 10, lr=0.1, seed=0, batch_norm=batch_norm)
        for i in range(0, len(features), 256):
            probe.train_step(features[i : i + 256], labels[i : i + 256])
        accuracy[batch_norm] = probe.evaluate(*test)["online_acc1"]
    assert accuracy[True] > 85 and accuracy[False] < 40, accuracy


def test_online_probe_bn_is_on_for_new_runs_and_kept_by_resumed_ones():
    def flag(given, saved):
        args = main.get_args_parser().parse_args(
            [] if given is None else ["--online_probe_bn", given]
        )
        return main.online_probe_bn(args, saved)

    assert flag(None, None) is True and flag("false", None) is False
    assert flag(None, {"args": {"online_probe_bn": False}}) is False  # the resumed run's
    assert flag(None, {"args": {"online_probe_bn": True}}) is True
    assert flag("true", {"args": {"online_probe_bn": False}}) is True


def test_the_probe_trains_only_its_head_and_draws_no_random_numbers():
    """With or without the monitors' step, the backbone gets the same gradients and the global
    random state is untouched (the head's initial weights come from a generator of its own)."""
    torch.manual_seed(0)
    backbone = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 8))
    x, labels = torch.randn(4, 3, 2, 2), torch.tensor([0, 1, 2, 1])

    def backbone_grad(watch: bool):
        backbone.zero_grad()
        state = torch.get_rng_state()
        tap = FeatureTap(backbone) if watch else None
        monitors = Monitors(tap, OnlineProbe(8, 3, 0.1, seed=1) if watch else None, "simclr")
        with tap or nullcontext():
            z = backbone(x)
        out = {"loss": z.square().mean(), "z1": z, "z2": z + 1}
        sums = monitors.step(out, [x], labels, backbone)
        out["loss"].backward()
        assert torch.equal(state, torch.get_rng_state())
        if tap is not None:
            tap.handle.remove()
        return backbone[1].weight.grad.clone(), sums

    plain, _ = backbone_grad(False)
    watched, sums = backbone_grad(True)
    assert torch.equal(plain, watched)
    assert set(sums) == {"online_train_acc1", "collapse_std", "alignment", "uniformity"}


def test_the_collapse_warning_fires_on_a_collapse_only():
    monitors = Monitors(None, None, "byol")
    healthy = [monitors.check({"collapse_std": v}) for v in (0.8, 0.05, 0.7, 0.05, 0.05, 0.6)]
    assert healthy == [None] * 6  # never COLLAPSE_LOGS low logs in a row
    collapsing = [monitors.check({"collapse_std": 0.01}) for _ in range(COLLAPSE_LOGS + 2)]
    assert collapsing[: COLLAPSE_LOGS - 1] == [None] * (COLLAPSE_LOGS - 1)
    assert (
        "collapsing" in collapsing[COLLAPSE_LOGS - 1]
        and "--ema_momentum" in (collapsing[COLLAPSE_LOGS - 1])
    )
    assert collapsing[COLLAPSE_LOGS:] == [None, None]  # once


class Sleepy:
    """A loader whose every batch takes `delay` seconds to arrive."""

    def __init__(self, delay: float, steps: int = 4) -> None:
        self.delay, self.steps = delay, steps
        self.sampler = type("S", (), {"set_epoch": lambda *a: None, "seed": 0, "rank": 0})()

    def __iter__(self):
        for _ in range(self.steps):
            time.sleep(self.delay)
            yield (torch.ones(2),)

    def __len__(self) -> int:
        return self.steps


def data_wait(delay: float, work: float) -> float:
    """The data-wait share of 4 steps of `work` seconds fed by a loader that sleeps `delay`."""
    weight = torch.nn.Parameter(torch.ones(1))
    optimizer = torch.optim.SGD([weight], lr=0.0)
    run = engine.Engine(optimizer, [0.0] * 4, 4, 1, torch.device("cpu"))

    def step(x):
        time.sleep(work)  # the step's own work
        return (weight * x).sum(), 2, {}

    return run.train_epoch(Sleepy(delay), 0, step)["data_wait"]


def test_the_data_wait_fraction():
    # the loop's own time between batches counts as neither: steps long against it keep the
    # bounds with margin on loaded cores (a 20 ms step measured 0.17 with no delay there)
    assert data_wait(0.3, 0.02) > 0.85  # a loader that sleeps
    assert data_wait(0.0, 0.1) < 0.1  # data already there


@pytest.mark.full
def test_the_online_probe_leaves_the_pretraining_alone_and_resumes(run_dirs, monkeypatch):
    """Same seed, with and without the probe: the same loss curve and weights; stopped at step
    3 and resumed, the probe's head ends as in a straight run; its figures are in metrics.csv.
    On 200 test images (kNN and the probe's test pass every epoch of four runs)."""
    with small_test_split(200):
        probe_runs(run_dirs, monkeypatch)


def probe_runs(run_dirs, monkeypatch):

    def run(name, *extra):
        args = main.get_args_parser().parse_args([*FLAGS, *run_dirs, "--run_name", name, *extra])
        return main.main(args)

    def losses(out):
        with open(os.path.join(out["log_dir"], "metrics.csv"), newline="") as f:
            return [float(r["loss"]) for r in csv.DictReader(f) if r["kind"] == "step"]

    watched = run("watched", "--knn_freq", "1", "--knn_k", "5")
    plain = run("plain", "--online_probe", "false", "--knn_freq", "1", "--knn_k", "5")
    assert losses(watched) == losses(plain)
    a = load_checkpoint(os.path.join(watched["ckpt_dir"], "last.pt"))
    b = load_checkpoint(os.path.join(plain["ckpt_dir"], "last.pt"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert "online_probe" in a and "online_probe" not in b
    assert 0 <= watched["online_acc1"] <= watched["online_acc5"] <= 100
    assert math.isfinite(watched["rankme"]) and 0 < watched["collapse_std"]
    with open(os.path.join(watched["log_dir"], "metrics.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert all(r["online_train_acc1"] and r["data_wait"] for r in rows if r["kind"] == "step")
    assert os.path.getsize(os.path.join(watched["log_dir"], "monitors.png")) > 0

    calls = {"n": 0}
    original = engine.adjust_learning_rate

    def stop_at_3(optimizer, lr):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(optimizer, lr)

    monkeypatch.setattr(engine, "adjust_learning_rate", stop_at_3)
    with pytest.raises(SystemExit):
        run("stopped", "--knn_freq", "1", "--knn_k", "5")
    monkeypatch.undo()
    resumed = run("stopped", "--knn_freq", "1", "--knn_k", "5", "--resume", "auto")
    c = load_checkpoint(os.path.join(resumed["ckpt_dir"], "last.pt"))
    assert "bn.running_var" in a["online_probe"]["head"]  # --online_probe_bn, the default
    for key, value in a["online_probe"]["head"].items():
        assert torch.allclose(value.float(), c["online_probe"]["head"][key].float(), atol=1e-6), key
    assert resumed["online_acc1"] == pytest.approx(watched["online_acc1"])


def test_the_engine_prints_the_warning_when_the_embeddings_collapse(capsys):
    """Wired as main.py wires it: the step's monitor sums averaged per logged window, checked by
    Monitors.check, printed once; a run with spread-out embeddings prints nothing."""

    def run(collapsed: bool) -> str:
        torch.manual_seed(0)
        weight = torch.nn.Parameter(torch.ones(1))
        monitors = Monitors(None, None, "simsiam")
        loop = engine.Engine(
            torch.optim.SGD([weight], lr=0.0), [0.0] * 6, 6, 1, torch.device("cpu"),
            print_freq=1, on_log=monitors.check,
        )  # fmt: skip

        def step(x):
            z = torch.ones(8, 16) if collapsed else torch.randn(8, 16)
            sums = monitors.step({"z1": z, "z2": z}, [x], torch.zeros(8, dtype=torch.long), None)
            return (weight * x).sum(), 8, sums

        loop.train_epoch([(torch.ones(2),)] * 6, 0, step)
        captured = capsys.readouterr()
        return captured.err + captured.out

    assert "collapsing" not in run(collapsed=False)
    printed = run(collapsed=True)
    assert printed.count("the embeddings are collapsing") == 1 and "stop-gradient" in printed
