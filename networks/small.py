"""`small_cnn`: a four-conv VGG-style network (32-64-128-256 channels, BatchNorm, three
max-pools, global average pool) made with torchvision's VGG `make_layers`.

Not a research backbone: about 0.4 M parameters and some 20x less compute than ResNet-18, so
that a CPU can show a method learning within a minute or two (quick start, learning tests).
"""

from torch import nn
from torchvision.models.vgg import make_layers

from networks import register
from utils.misc import UserError


@register("small_cnn")
def small_cnn(image_size: int, pretrained: bool) -> tuple[nn.Module, int]:
    if pretrained:
        raise UserError("--pretrained: there are no ImageNet weights for small_cnn")
    features = make_layers([32, "M", 64, "M", 128, "M", 256], batch_norm=True)
    return nn.Sequential(features, nn.AdaptiveAvgPool2d(1), nn.Flatten()), 256
