"""SimMIM: Xie et al., "SimMIM: A Simple Framework for Masked Image Modeling", CVPR 2022
(https://arxiv.org/abs/2111.09886); official code microsoft/SimMIM (models/simmim.py,
data/data_simmim.py `MaskGenerator`, configs/vit_base__800ep/, config.py).

The encoder sees the whole image with the masked patches' embeddings replaced by one learnt mask
token; a one-layer decoder (a 1x1 convolution to stride^2 x 3 values per output position, then
PixelShuffle back to pixels) predicts every pixel, and the loss is the L1 error on the masked
pixels only:

    L = sum over masked pixels and channels of |x - x_rec| / (number of masked pixels) / 3.

Masks (`MaskGenerator`): the image is cut into mask patches of `mask_patch_size` px (32 at 224);
ceil(ratio x count) of them, drawn uniformly without replacement for each image (ratio 0.6), are
masked, each covering (mask_patch_size / model patch)^2 of the encoder's patches.

Backbones: a ViT (`vit_*`, plain timm ViTs: `VisionTransformerForSimMIM`, the mask token on the
patch embeddings before the class token and positions, the class token dropped from the output)
and torchvision's ResNets, where the mask token replaces the stem's output (stride 4, or 1 with
the small-image stem) at the masked places, as the official Swin encoder replaces its stride-4
patch embeddings; the decoder's stride is the encoder's total (16 for ViT-B/16, 32 for a ResNet,
8 with the small-image stem). The official ViT has LayerScale (0.1), a shared relative position
bias and no absolute positions; this toolkit's ViTs have absolute positions and neither (a
departure, docs/fidelity.md).
"""

import math
from typing import Annotated

import torch
from torch import Tensor, nn

from methods import Method, register
from methods.hparams import Flag
from methods.recipe import Recipe
from networks import SMALL_IMAGE_SIZE, is_vit
from networks.vit import MaskableViT
from utils.accel import at_least_float32
from utils.misc import positive_int, unit_float


def simmim_masks(batch: int, side: int, ratio: float, device=None) -> Tensor:
    """[batch, side, side] of 0/1 on the grid of mask patches: for each image ceil(ratio x
    side^2) of them masked, drawn without replacement (MaskGenerator's permutation)."""
    count = side * side
    masked = math.ceil(count * ratio)
    order = torch.rand(batch, count, device=device).argsort(dim=1)[:, :masked]
    mask = torch.zeros(batch, count, device=device)
    mask.scatter_(1, order, 1.0)
    return mask.view(batch, side, side)


def upsample(mask: Tensor, factor: int) -> Tensor:
    """Each entry of [N, h, w] repeated over a factor x factor block: [N, h f, w f]."""
    return mask.repeat_interleave(factor, dim=1).repeat_interleave(factor, dim=2)


def simmim_loss(images: Tensor, reconstruction: Tensor, pixel_mask: Tensor) -> Tensor:
    """L1 error on the masked pixels: sum |x - x_rec| over masked pixels and channels / (the
    number of masked pixels + 1e-5) / channels (models/simmim.py `SimMIM.forward`).

    Args:
        images, reconstruction: [N, C, H, W].
        pixel_mask: [N, H, W], 1 where the pixel was masked.
    """
    mask = pixel_mask.unsqueeze(1).to(images.dtype)
    error = (images - reconstruction).abs()
    # the official masks are integers, so its `mask.sum() + 1e-5` is a float32 sum, where the
    # 1e-5 vanishes beyond a few hundred masked pixels: the same count here
    count = pixel_mask.sum().to(torch.float32) + 1e-5
    return (error * mask).sum() / count / images.shape[1]


MASK_RATIO = Flag("share of the mask patches masked", unit_float)
MASK_PATCH_SIZE = Flag(
    "side of a mask patch in pixels (a multiple of the encoder's patch; 32 at 224 px)",
    positive_int,
    none="32 above 64 px, 8 at 64 px and below",
)


