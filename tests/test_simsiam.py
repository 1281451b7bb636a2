"""SimSiam's loss: value at alignment, stop-gradient, symmetric module."""

import torch

from methods import build_method
from methods.simsiam import negative_cosine_similarity
from networks import build_backbone


def test_negative_cosine_similarity_values():
    p = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert negative_cosine_similarity(p, p.clone()).item() == -1.0
    z = torch.tensor([[0.0, 1.0], [0.0, -1.0]])  # orthogonal, then opposite: -(0 + -1)/2
    assert negative_cosine_similarity(p, z).item() == 0.5


def test_no_gradient_flows_into_the_target():
    p = torch.randn(4, 8, requires_grad=True)
    z = torch.randn(4, 8, requires_grad=True)
    negative_cosine_similarity(p, z).backward()
    assert p.grad is not None and z.grad is None


def test_simsiam_module_shapes_and_predictor_name():
    backbone, feat_dim = build_backbone("resnet18", 16)
    model = build_method(
        "simsiam", backbone, feat_dim, proj_dim=64, proj_hidden_dim=64, pred_hidden_dim=16
    )
    out = model([torch.randn(4, 3, 16, 16), torch.randn(4, 3, 16, 16)])
    assert out["z1"].shape == (4, 64) and -1.0 <= out["loss"].item() <= 1.0
    # the optimizer factory finds the predictor by this name (for --fix_pred_lr)
    assert any(name.startswith("predictor.") for name, _ in model.named_parameters())
