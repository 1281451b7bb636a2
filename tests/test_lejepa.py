"""LeJEPA: SIGReg's Epps-Pulley statistic against hand computations and its closed form, the
loss's parts, the slicing draws, and the method through main.py (exact resume)."""

import math

import pytest
import torch

from methods import build_method
from methods.lejepa import epps_pulley, lejepa_loss, lejepa_transform, random_directions
from networks import build_backbone


def hand_trapezoid(x: list[float], knots: int = 17, t_max: float = 3.0) -> float:
    """The release's quadrature written out: N * sum_k w_k g_k |ECF(t_k) - g_k|^2, g_k =
    exp(-t_k^2/2), t_k = k dt on [0, t_max], w = dt at both ends and 2 dt inside."""
    dt = t_max / (knots - 1)
    total = 0.0
    for k in range(knots):
        t = k * dt
        w = dt if k in (0, knots - 1) else 2 * dt
        g = math.exp(-t * t / 2)
        c = sum(math.cos(t * v) for v in x) / len(x)
        s = sum(math.sin(t * v) for v in x) / len(x)
        total += w * g * ((c - g) ** 2 + s**2)
    return len(x) * total


def closed_form(x: list[float]) -> float:
    """N * integral over R of |ECF - exp(-t^2/2)|^2 exp(-t^2/2) dt, exactly:
    sqrt(2 pi)/N^2 sum_jk exp(-(x_j - x_k)^2 / 2) - 2 sqrt(pi)/N sum_j exp(-x_j^2 / 4)
    + sqrt(2 pi / 3)."""
    n = len(x)
    pairs = sum(math.exp(-((a - b) ** 2) / 2) for a in x for b in x)
    singles = sum(math.exp(-(a * a) / 4) for a in x)
    value = math.sqrt(2 * math.pi) * pairs / n**2 - 2 * math.sqrt(math.pi) * singles / n
    return n * (value + math.sqrt(2 * math.pi / 3))


SAMPLE = [0.3, -1.2, 0.8, 2.0, -0.1]


def test_epps_pulley_is_the_release_quadrature_and_converges_to_the_closed_form():
    x = torch.tensor(SAMPLE, dtype=torch.float64).unsqueeze(1)  # one slice
    assert epps_pulley(x).item() == pytest.approx(hand_trapezoid(SAMPLE), rel=1e-12)
    fine = epps_pulley(x, knots=4001, t_max=12.0).item()
    assert fine == pytest.approx(closed_form(SAMPLE), rel=1e-6)


def test_sigreg_is_small_for_gaussian_embeddings_and_large_for_collapsed_ones():
    g = torch.Generator().manual_seed(0)
    directions = random_directions(16, 64, step=0, like=torch.zeros((), dtype=torch.float64))
    gaussian = torch.randn(1024, 16, generator=g, dtype=torch.float64)
    collapsed = torch.randn(1024, 1, generator=g, dtype=torch.float64) * torch.ones(1, 16)
    tiny = 0.05 * gaussian  # no collapse of rank, but far from unit variance
    statistic = lambda z: epps_pulley(z @ directions).mean().item()  # noqa: E731
    # its mean under the null: the integral of (1 - exp(-t^2)) exp(-t^2/2), about 1.06
    assert statistic(gaussian) < 2.0
    assert statistic(collapsed) > 20 * statistic(gaussian)
    assert statistic(tiny) > 20 * statistic(gaussian)


def test_slicing_directions_are_unit_and_follow_the_step():
    like = torch.zeros(())
    a, b = random_directions(8, 5, 3, like), random_directions(8, 5, 3, like)
    assert torch.equal(a, b) and torch.allclose(a.norm(dim=0), torch.ones(5))
    assert not torch.allclose(a, random_directions(8, 5, 4, like))


def test_lejepa_loss_weighs_the_prediction_of_the_global_mean_and_sigreg():
    z = torch.tensor(
        [[[1.0, 0.0], [0.0, 2.0]], [[3.0, 0.0], [0.0, 0.0]], [[0.0, 1.0], [1.0, 1.0]]],
        dtype=torch.float64,
    )  # 3 views (2 global), 2 images, 2 dims
    directions = torch.eye(2, dtype=torch.float64)
    # centres: image 0 (2, 0), image 1 (0, 1); squared errors summed over views, images, dims
    errors = [(1 - 2) ** 2, 0, 0, 1, (3 - 2) ** 2, 0, 0, 1, 4, 1, 1, 0]
    prediction = sum(errors) / len(errors)
    assert lejepa_loss(z, 2, directions, lamb=0.0).item() == pytest.approx(prediction)
    sigreg = sum(epps_pulley(v @ directions).mean() for v in z) / 3
    assert lejepa_loss(z, 2, directions, lamb=1.0).item() == pytest.approx(sigreg.item())
    mixed = lejepa_loss(z, 2, directions, lamb=0.25).item()
    assert mixed == pytest.approx(0.75 * prediction + 0.25 * sigreg.item())
    order = torch.tensor([1, 0])  # the loss does not depend on the images' order
    assert lejepa_loss(z[:, order], 2, directions, 0.25).item() == pytest.approx(mixed)


def test_views_are_two_global_then_local_crops_with_the_same_colour():
    views = lejepa_transform(image_size=224, mean=(0.5,) * 3, std=(0.2,) * 3).view_transforms
    assert len(views) == 8
    sizes = [v.options["image_size"] for v in views]
    assert sizes == [224, 224] + [98] * 6
    assert views[0].options["crop_scale"] == (0.3, 1.0)
    assert views[2].options["crop_scale"] == (0.05, 0.3)
    colour = ("jitter", "jitter_prob", "gray_prob", "blur_prob", "solarize_prob", "flip_prob")
    assert {tuple(v.options[k] for k in colour) for v in views} == {
        ((0.4, 0.4, 0.2, 0.1), 0.8, 0.2, 0.5, 0.2, 0.5)
    }


def test_the_method_counts_its_slicing_steps_in_training_only():
    torch.manual_seed(0)
    model = build_method("lejepa", *build_backbone("small_cnn", 16), proj_dim=8, num_slices=16)
    views = [torch.randn(4, 3, 16, 16)] * 2 + [torch.randn(4, 3, 8, 8)] * 2
    out = model(views)
    assert model.slicing_step.item() == 1 and math.isfinite(out["loss"].item())
    out["loss"].backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        model(views)
    assert model.slicing_step.item() == 1


@pytest.mark.full
@pytest.mark.usefixtures("small_test_set")
def test_lejepa_stopped_by_sigterm_resumes_to_the_weights_of_a_run_never_stopped(
    run_dirs, monkeypatch
):
    """main.py end to end with multi-crop views: stopped mid-epoch and resumed, the weights, the
    slicing counter and the metrics are those of a run never stopped."""
    from tests.test_reliability import FLAGS, resumes_as_straight

    flags = [*FLAGS, *run_dirs, "--model_name", "lejepa", "--optimizer", "adamw",
             "--base_lr", "1e-3", "--num_crops", "2", "--proj_dim", "8",
             "--num_slices", "16", "--proj_hidden_dim", "64", "--limit", "100",
             "--batch_size", "25", "--rankme_images", "0", "--online_probe", "false"]  # fmt: skip
    state = resumes_as_straight(flags, monkeypatch)
    assert state["slicing_step"].item() == 8  # 4 steps x 2 epochs