@register("simmim")
class SimMIM(Method):
    """Encoder with mask tokens on the masked patches + 1x1-conv/PixelShuffle decoder; L1 on the
    masked pixels."""

    loss_summary = "`simmim_loss` (L1 on the masked pixels)"
    augmentation = "simmim"
    collapse_hint = "a mask ratio near 0 (nothing to predict) or near 1 (no context)"
    recipes = (
        Recipe(
            source="microsoft/SimMIM 0e71746, configs/vit_base__800ep/simmim_pretrain__vit_base_"
            "_img224__800ep.yaml (ViT-B/16, 800 epochs, 16 GPUs x 128: batch 2048)",
            optimizer="adamw",
            betas=(0.9, 0.999),
            exclude_bias_and_norm=True,
            base_lr=5e-5,
            lr_scaling="linear",
            batch_size=2048,
            num_epochs=800,
            weight_decay=0.05,
            warmup_epochs=10,
            warmup_lr=2.5e-7,
            final_lr=2.5e-6,
            settings={"mask_ratio": 0.6, "crop_min_scale": 0.67},
            sources={
                "optimizer, betas": "config.py:135-139 (adamw, betas (0.9, 0.999))",
                "exclude_bias_and_norm": "optimizer.py set_weight_decay (1-D parameters and "
                "biases: no weight decay)",
                "base_lr, lr_scaling": "vit_base yaml BASE_LR 1e-4; main_simmim.py (x total "
                "batch / 512: 5e-5 per 256 here)",
                "batch_size": "config.py:22 (128 per GPU); README.md (--nproc_per_node 16)",
                "num_epochs, warmup_epochs, weight_decay, final_weight_decay": "vit_base yaml "
                "(EPOCHS 800, WARMUP_EPOCHS 10, WEIGHT_DECAY 0.05, constant)",
                "warmup_lr": "vit_base yaml WARMUP_LR 5e-7 (x batch / 512)",
                "final_lr": "config.py:103 MIN_LR 5e-6 (x batch / 512) for its cosine; the ViT "
                "yaml's multistep (x 0.1 at epoch 700) is not expressible here",
                "mask_ratio": "vit_base yaml (MASK_RATIO 0.6, MASK_PATCH_SIZE 32)",
                "crop_min_scale": "data/data_simmim.py SimMIMTransform (RandomResizedCrop scale "
                "(0.67, 1.), flip, no colour)",
            },
        ),
    )

    def __init__(
        self,
        backbone: nn.Module,
        feat_dim: int,
        mask_ratio: Annotated[float, MASK_RATIO] = 0.6,
        mask_patch_size: Annotated[int | None, MASK_PATCH_SIZE] = None,
    ) -> None:
        super().__init__()
        if not 0 < mask_ratio < 1:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        self.backbone, self.mask_ratio = backbone, mask_ratio
        if isinstance(backbone, MaskableViT):
            self.patch = self.stride = backbone.patch_size
            token_width, large = feat_dim, backbone.image_size > SMALL_IMAGE_SIZE
        elif all(hasattr(backbone, n) for n in ("conv1", "maxpool", "layer4")):  # ResNets
            pool = backbone.maxpool.stride if isinstance(backbone.maxpool, nn.MaxPool2d) else 1
            self.patch = backbone.conv1.stride[0] * pool  # the stem's stride
            self.stride, token_width = self.patch * 8, backbone.conv1.out_channels
            large = self.patch > 1  # the small-image stem has stride 1
        else:
            vit = " (a plain timm ViT with one class token)" if is_vit(backbone) else ""
            raise ValueError(
                "SimMIM masks a ViT's patch embeddings or a ResNet's stem output: use --backbone "
                f"vit_tiny, vit_small, a timm ViT or resnet18/34/50{vit}"
            )
        # the official 32 px at ImageNet sizes; 8 px (a 4 x 4 grid at 32 px) for small images
        self.mask_patch_size = mask_patch_size or (32 if large else 8)
        if self.mask_patch_size % self.patch:
            raise ValueError(
                f"mask_patch_size {self.mask_patch_size} is not a multiple of the encoder's "
                f"{self.patch} px patch"
            )
        self.mask_token = nn.Parameter(torch.zeros(1, 1, token_width))
        nn.init.trunc_normal_(self.mask_token, std=0.02, a=-0.02, b=0.02)
        self.decoder = nn.Sequential(
            nn.Conv2d(feat_dim, self.stride**2 * 3, kernel_size=1), nn.PixelShuffle(self.stride)
        )

    def encode(self, images: Tensor, mask: Tensor) -> Tensor:
        """The encoder's output feature map [N, C, H / stride, W / stride] of `images` whose
        masked patches (`mask` [N, H / patch, W / patch]) carry the mask token."""
        if isinstance(self.backbone, MaskableViT):  # the class token's output left out
            out = self.backbone.forward_tokens(images, masked=(mask, self.mask_token))[:, 1:]
            return out.transpose(1, 2).reshape(out.shape[0], -1, *mask.shape[1:])
        net = self.backbone
        x = net.maxpool(net.relu(net.bn1(net.conv1(images))))  # [N, C, h, w]
        w = mask.unsqueeze(1).to(x.dtype)
        x = x * (1 - w) + self.mask_token.view(1, -1, 1, 1) * w
        return net.layer4(net.layer3(net.layer2(net.layer1(x))))

    def masks(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """A batch's masks on the encoder's patch grid and on the pixels."""
        side = images.shape[-1]
        if images.shape[-2] != side or side % self.mask_patch_size:
            raise ValueError(
                f"SimMIM needs square images whose side divides by --mask_patch_size "
                f"{self.mask_patch_size}, got {tuple(images.shape[-2:])}"
            )
        grid = simmim_masks(images.shape[0], side // self.mask_patch_size, self.mask_ratio,
                            images.device)  # fmt: skip
        patches = upsample(grid, self.mask_patch_size // self.patch)
        return patches, upsample(grid, self.mask_patch_size)

    def predict(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """The reconstruction [N, 3, H, W] of `images` masked at random, and the pixel mask."""
        patch_mask, pixel_mask = self.masks(images)
        return self.decoder(self.encode(images, patch_mask)), pixel_mask

    def forward(self, views: list[Tensor], labels: Tensor | None = None) -> dict[str, Tensor]:
        images = views[0]
        reconstruction, pixel_mask = self.predict(images)
        loss = simmim_loss(at_least_float32(images), at_least_float32(reconstruction), pixel_mask)
        return {"loss": loss}

    @torch.no_grad()
    def reconstruct(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """The masked images (masked pixels at 0, the mean colour in the normalised space) and
        the reconstructions (visible pixels as given, masked ones predicted), [N, 3, H, W]."""
        predicted, pixel_mask = self.predict(images)
        hidden = pixel_mask.unsqueeze(1).to(images.dtype)
        return images * (1 - hidden), images * (1 - hidden) + predicted * hidden
