"""VGG-11/13/16/19, plain and with BatchNorm (`_bn`), from torchvision.models.

The classifier (and its 7x7 adaptive pool) is replaced by a global average pool, so the features
are the 512 channels of the last conv at any image size. Small images (<= 64 px): the last
max-pool is dropped, so that a 32x32 input reaches the global pool at 2x2 instead of 1x1.
"""

from torch import nn

from networks import SMALL_IMAGE_SIZE, register, torchvision_model


def _vgg(name: str, image_size: int, pretrained: bool) -> tuple[nn.Module, int]:
    model = torchvision_model(name, pretrained)
    if image_size <= SMALL_IMAGE_SIZE:
        # a max-pool has no weights: the pretrained convs are all kept, so no warning
        assert isinstance(model.features[-1], nn.MaxPool2d)
        model.features[-1] = nn.Identity()  # not a slice: the state-dict keys stay torchvision's
    feat_dim = [m for m in model.features if isinstance(m, nn.Conv2d)][-1].out_channels
    model.avgpool = nn.AdaptiveAvgPool2d(1)  # VGG.forward flattens after avgpool
    model.classifier = nn.Identity()
    return model, feat_dim


for _depth in (11, 13, 16, 19):
    for _name in (f"vgg{_depth}", f"vgg{_depth}_bn"):
        register(_name)(lambda image_size, pretrained, _n=_name: _vgg(_n, image_size, pretrained))
