"""Heads shared by the methods: an MLP builder (projectors, predictors), the linear classifier."""

import torch
from torch import Tensor, nn


class ScaleOnlyBatchNorm1d(nn.Module):
    """BatchNorm1d with a learnt scale and no shift: TensorFlow's BatchNormalization(center=False),
    the last layer of SimCLR's projection head (google-research/simclr model_util.py
    `linear_layer(..., use_bias=False, use_bn=True)`, whose BN is `center=use_bias`)."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(num_features, affine=False)
        self.weight = nn.Parameter(torch.ones(num_features))

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(x) * self.weight


def build_mlp(
    num_layers: int,
    input_dim: int,
    hidden_dim: int,
    output_dim: int,
    batch_norm: bool = True,
    last_bn: bool = False,
    last_bn_scale: bool = False,
    bias: bool = True,
) -> nn.Sequential:
    """Linear(-BN)-ReLU blocks, then a last Linear, plus a BatchNorm when `last_bn` (SimSiam's
    projector; without affine parameters, or with a scale but no shift when `last_bn_scale`:
    SimCLR's).

    A Linear followed by BatchNorm has no bias (the BN shift replaces it); `bias=False` drops the
    bias of the others too (MoCo v3's `_build_mlp` has none anywhere).
    """
    layers: list[nn.Module] = []
    dims = [input_dim] + [hidden_dim] * (num_layers - 1)
    for d_in, d_out in zip(dims[:-1], dims[1:], strict=True):
        layers.append(nn.Linear(d_in, d_out, bias=bias and not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm1d(d_out))
        layers.append(nn.ReLU(inplace=True))
    layers.append(nn.Linear(dims[-1], output_dim, bias=bias and not last_bn))
    if last_bn:
        scaled = last_bn_scale
        layers.append(
            ScaleOnlyBatchNorm1d(output_dim) if scaled else nn.BatchNorm1d(output_dim, affine=False)
        )
    return nn.Sequential(*layers)


class LinearClassifier(nn.Module):
    """The linear probe: one fully connected layer on frozen features, optionally after a
    BatchNorm without affine parameters (MAE's probe), which makes the probe indifferent to the
    scale of the features; at test time it is a fixed affine map, so the probe stays linear."""

    def __init__(self, feat_dim: int, num_classes: int, batch_norm: bool = False) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(feat_dim, affine=False) if batch_norm else nn.Identity()
        self.fc = nn.Linear(feat_dim, num_classes)
        self.fc.weight.data.normal_(mean=0.0, std=0.01)
        self.fc.bias.data.zero_()

    def forward(self, features):
        return self.fc(self.bn(features))
