"""DCL and DCLW: the loss against a hand computation and its properties, the methods beside
SimCLR."""

import math

import pytest
import torch
import torch.nn.functional as F

from methods import build_method
from methods.dcl import dcl_loss
from methods.simclr import nt_xent_loss
from networks import build_backbone


def hand_dcl(z1: list, z2: list, t: float, sigma: float | None = None) -> float:
    """The paper's l_i with plain Python arithmetic over unit vectors."""
    unit = lambda v: [x / math.sqrt(sum(y * y for y in v)) for x in v]  # noqa: E731
    dot = lambda a, b: sum(x * y for x, y in zip(a, b, strict=True))  # noqa: E731
    z1, z2 = [unit(v) for v in z1], [unit(v) for v in z2]
    n = len(z1)
    weights = [1.0] * n
    if sigma is not None:
        e = [math.exp(dot(z1[i], z2[i]) / sigma) for i in range(n)]
        weights = [2 - n * e[i] / sum(e) for i in range(n)]
    total = 0.0
    for i in range(n):
        negatives = [dot(z1[i], z1[k]) / t for k in range(n) if k != i]
        negatives += [dot(z1[i], z2[k]) / t for k in range(n) if k != i]
        log_sum = math.log(sum(math.exp(s) for s in negatives))
        total += -weights[i] * dot(z1[i], z2[i]) / t + log_sum
    return total / n


Z1 = [[1.0, 0.0, 0.5], [0.2, 1.0, -0.3], [-0.5, 0.4, 1.0]]
Z2 = [[0.9, 0.1, 0.4], [0.0, 1.0, 0.0], [0.3, -0.2, 0.8]]


@pytest.mark.parametrize("sigma", [None, 0.5])
def test_dcl_loss_equals_the_hand_computation(sigma):
    z1, z2 = torch.tensor(Z1, dtype=torch.float64), torch.tensor(Z2, dtype=torch.float64)
    got = dcl_loss(z1, z2, temperature=0.2, sigma=sigma).item()
    assert got == pytest.approx(hand_dcl(Z1, Z2, 0.2, sigma), rel=1e-12)


def test_dcl_is_nt_xent_without_the_positive_in_the_denominator():
    """Per anchor, NT-Xent = DCL + log(1 + exp(s_pos) / sum over negatives of exp(s_neg)):
    NT-Xent's mean over the 2N anchors is the mean of the two directions' DCL plus that term."""
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    t = 0.5

    def coupling(a, b):
        a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
        own = torch.eye(len(a), dtype=torch.bool)
        negatives = torch.cat([(a @ a.T / t).masked_fill(own, float("-inf")),
                               (a @ b.T / t).masked_fill(own, float("-inf"))], dim=1)  # fmt: skip
        positive = (a * b).sum(dim=1) / t
        return torch.log1p(torch.exp(positive - torch.logsumexp(negatives, dim=1))).mean()

    dcl = (dcl_loss(z1, z2, t) + dcl_loss(z2, z1, t)) / 2
    expected = dcl + (coupling(z1, z2) + coupling(z2, z1)) / 2
    assert nt_xent_loss(z1, z2, t).item() == pytest.approx(expected.item(), rel=1e-6)
    assert nt_xent_loss(z1, z2, t) > dcl


def test_dcl_is_invariant_to_the_batch_order_and_the_projections_scale():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g)
    order = torch.tensor([3, 0, 4, 1, 2])
    for sigma in (None, 0.5):
        base = dcl_loss(z1, z2, 0.3, sigma)
        assert dcl_loss(z1[order], z2[order], 0.3, sigma) == pytest.approx(base.item(), rel=1e-6)
        assert dcl_loss(3 * z1, 0.5 * z2, 0.3, sigma) == pytest.approx(base.item(), rel=1e-6)


def test_dclw_weights_average_one_and_equal_positives_weigh_one():
    """w_i = 2 - N softmax_i(z1_i.z2_i / sigma): mean 1 over the batch, so equally similar
    positives give DCL itself; a harder positive (less similar) weighs more than 1."""
    z = torch.nn.functional.normalize(torch.randn(4, 6, generator=torch.Generator().manual_seed(2)))
    assert dcl_loss(z, z.clone(), 0.2, 0.5) == pytest.approx(dcl_loss(z, z.clone(), 0.2).item())
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # the second positive is the harder one
    dots = torch.tensor([1.0, 1 / math.sqrt(2)])
    w = 2 - 2 * torch.softmax(dots / 0.5, dim=0)
    assert w.mean() == pytest.approx(1.0) and w[1] > 1 > w[0]
    assert dcl_loss(z1, z2, 1.0, 0.5).item() == pytest.approx(hand_dcl(z1.tolist(),
                                                              z2.tolist(), 1.0, 0.5))  # fmt: skip


@pytest.mark.parametrize("name", ["dcl", "dclw"])
def test_the_methods_are_simclr_with_the_decoupled_loss(name):
    """Same head, same one pass over both views; the loss is the two directions' sum (the
    default nt_xent_scale 2), its gradient reaching every parameter."""
    torch.manual_seed(0)
    net, dim = build_backbone("resnet18", 32)
    model = build_method(name, net, dim, temperature=0.5)
    simclr = build_method("simclr", *build_backbone("resnet18", 32))
    assert [p.shape for p in model.projector.parameters()] == [
        p.shape for p in simclr.projector.parameters()
    ]
    views = [torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32)]
    out = model(views)
    z1, z2 = out["z1"], out["z2"]
    sigma = 0.5 if name == "dclw" else None
    expected = dcl_loss(z1, z2, 0.5, sigma) + dcl_loss(z2, z1, 0.5, sigma)
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    out["loss"].backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.full
@pytest.mark.usefixtures("small_test_set")
def test_dclw_stopped_by_sigterm_resumes_to_the_weights_of_a_run_never_stopped(
    run_dirs, monkeypatch
):
    """main.py end to end: DCLW (the weighted loss, its gathers) stopped mid-epoch by SIGTERM
    and resumed ends with the weights and metrics of a run never stopped."""
    from tests.test_reliability import FLAGS, resumes_as_straight

    flags = [*FLAGS, *run_dirs, "--model_name", "dclw", "--temperature", "0.2"]
    state = resumes_as_straight(flags, monkeypatch)
    assert all(torch.isfinite(v.float()).all() for v in state.values())
