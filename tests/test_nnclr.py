"""NNCLR: nearest-neighbour selection on a toy support set, the loss against hand-computed
values and a loop, the support set (filled after the step, wrap-around, checkpoint and resume),
and main.py end to end. Its loss under two processes is checked in tests/test_moco.py."""

import math
import os

import pytest
import torch
import torch.nn.functional as F

from methods import METHODS, build_method
from methods.nnclr import nearest_neighbours, nnclr_loss
from networks import build_backbone
from utils.checkpoint import load_checkpoint


def test_nearest_neighbour_is_by_cosine_not_dot_product():
    support = torch.tensor([[10.0, 0.0], [0.6, 0.8], [0.0, -1.0], [-1.0, 0.0]])
    z = torch.tensor([[0.6, 0.8], [3.0, 0.5], [0.1, -2.0], [-5.0, 4.0]])
    # z0: dot with row 0 is 6 > 1 but its cosine is 0.6; z3 = (-0.78, 0.62): row 3 (0.78)
    # beats row 1 (0.03)
    assert torch.equal(nearest_neighbours(z, support), support[[1, 0, 2, 3]])


def test_nearest_neighbour_of_a_support_row_is_itself():
    torch.manual_seed(0)
    support = torch.randn(20, 8)
    assert torch.equal(nearest_neighbours(2.5 * support[[3, 7, 19]], support), support[[3, 7, 19]])


def test_nnclr_loss_hand_computed_rows_and_columns():
    # T = 1: logits [[1, 1], [0, 0]]. Rows: log 2 each. Columns [[1, 0], [1, 0]]:
    # log(1 + e^-1) for column 0, log(1 + e) for column 1
    neighbours = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    p = torch.tensor([[3.0, 0.0], [1.0, 0.0]])
    rows = math.log(2)
    cols = (math.log(1 + math.exp(-1)) + math.log(1 + math.e)) / 2
    loss = nnclr_loss(neighbours, p, temperature=1.0)
    assert loss.item() == pytest.approx((rows + cols) / 2, rel=1e-6)


def test_nnclr_loss_matches_a_loop():
    torch.manual_seed(0)
    nn_, p = torch.randn(5, 8), torch.randn(5, 8)
    t, n = 0.1, 5
    s = [
        [float(nn_[i] @ p[k] / nn_[i].norm() / p[k].norm()) / t for k in range(n)] for i in range(n)
    ]
    expected = 0.0
    for i in range(n):
        expected += -s[i][i] + math.log(sum(math.exp(s[i][k]) for k in range(n)))
        expected += -s[i][i] + math.log(sum(math.exp(s[k][i]) for k in range(n)))
    assert nnclr_loss(nn_, p, t).item() == pytest.approx(expected / (2 * n), rel=1e-5)


def test_nnclr_loss_is_log_n_when_all_similarities_are_equal():
    n = 6
    eye = torch.eye(2 * n)
    assert nnclr_loss(eye[:n], eye[n:]).item() == pytest.approx(math.log(n), rel=1e-6)


def test_nnclr_loss_sends_no_gradient_to_the_neighbours():
    neighbours = torch.randn(4, 8, requires_grad=True)
    p = torch.randn(4, 8, requires_grad=True)
    nnclr_loss(neighbours, p).backward()
    assert p.grad is not None and neighbours.grad is None


def tiny(**kwargs):
    torch.manual_seed(0)
    backbone, feat_dim = build_backbone("small_cnn", 16)
    dims = dict(proj_hidden_dim=32, proj_dim=16, pred_hidden_dim=32, queue_size=12)
    return build_method("nnclr", backbone, feat_dim, **{**dims, **kwargs})


def two_views(n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 3, 16, 16, generator=g), torch.randn(n, 3, 16, 16, generator=g)]


def train_step(model, optimizer, views, step=0):
    loss = model(views)["loss"]
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    model.after_optimizer_step(step, 100)
    return loss


def embed(model, views):
    """z and p of both views as the module computes them (one call per view)."""
    z = [model.projector(model.backbone(v)) for v in views]
    return z, [model.predictor(x) for x in z]


def test_support_set_starts_empty_then_fills_with_first_view_projections_after_the_step():
    model = tiny()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    views = two_views()
    model.eval()
    with torch.no_grad():
        (z1, z2), (p1, p2) = embed(model, views)
        # empty support set: each view's own projection is its positive
        expected = (nnclr_loss(z1, p2, 0.1) + nnclr_loss(z2, p1, 0.1)) / 2
        assert torch.allclose(model(views)["loss"], expected, atol=1e-6)
    assert model.queue_filled.item() == 0  # evaluation forwards leave it alone
    model.train()
    with torch.no_grad():
        (z1, _), _ = embed(model, views)  # BatchNorm on batch statistics, as in the step
    loss = model(views)["loss"]
    assert model.queue_filled.item() == 0  # not before the optimizer step
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    model.after_optimizer_step(0, 100)
    assert model.queue_filled.item() == 8 and model.queue_ptr.item() == 8
    assert torch.allclose(model.queue[:8], F.normalize(z1, dim=1), atol=1e-5)
    assert model.queue[8:].abs().sum() == 0

    train_step(model, optimizer, two_views(seed=2), step=1)  # 8 more: 4 fill, 4 wrap
    assert model.queue_filled.item() == 12 and model.queue_ptr.item() == 4


