"""ResNet-18/34/50/101/152 from torchvision.models.

Small images (<= 64 px): 3x3 stride-1 first conv and no max-pool, as in the SimCLR CIFAR setup,
so that a 32x32 input reaches the last block at 4x4 instead of 1x1.
"""

from torch import nn

from networks import SMALL_IMAGE_SIZE, register, torchvision_model, warn_reinitialised_stem


def _resnet(name: str, image_size: int, pretrained: bool) -> tuple[nn.Module, int]:
    model = torchvision_model(name, pretrained)
    if image_size <= SMALL_IMAGE_SIZE:
        if pretrained:
            warn_reinitialised_stem(name)
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        model.maxpool = nn.Identity()
    feat_dim = model.fc.in_features
    model.fc = nn.Identity()
    return model, feat_dim


for _name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"):
    register(_name)(lambda image_size, pretrained, _n=_name: _resnet(_n, image_size, pretrained))
