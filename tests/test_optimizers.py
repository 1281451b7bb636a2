"""LARS, LARSSimCLR and LARC against hand-written references; state_dict round trips;
the optimizer factory on a tiny SimCLR; SimSiam's --fix_pred_lr."""

import copy
import io

import pytest
import torch
from torch import nn

from methods import build_method
from networks import build_backbone
from optimizers import OPTIMIZERS, Optimization, build_optimizer
from optimizers.cosine_decay_warmup import adjust_learning_rate
from optimizers.larc import LARC
from optimizers.lars import LARS
from optimizers.lars_simclr import LARSSimCLR


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: a second thread only adds OpenMP spin-waits, which cost 10x or
    more when another process shares the two cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


LRS = (0.5, 0.2, 0.8, 0.1)  # a changing lr, set into the groups as the schedule does
MOMENTUM, WD, ETA = 0.9, 0.05, 0.1
NO_DECAY = ("fc2.weight", "fc2.bias")  # a second group that sets weight_decay=0


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.bn, self.fc2 = nn.Linear(5, 4), nn.BatchNorm1d(4), nn.Linear(4, 3)
        self.zero = nn.Parameter(torch.zeros(3, 3))  # ||p|| = 0 at the first step
        self.idle = nn.Parameter(torch.randn(2, 2))  # ||g|| = 0 at every step

    def forward(self, x):
        h = self.fc2(torch.relu(self.bn(self.fc1(x))))
        return h + h @ self.zero + 0 * self.idle.sum()


def make_model() -> Tiny:
    torch.manual_seed(0)
    return Tiny()


def groups(model: nn.Module) -> list[dict]:
    named = dict(model.named_parameters())
    decayed = [p for n, p in named.items() if n not in NO_DECAY]
    return [{"params": decayed}, {"params": [named[n] for n in NO_DECAY], "weight_decay": 0.0}]


def backward(model: nn.Module, step: int) -> dict[str, torch.Tensor]:
    """Deterministic gradients for `step`; returns a copy of them by parameter name."""
    g = torch.Generator().manual_seed(100 + step)
    x, target = torch.randn(8, 5, generator=g), torch.randn(8, 3, generator=g)
    model.zero_grad(set_to_none=True)
    ((model(x) - target) ** 2).mean().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def check_against_reference(optimizer, model, reference, lrs=LRS):
    """Step `optimizer` and `reference(name, p, g, state, lr) -> p` side by side."""
    expected = {n: p.detach().clone() for n, p in model.named_parameters()}
    states: dict[str, dict] = {n: {} for n in expected}
    for step, lr in enumerate(lrs):
        adjust_learning_rate(optimizer, lr)
        grads = backward(model, step)
        optimizer.step()
        for n in expected:
            expected[n] = reference(n, expected[n], grads[n], states[n], lr)
        for n, p in model.named_parameters():
            torch.testing.assert_close(p.detach(), expected[n], atol=1e-6, rtol=1e-5, msg=n)


def wd_of(name: str) -> float:
    return 0.0 if name in NO_DECAY else WD


def trust(p, d, eta):
    """eta ||p|| / ||d||, or 1 when a norm is zero."""
    p_norm, d_norm = p.norm().item(), d.norm().item()
    return eta * p_norm / d_norm if p_norm > 0 and d_norm > 0 else 1.0


# ============ LARS ============


def lars_reference(exclude: bool):
    def step(name, p, g, state, lr):
        if p.ndim > 1 or not exclude:
            d = g + wd_of(name) * p
            d = trust(p, d, ETA) * d
        else:
            d = g
        state["buf"] = MOMENTUM * state.get("buf", torch.zeros_like(p)) + d
        return p - lr * state["buf"]

    return step


@pytest.mark.parametrize("exclude", [True, False])
def test_lars_matches_reference(exclude):
    model = make_model()
    opt = LARS(groups(model), 1.0, MOMENTUM, WD, ETA, exclude_bias_and_norm=exclude)
    check_against_reference(opt, model, lars_reference(exclude))


# ============ LARSSimCLR ============


def lars_simclr_reference(nesterov: bool):
    def step(name, p, g, state, lr):
        if p.ndim > 1:
            d = g + wd_of(name) * p
            scaled = lr * trust(p, d, ETA) * d
        else:  # excluded: no decay, trust 1
            scaled = lr * g
        state["v"] = MOMENTUM * state.get("v", torch.zeros_like(p)) + scaled
        return p - (MOMENTUM * state["v"] + scaled if nesterov else state["v"])

    return step


@pytest.mark.parametrize("nesterov", [False, True])
def test_lars_simclr_matches_reference(nesterov):
    model = make_model()
    opt = LARSSimCLR(groups(model), 1.0, MOMENTUM, WD, ETA, nesterov=nesterov)
    check_against_reference(opt, model, lars_simclr_reference(nesterov))
    assert all("momentum_buffer" in opt.state[p] for p in model.parameters())


