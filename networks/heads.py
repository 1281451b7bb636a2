"""Heads shared by the methods: an MLP builder (projectors, predictors), the linear classifier."""

from torch import nn


def build_mlp(
    num_layers: int,
    input_dim: int,
    hidden_dim: int,
    output_dim: int,
    batch_norm: bool = True,
    last_bn: bool = False,
) -> nn.Sequential:
    """Linear(-BN)-ReLU blocks, then a last Linear (plus a BN when `last_bn`: SimSiam's projector).

    Hidden linears have no bias when followed by BatchNorm (the BN shift replaces it).
    """
    layers: list[nn.Module] = []
    dims = [input_dim] + [hidden_dim] * (num_layers - 1)
    for d_in, d_out in zip(dims[:-1], dims[1:], strict=True):
        layers.append(nn.Linear(d_in, d_out, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm1d(d_out))
        layers.append(nn.ReLU(inplace=True))
    layers.append(nn.Linear(dims[-1], output_dim, bias=not last_bn))
    if last_bn:
        layers.append(nn.BatchNorm1d(output_dim, affine=False))
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