def test_module_uses_the_nearest_neighbours_among_the_filled_rows():
    model = tiny()
    model.eval()
    views = two_views()
    with torch.no_grad():
        (z1, z2), (p1, p2) = embed(model, views)
        # a toy support set: 3 real rows, the rest zero and unfilled (never chosen)
        support = F.normalize(torch.randn(3, 16), dim=1)
        model.queue[:3] = support
        model.queue_filled.fill_(3)
        nn1, nn2 = nearest_neighbours(z1, support), nearest_neighbours(z2, support)
        expected = (nnclr_loss(nn1, p2, 0.1) + nnclr_loss(nn2, p1, 0.1)) / 2
        assert torch.allclose(model(views)["loss"], expected, atol=1e-6)
        assert torch.equal(model.neighbours(z1), nn1)
        # each neighbour is the support row of largest cosine, checked by a loop
        for i in range(8):
            cosines = [float(F.cosine_similarity(z1[i], s, dim=0)) for s in support]
            assert torch.equal(nn1[i], support[cosines.index(max(cosines))])


def test_support_set_is_in_the_checkpoint_and_resumes():
    model = tiny()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for step in range(2):
        train_step(model, optimizer, two_views(seed=step), step)
    state = model.state_dict()
    assert {"queue", "queue_ptr", "queue_filled"} <= set(state)
    restored = tiny()
    restored.load_state_dict(state)
    assert torch.equal(restored.queue, model.queue)
    assert (restored.queue_ptr.item(), restored.queue_filled.item()) == (4, 12)
    model.eval()
    restored.eval()
    views = two_views(seed=5)
    with torch.no_grad():
        assert torch.equal(model(views)["loss"], restored(views)["loss"])


def test_gradient_reaches_backbone_projector_and_predictor():
    model = tiny()
    model(two_views())["loss"].backward()
    for part in (model.backbone, model.projector, model.predictor):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())


def test_defaults_are_the_papers():
    backbone, feat_dim = build_backbone("small_cnn", 16)
    model = build_method("nnclr", backbone, feat_dim)
    linears = [m for m in model.projector if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [2048, 2048, 256]
    assert isinstance(model.projector[-1], torch.nn.BatchNorm1d)
    assert isinstance(model.predictor[-1], torch.nn.Linear)  # no BN on the prediction
    assert model.predictor[0].out_features == 4096
    assert model.temperature == 0.1 and model.queue.shape == (98304, 256)
    assert METHODS["nnclr"].augmentation == "byol"
    with pytest.raises(ValueError, match="queue_size"):
        build_method("nnclr", backbone, feat_dim, queue_size=0)


def test_the_projectors_last_batch_norm_is_affine_as_solo_learns():
    """solo-learn 9187ea3 solo/methods/nnclr.py: Linear-BN-ReLU-Linear-BN-ReLU-Linear-BN, every
    BatchNorm1d with its default affine scale and shift; --affine_last_bn false: none on the
    last (as the short tables' rows were measured)."""
    last = tiny().projector[-1]
    assert isinstance(last, torch.nn.BatchNorm1d) and last.affine
    assert last.weight.shape == last.bias.shape == (16,) and last.weight.requires_grad
    old = tiny(affine_last_bn=False).projector[-1]
    assert isinstance(old, torch.nn.BatchNorm1d) and not old.affine
    assert not list(old.parameters())
    # the rest of the head, its initial weights included, is the same either way
    new_sd, old_sd = tiny().state_dict(), tiny(affine_last_bn=False).state_dict()
    assert set(new_sd) - set(old_sd) == {"projector.7.weight", "projector.7.bias"}
    assert all(torch.equal(old_sd[k], new_sd[k]) for k in old_sd)


def test_main_pretrains_and_resumes_with_the_support_set(run_dirs, capsys):
    """Two steps per epoch (64 images, batch 32); the support set of 100 is checkpointed and
    continues where it stopped after --resume."""
    import main

    def run(*extra):
        argv = [
            *["--model_name", "nnclr", "--backbone", "small_cnn", "--dataset_name", "synthetic"],
            *["--image_size", "16", "--limit", "64", "--batch_size", "32", "--device", "cpu"],
            *["--num_workers", "0", "--warmup_epochs", "0", "--optimizer", "adam"],
            *["--base_lr", "0.01", "--proj_hidden_dim", "64", "--pred_hidden_dim", "64"],
            *["--queue_size", "100", "--run_name", "nnclr", *run_dirs, *extra],
        ]
        return main.main(main.get_args_parser().parse_args(argv))

    straight = run("--num_epochs", "2", "--save_freq", "1")
    assert math.isfinite(straight["loss"])
    epoch_1 = os.path.join(straight["ckpt_dir"], "epoch_0001.pt")
    state = load_checkpoint(epoch_1)["model"]
    assert state["queue"].shape == (100, 256)
    assert (state["queue_ptr"].item(), state["queue_filled"].item()) == (64, 64)
    # continued from epoch 1 in a new folder: the run never stopped's support set and weights
    out = run("--num_epochs", "2", "--resume", epoch_1, "--run_name", "nnclr-resumed")
    assert "resumed from" in capsys.readouterr().out
    resumed = load_checkpoint(os.path.join(out["ckpt_dir"], "last.pt"))["model"]
    reference = load_checkpoint(os.path.join(straight["ckpt_dir"], "last.pt"))["model"]
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)
    assert (resumed["queue_ptr"].item(), resumed["queue_filled"].item()) == (28, 100)
    assert torch.equal(resumed["queue"][28:64], state["queue"][28:64])  # kept from epoch 1
