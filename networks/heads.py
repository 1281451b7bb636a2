"""Heads shared by the methods: an MLP builder (projectors, predictors), the linear classifier."""

import argparse

import torch
from torch import Tensor, nn

HEAD_INITS = ("pytorch", "normal", "truncated_normal")  # see init_linears


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


def head_init(value: str) -> str:
    """argparse type of `--head_init`: one of HEAD_INITS."""
    if value not in HEAD_INITS:
        raise argparse.ArgumentTypeError(f"{value!r}: choose one of {', '.join(HEAD_INITS)}")
    return value


def init_linears(module: nn.Module, scheme: str) -> None:
    """Re-initialise every Linear of `module` as an official code does:

    pytorch           nn.Linear's own, weights and biases uniform within ±1/sqrt(fan_in): left
                      as built (PyTorch codes: SimSiam, MoCo, Barlow Twins, VICReg, SwAV, ...)
    normal            weights N(0, 0.01), biases 0: SimCLR's `linear_layer` (model_util.py;
                      tf2/model.py `LinearLayer`)
    truncated_normal  weights N(0, 1/fan_in) cut at ±2 standard deviations (not rescaled for the
                      cut, as haiku's TruncatedNormal), biases 0: hk.Linear's default, BYOL's
    """
    if scheme not in HEAD_INITS:
        raise ValueError(f"head init {scheme!r}: choose one of {', '.join(HEAD_INITS)}")
    if scheme == "pytorch":
        return
    for m in module.modules():
        if not isinstance(m, nn.Linear):
            continue
        if scheme == "normal":
            nn.init.normal_(m.weight, std=0.01)
        else:  # haiku's TruncatedNormal: N(0, s) cut at ±2s, s not rescaled for the cut
            std = m.in_features**-0.5
            nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
        if m.bias is not None:
            nn.init.zeros_(m.bias)


class LinearClassifier(nn.Module):
    """The linear probe: one fully connected layer on frozen features, optionally after a
    BatchNorm without affine parameters (MAE's probe, main_linprobe.py, with its eps 1e-6 rather
    than BatchNorm's default 1e-5), which makes the probe indifferent to the scale of the
    features; at test time it is a fixed affine map, so the probe stays linear."""

    def __init__(self, feat_dim: int, num_classes: int, batch_norm: bool = False) -> None:
        super().__init__()
        self.bn = nn.BatchNorm1d(feat_dim, affine=False, eps=1e-6) if batch_norm else nn.Identity()
        self.fc = nn.Linear(feat_dim, num_classes)
        self.fc.weight.data.normal_(mean=0.0, std=0.01)
        self.fc.bias.data.zero_()

    def forward(self, features):
        return self.fc(self.bn(features))