def test_lars_simclr_keeps_momentum_and_puts_lr_in_the_buffer():
    # one parameter, constant gradient: v_t = lr_t*q*d + m*v_{t-1}; LARS would use lr_t on all of v
    p = nn.Parameter(torch.tensor([[3.0, 4.0]]))
    opt = LARSSimCLR([p], lr=1.0, momentum=0.5, eta=1.0)
    moves = []
    for lr in (1.0, 0.1):
        opt.param_groups[0]["lr"] = lr
        p.grad = torch.tensor([[0.6, 0.8]])
        before = p.detach().clone()
        opt.step()
        moves.append((before - p.detach()).norm().item())
    # step 1: trust = ||p||/||g|| = 5, move = 1*5*1 = 5; step 2: ||p|| = 0 -> trust 1
    assert moves[0] == pytest.approx(5.0)
    assert moves[1] == pytest.approx(0.5 * 5.0 + 0.1 * 1.0)


@pytest.mark.parametrize("cls", [LARS, LARSSimCLR])
def test_excluded_parameters_are_momentum_sgd_without_decay(cls):
    # 1-D parameters only: LARS is momentum SGD with wd = 0, whatever weight_decay and eta say
    model, twin = make_model(), make_model()
    one_d = lambda m: [p for p in m.parameters() if p.ndim == 1]  # noqa: E731
    opt = cls(one_d(model), lr=0.3, momentum=MOMENTUM, weight_decay=0.5, eta=ETA)
    sgd = torch.optim.SGD(one_d(twin), lr=0.3, momentum=MOMENTUM, weight_decay=0.0)
    for step in range(3):
        backward(model, step)
        backward(twin, step)
        opt.step()
        sgd.step()
    for a, b in zip(one_d(model), one_d(twin), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert not torch.equal(model.bn.weight, make_model().bn.weight)  # they did move


def test_lars_step_evaluates_the_closure():
    model = make_model()
    opt = LARS(model.parameters(), lr=0.1)

    def closure():
        backward(model, 0)
        return torch.tensor(1.5)

    assert opt.step(closure).item() == 1.5


# ============ LARC ============

TC = 0.02


def larc_reference(clip: bool):
    def step(name, p, g, state, lr):
        wd = wd_of(name)
        p_norm, g_norm = p.norm().item(), g.norm().item()
        a = 1.0
        if p_norm > 0 and g_norm > 0:
            a = TC * p_norm / (g_norm + wd * p_norm + 1e-8)
            a = min(a / lr, 1.0) if clip else a
        g = (g + wd * p) * a
        state["buf"] = g if "buf" not in state else MOMENTUM * state["buf"] + g  # torch SGD
        return p - lr * state["buf"]

    return step


def make_larc(model, clip):
    sgd = torch.optim.SGD(groups(model), lr=1.0, momentum=MOMENTUM, weight_decay=WD)
    return LARC(sgd, trust_coefficient=TC, clip=clip)


@pytest.mark.parametrize("clip", [True, False])
def test_larc_matches_reference(clip):
    model = make_model()
    opt = make_larc(model, clip)
    check_against_reference(opt, model, larc_reference(clip))
    assert [g["weight_decay"] for g in opt.param_groups] == [WD, 0.0]  # restored after steps


def test_larc_clip_caps_the_lr_where_scale_does_not():
    p0, g = torch.tensor([[1.0, 2.0], [2.0, 0.0]]), torch.tensor([[0.1, 0.0], [0.0, 0.2]])
    wd, lr = 0.1, 0.01
    a = TC * p0.norm() / (g.norm() + wd * p0.norm() + 1e-8)
    assert a / lr > 1  # clip caps a/lr at 1: plain SGD with decay
    moved = {}
    for clip in (True, False):
        p = nn.Parameter(p0.clone())
        p.grad = g.clone()
        LARC(torch.optim.SGD([p], lr=lr, weight_decay=wd), TC, clip=clip).step()
        moved[clip] = p.detach()
    torch.testing.assert_close(moved[True], p0 - lr * (g + wd * p0))
    torch.testing.assert_close(moved[False], p0 - lr * a * (g + wd * p0))
    assert not torch.allclose(moved[True], moved[False])


def test_larc_restores_weight_decay_when_the_inner_step_raises():
    class Failing(torch.optim.SGD):
        def step(self, closure=None):
            assert self.param_groups[0]["weight_decay"] == 0.0
            raise RuntimeError("boom")

    p = nn.Parameter(torch.ones(2, 2))
    p.grad = torch.ones(2, 2)
    opt = LARC(Failing([p], lr=0.1, weight_decay=0.3))
    with pytest.raises(RuntimeError, match="boom"):
        opt.step()
    assert opt.param_groups[0]["weight_decay"] == 0.3


def test_larc_forwards_the_optimizer_interface():
    model = make_model()
    inner = torch.optim.SGD(groups(model), lr=0.1, momentum=MOMENTUM, weight_decay=WD)
    opt = LARC(inner)
    assert opt.param_groups is inner.param_groups and opt.defaults is inner.defaults
    adjust_learning_rate(opt, 0.05)
    assert [g["lr"] for g in inner.param_groups] == [0.05, 0.05]
    extra = nn.Parameter(torch.ones(3))
    opt.add_param_group({"params": [extra]})
    assert inner.param_groups[-1]["params"] == [extra]
    opt.param_groups = opt.param_groups[:2]
    assert len(inner.param_groups) == 2
    backward(model, 0)
    opt.step()
    assert opt.state is inner.state and len(opt.state) == len(list(model.parameters()))
    opt.zero_grad()
    assert all(p.grad is None for p in model.parameters())
    assert repr(opt).startswith("LARC(trust_coefficient=0.02, clip=True")


# ============ state_dict round trip ============

FACTORIES = {
    "lars": lambda m: LARS(groups(m), lr=1.0, weight_decay=WD, eta=ETA),
    "lars_simclr": lambda m: LARSSimCLR(groups(m), lr=1.0, weight_decay=WD, eta=ETA),
    "lars_simclr_nesterov": lambda m: LARSSimCLR(
        groups(m), lr=1.0, weight_decay=WD, eta=ETA, nesterov=True
    ),
    "larc_clip": lambda m: make_larc(m, clip=True),
    "larc_scale": lambda m: make_larc(m, clip=False),
}


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_state_dict_round_trip_resumes_exactly(name):
    model = make_model()
    opt = FACTORIES[name](model)
    for step in range(2):
        adjust_learning_rate(opt, LRS[step])
        backward(model, step)
        opt.step()
    buffer = io.BytesIO()  # through torch.save, as a checkpoint is
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    resumed_model = copy.deepcopy(model)
    resumed = FACTORIES[name](resumed_model)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    for step in range(2, 4):
        for m, o in ((model, opt), (resumed_model, resumed)):
            adjust_learning_rate(o, LRS[step])
            backward(m, step)
            o.step()
    for a, b in zip(model.parameters(), resumed_model.parameters(), strict=True):
        assert torch.equal(a, b)


# ============ factory ============

FACTORY_LRS = {"sgd": 0.05, "sgd_nesterov": 0.05, "adam": 1e-2, "adamw": 1e-2}


def tiny_simclr() -> nn.Module:
    # a two-conv backbone: resnet18 would make seven optimizers x 8 steps take minutes on 2 cores
    backbone = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )  # fmt: skip
    return build_method("simclr", backbone, 16, proj_hidden_dim=32, proj_dim=16, temperature=0.2)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_every_optimizer_trains_a_tiny_simclr(name):
    torch.manual_seed(0)
    model = tiny_simclr()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(32, 3, 16, 16, generator=g)  # fixed views, no augmentation: the loss must fall
    views = [x, (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)]
    lr = FACTORY_LRS.get(name, 0.3)  # eta 0.02: at 0.001 LARS barely moves weights in 8 steps
    args = Optimization(name, base_lr=lr, num_epochs=1, weight_decay=1e-4, lars_eta=0.02)
    opt = build_optimizer(args, model, lr)
    losses = []
    for _ in range(8):
        loss = model(views)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        losses.append(model(views)["loss"].item())
    assert all(torch.isfinite(torch.tensor(losses))), losses
    assert losses[-1] < 0.75 * losses[0], losses


