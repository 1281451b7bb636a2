"""Vision Transformers `vit_tiny` and `vit_small` (Dosovitskiy et al., "An Image is Worth 16x16
Words", ICLR 2021, https://arxiv.org/abs/2010.11929; sizes of DeiT, Touvron et al. 2021, which
DINO uses), built with torchvision's `VisionTransformer`:

    name       embed dim  depth  heads  MLP   parameters (224 px, patch 16)
    vit_tiny   192        12     3      768   5.5 M
    vit_small  384        12     6      1536  21.7 M

The features are the class token after the final LayerNorm (the classification head is removed),
of the embedding's size. Patches are 16 px (ViT-S/16), or 4 px for small images (<= 64 px) so
that a 32 px image still gives an 8x8 grid of tokens (as in the CIFAR ViTs of the SSL
literature); `image_size` must be a multiple of the patch size.

Other input sizes (multi-crop's local crops) go through the same network with the position
embeddings resized by bicubic interpolation, as DINO's `interpolate_pos_encoding` does; a border
narrower than a patch is dropped by the patch convolution, so choose crop sizes that are
multiples of the patch (e.g. `--small_crop_size 16` at `--image_size 32`).

torchvision publishes no weights for these two sizes (its ViTs start at vit_b_16), so
`pretrained=True` is an error. Not included: stochastic depth (DINO trains its student with
drop-path 0.1; torchvision's blocks have none).

Recommended optimisation (ViTs train poorly with the toolkit's default SGD): AdamW with a linear
warmup and a cosine decay, e.g. DINO's `--optimizer adamw --base_lr 5e-4 --weight_decay 0.04
--warmup_epochs 10 --final_lr 1e-6` (lr scaled by batch/256; DINO also raises the weight decay to
0.4 on a cosine and clips gradients at norm 3, which this toolkit does not do), or DeiT's
lr 5e-4 x B/512 with weight decay 0.05 and 5 warmup epochs. With `--optimizer adamw` the factory
exempts biases and LayerNorm weights (1-D parameters) from weight decay, as DINO does; the class
token and position embeddings (3-D) are decayed, as in DINO, whereas timm and MAE exempt them.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import VisionTransformer

from networks import SMALL_IMAGE_SIZE, register
from utils.misc import UserError

# name -> (embedding size, depth, heads, MLP size), DeiT's tiny and small
VIT_SIZES = {
    "vit_tiny": (192, 12, 3, 768),
    "vit_small": (384, 12, 6, 1536),
}


def patch_size_for(image_size: int) -> int:
    """16 px patches (ViT-S/16) at ImageNet sizes; 4 px for small images, so that 32 px gives
    8x8 tokens rather than 2x2."""
    return 4 if image_size <= SMALL_IMAGE_SIZE else 16


class ViTBackbone(VisionTransformer):
    """torchvision's VisionTransformer without its head (`heads` is the identity), returning the
    class token after the final norm, for any input size of at least one patch."""

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2:] == (self.image_size, self.image_size):
            return super().forward(x)  # torchvision's own path
        return self.forward_any_size(x)

    def forward_any_size(self, x: Tensor) -> Tensor:
        """The same computation as torchvision's forward, with the position embeddings resized
        to the input's grid of patches (torchvision asserts the size it was built for)."""
        n, _, h, w = x.shape
        if h < self.patch_size or w < self.patch_size:
            raise ValueError(f"input {h}x{w} is smaller than one {self.patch_size} px patch")
        x = self.conv_proj(x)  # [N, D, h // p, w // p]
        grid = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1)
        encoder = self.encoder
        x = x + self.position_embedding(grid)
        x = encoder.ln(encoder.layers(encoder.dropout(x)))
        return self.heads(x[:, 0])

    def position_embedding(self, grid: tuple[int, int]) -> Tensor:
        """[1, 1 + gh * gw, D]: the class token's embedding, then the patch embeddings resized
        bicubically from the native square grid to `grid`."""
        pos = self.encoder.pos_embedding
        side = self.image_size // self.patch_size
        if grid == (side, side):
            return pos
        dim = pos.shape[-1]
        patches = pos[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
        patches = F.interpolate(patches, size=grid, mode="bicubic", align_corners=False)
        patches = patches.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], dim)
        return torch.cat([pos[:, :1], patches], dim=1)


def _vit(name: str, image_size: int, pretrained: bool) -> tuple[nn.Module, int]:
    if pretrained:
        raise UserError(
            f"--pretrained: torchvision has no ImageNet weights for {name} (its ViTs start at "
            "vit_b_16); drop --pretrained"
        )
    patch = patch_size_for(image_size)
    if image_size % patch:
        raise UserError(
            f"--image_size {image_size}: {name} needs a multiple of its patch size {patch} "
            f"({patch} px patches {'up to' if patch == 4 else 'above'} {SMALL_IMAGE_SIZE} px)"
        )
    dim, depth, heads, mlp = VIT_SIZES[name]
    model = ViTBackbone(
        image_size=image_size,
        patch_size=patch,
        num_layers=depth,
        num_heads=heads,
        hidden_dim=dim,
        mlp_dim=mlp,
    )
    model.heads = nn.Identity()
    return model, dim


for _name in VIT_SIZES:
    register(_name)(lambda image_size, pretrained, _n=_name: _vit(_n, image_size, pretrained))
