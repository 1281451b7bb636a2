"""DenseNet-121/161/169/201 from torchvision.models.

Features: `model.features`, ReLU, global average pool, flatten (torchvision's own forward, with the
classifier made an identity); their size is the classifier's `in_features` (1024 to 2208).
Small images (<= 64 px): 3x3 stride-1 `conv0` and no `pool0`, as for ResNet, so that a 32x32
input reaches the last dense block at 4x4 instead of 1x1.
"""

from torch import nn

from networks import SMALL_IMAGE_SIZE, register, torchvision_model, warn_reinitialised_stem


def _densenet(name: str, image_size: int, pretrained: bool) -> tuple[nn.Module, int]:
    model = torchvision_model(name, pretrained)
    if image_size <= SMALL_IMAGE_SIZE:
        if pretrained:
            warn_reinitialised_stem(name)
        width = model.features.conv0.out_channels
        model.features.conv0 = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(model.features.conv0.weight)  # torchvision's DenseNet init
        model.features.pool0 = nn.Identity()
    feat_dim = model.classifier.in_features
    model.classifier = nn.Identity()
    return model, feat_dim


for _name in ("densenet121", "densenet161", "densenet169", "densenet201"):
    register(_name)(lambda image_size, pretrained, _n=_name: _densenet(_n, image_size, pretrained))
