"""EfficientNet-B0 to B7 from torchvision.models.

The feature size (1280 to 2560) is read from the built classifier, never typed by hand.
Small images (<= 64 px): the first conv has stride 1 instead of 2 (its weights are kept), so
that a 32x32 input reaches the last stage at 2x2 instead of 1x1.
"""

from torch import nn

from networks import SMALL_IMAGE_SIZE, register, torchvision_model


def _efficientnet(name: str, image_size: int, pretrained: bool) -> tuple[nn.Module, int]:
    model = torchvision_model(name, pretrained)
    if image_size <= SMALL_IMAGE_SIZE:
        stem = model.features[0][0]
        assert isinstance(stem, nn.Conv2d) and stem.stride == (2, 2)
        stem.stride = (1, 1)  # same weights, so nothing is re-initialised
    feat_dim = [m for m in model.classifier.modules() if isinstance(m, nn.Linear)][-1].in_features
    model.classifier = nn.Identity()  # EfficientNet.forward flattens before the classifier
    return model, feat_dim


for _name in [f"efficientnet_b{i}" for i in range(8)]:
    register(_name)(
        lambda image_size, pretrained, _n=_name: _efficientnet(_n, image_size, pretrained)
    )
