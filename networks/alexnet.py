"""AlexNet from torchvision.models.

The classifier (and its 6x6 adaptive pool) is replaced by a global average pool: 256 features.
Small images (<= 64 px): torchvision's 11x11 stride-4 first conv leaves a 32x32 input too small
for the three max-pools (it fails), so it becomes a 3x3 stride-1 conv with the same 64 channels.
"""

from torch import nn

from networks import SMALL_IMAGE_SIZE, register, torchvision_model, warn_reinitialised_stem


@register("alexnet")
def alexnet(image_size: int, pretrained: bool) -> tuple[nn.Module, int]:
    model = torchvision_model("alexnet", pretrained)
    if image_size <= SMALL_IMAGE_SIZE:
        if pretrained:
            warn_reinitialised_stem("alexnet")
        width = model.features[0].out_channels
        model.features[0] = nn.Conv2d(3, width, kernel_size=3, stride=1, padding=1)
    feat_dim = [m for m in model.features if isinstance(m, nn.Conv2d)][-1].out_channels
    model.avgpool = nn.AdaptiveAvgPool2d(1)  # AlexNet.forward flattens after avgpool
    model.classifier = nn.Identity()
    return model, feat_dim