def test_unknown_optimizer_is_refused():
    args = Optimization("rmsprop", base_lr=0.1, num_epochs=1, weight_decay=0.0)
    with pytest.raises(ValueError, match="rmsprop"):
        build_optimizer(args, make_model(), 0.1)


def tiny_simsiam(fix_pred_lr: bool):
    backbone, feat_dim = build_backbone("resnet18", 16)
    return build_method(
        "simsiam", backbone, feat_dim, proj_dim=32, proj_hidden_dim=32, pred_hidden_dim=8,
        fix_pred_lr=fix_pred_lr,
    )  # fmt: skip


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("fix_pred_lr", [True, False])
def test_fix_pred_lr_keeps_the_predictor_lr(name, fix_pred_lr):
    simsiam = tiny_simsiam(fix_pred_lr)
    args = Optimization(name, base_lr=0.06, num_epochs=1, weight_decay=5e-4)
    opt = build_optimizer(args, simsiam, 0.06)
    predictor = {id(p) for p in simsiam.predictor.parameters()}
    adjust_learning_rate(opt, 0.01)
    for group in opt.param_groups:
        is_predictor = {id(p) in predictor for p in group["params"]}
        fixed = fix_pred_lr and is_predictor == {True}
        assert group["lr"] == (0.06 if fixed else 0.01), group.get("name")
        if fix_pred_lr:
            assert len(is_predictor) == 1  # a group is all predictor or no predictor
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(simsiam.parameters()))
