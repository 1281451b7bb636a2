"""MAE: He et al., "Masked Autoencoders Are Scalable Vision Learners", CVPR 2022
(https://arxiv.org/abs/2111.06377); official code facebookresearch/mae models_mae.py.

A random 75 % of each image's patches is hidden (a new draw per image and step); the encoder, the
ViT backbone, sees only the visible patches, each with its position embedding, plus the class
token; a light Transformer decoder gets the encoded visible tokens back in place among shared,
learnt mask tokens, adds its own position embeddings, and predicts the pixels of every patch.
The loss is the mean squared error on the hidden patches only:

    L = sum_i m_i ||x̂_i - t_i||^2 / (P sum_i m_i),   m_i = 1 for a hidden patch i, P = p·p·3,

where t_i is the patch's pixels (of the normalised image), per-patch normalised to zero mean
and unit variance (`norm_pix_loss`: t = (x - mean(x)) / sqrt(var(x) + 1e-6), the paper's best
setting, on by default here as in its ImageNet runs).

Architecture as the official code: fixed 2-D sine-cosine position embeddings in encoder and
decoder (not learnt); the decoder a Linear from the encoder's width to its own, `decoder_depth`
pre-norm blocks of `decoder_heads` heads and 4x MLPs, a LayerNorm and a Linear to p·p·3 pixels;
initialisation `initialize_weights`: Xavier-uniform Linear layers (and the patch projection, as
a Linear over its flattened kernel), zero biases, unit LayerNorms, class and mask tokens N(0, 0.02).
Masking `random_masking`: per image, the patches are ordered by uniform noise and the first
int(L (1 - mask_ratio)) kept.

Decoder size: the paper's is 8 blocks of 512 (16 heads) for ViT-B/L/H; its ablation (table 1)
finds depth and width matter little for fine-tuning (one block: 84.8 vs 84.9) but much for the
linear probe (depth 8 best). solo-learn's CIFAR config (scripts/pretrain/cifar/mae.yaml) keeps
8 x 512 x 16 heads on ViT-Small with 4 px patches; that is the default here for vit_tiny and
vit_small too (lighter decoders: `--decoder_dim`, `--decoder_depth`, `--decoder_heads`).

Recipe (paper, appendix A.1): AdamW, betas (0.9, 0.95), lr 1.5e-4 x B/256, weight decay 0.05,
40 warmup epochs then cosine, batch 4096, 800-1600 epochs; views: random resized crop 20-100 %
and flip only (transformations.mae_transform). Evaluated by fine-tuning (main_linear.py
--finetune with --layer_decay 0.75, --drop_path, --mixup/--cutmix, --label_smoothing) and by a
linear probe of the class token with BatchNorm before it (--probe_bn).
"""

from typing import Annotated

import torch
from torch import Tensor, nn

from methods import Method, register
from methods.hparams import Flag
from methods.recipe import Recipe, solo_learn
from networks import is_vit
from networks.timm_vit import not_plain
from networks.vit import (
    MaskableViT,
    fix_position_embedding,
    sincos_position_embedding,
    transformer_blocks,
    xavier_init,
)
from utils.accel import at_least_float32
from utils.misc import unit_float

MASK_RATIO = Flag("fraction of each image's patches hidden from the encoder", unit_float)


def patchify(images: Tensor, patch: int) -> Tensor:
    """[N, 3, H, W] -> [N, L, p·p·3]: each patch's pixels, patches in row-major order, each
    patch's values ordered (row, column, channel) as the official `patchify`."""
    n, c, h, w = images.shape
    x = images.reshape(n, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(n, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(patches: Tensor, patch: int, side: int) -> Tensor:
    """[N, L, p·p·3] -> [N, 3, side·p, side·p], the inverse of `patchify`."""
    n = patches.shape[0]
    x = patches.reshape(n, side, side, patch, patch, 3).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(n, 3, side * patch, side * patch)


def random_masking(batch: int, length: int, ratio: float, device=None) -> tuple[Tensor, Tensor]:
    """Per image, the indices of the patches kept visible [N, K] (K = int(L (1 - ratio)), in
    the random order drawn) and the mask [N, L], 1 for a hidden patch."""
    keep_count = int(length * (1 - ratio))
    order = torch.rand(batch, length, device=device).argsort(dim=1)
    keep = order[:, :keep_count]
    mask = torch.ones(batch, length, device=device)
    mask.scatter_(1, keep, 0.0)
    return keep, mask


def mae_loss(pred: Tensor, target: Tensor, mask: Tensor, norm_pix: bool = True) -> Tensor:
    """Mean squared error of the predicted pixels on the hidden patches only.

    Args:
        pred: [N, L, P] predicted pixels of every patch.
        target: [N, L, P] the image's patches (`patchify`).
        mask: [N, L], 1 for a hidden patch, 0 for a visible one (which does not count).
        norm_pix: compare with each target patch normalised by its own mean and variance
            (unbiased, + 1e-6), as the official `forward_loss` with norm_pix_loss.
    """
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6) ** 0.5
    per_patch = (pred - target).pow(2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum()


def require_vit(backbone: nn.Module, method: str) -> MaskableViT:
    """The backbone, if its encoder can run on a subset of its patches (MaskableViT); the error
    names what a timm ViT lacks (register or distillation tokens, no class position, ...)."""
    if isinstance(backbone, MaskableViT):
        return backbone
    timm_vit = is_vit(backbone) and hasattr(backbone, "num_prefix_tokens")
    reason = not_plain(backbone) if timm_vit else None
    raise ValueError(
        f"{method} masks patches of a Vision Transformer: use --backbone vit_tiny, vit_small "
        "or a timm ViT with one class token (timm:vit_*, timm:deit_*; networks/timm_vit.py)"
        + (f"; this {type(backbone).__name__} does not fit: {reason}" if reason else "")
    )


@register("mae")
class MAE(Method):
    """ViT encoder on the visible patches + light decoder predicting the hidden ones' pixels."""

    loss_summary = "`mae_loss` (hidden patches' pixels)"
    augmentation = "mae"  # its crops are bicubic (transformations.mae_transform)
    eval_interpolation = "bicubic"  # official main_linprobe.py, util/datasets.py: bicubic
    requires_vit = True
    recipes = (
        solo_learn(
            "cifar/mae.yaml",
            "(solo-learn's reproduction: MAE's code has no CIFAR recipe; ViT-S, 4 px patches)",
            optimizer="adamw",
            base_lr=0.0002,
            weight_decay=0.05,
            exclude_bias_and_norm=False,
            betas=(0.9, 0.95),
            sources={
                "optimizer, betas": "mae.yaml:33-34,39-40 (adamw, betas [0.9, 0.95])",
                "exclude_bias_and_norm": (
                    "solo/methods/base.py:280-281 (exclude_bias_n_norm_wd default False; mae.yaml "
                    "does not set it)"
                ),
                "base_lr, lr_scaling, batch_size": (
                    "mae.yaml:35-36 (batch_size 256, lr 2.0e-4); solo/args/pretrain.py:151-154 (lr"
                    " x batch/256)"
                ),
                "num_epochs": "mae.yaml:51 (max_epochs 1000)",
                "weight_decay, final_weight_decay": "mae.yaml:38 (weight_decay 0.05, constant)",
            },
        ),
        Recipe(
            source=(
                "facebookresearch/mae efb2a80, PRETRAIN.md's ViT-L/16 command (8 nodes x 8 GPUs x "
                "64: batch 4096, 800 epochs)"
            ),
            images="large",
            optimizer="adamw",
            betas=(0.9, 0.95),
            exclude_bias_and_norm=True,
            base_lr=1.5e-4,
            lr_scaling="linear",
            batch_size=4096,
            num_epochs=800,
            weight_decay=0.05,
            final_weight_decay=None,
            warmup_epochs=40,
            warmup_lr=0.0,
            final_lr=0.0,
            sources={
                "optimizer, betas": "main_pretrain.py:180 (torch.optim.AdamW(betas=(0.9, 0.95)))",
                "exclude_bias_and_norm": (
                    "main_pretrain.py:179 (timm add_weight_decay: biases, 1-D params without decay)"
                ),
                "base_lr, lr_scaling": (
                    "PRETRAIN.md:15,19 (--blr 1.5e-4; lr = blr x batch/256); main_pretrain.py:166"
                ),
                "batch_size": "PRETRAIN.md:9,18 (64 per GPU x 8 nodes x 8 GPUs = 4096)",
                "num_epochs": "PRETRAIN.md:13 (--epochs 800)",
                "weight_decay, final_weight_decay": (
                    "PRETRAIN.md:15 (--weight_decay 0.05, constant)"
                ),
                "warmup_epochs, warmup_lr": (
                    "PRETRAIN.md:14 (--warmup_epochs 40); util/lr_sched.py:11-12 (lr x epoch / "
                    "warmup, from 0)"
                ),
                "final_lr": (
                    "main_pretrain.py:68 (min_lr 0.); util/lr_sched.py:14-15 (cosine to min_lr)"
                ),
            },
        ),
    )

    def __init__(
        self,
        backbone: nn.Module,
        feat_dim: int,
        mask_ratio: Annotated[float, MASK_RATIO] = 0.75,
        decoder_dim: Annotated[int, Flag("MAE decoder width")] = 512,
        decoder_depth: Annotated[int, Flag("MAE decoder blocks")] = 8,
        decoder_heads: Annotated[int, Flag("MAE decoder attention heads")] = 16,
        norm_pix_loss: Annotated[bool, Flag("per-patch normalised pixel targets")] = True,
        pretrained: bool = False,
    ) -> None:
        super().__init__()
        if not 0 < mask_ratio < 1:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        if decoder_dim % decoder_heads or decoder_dim % 4:
            raise ValueError(
                f"decoder_dim {decoder_dim} must divide by decoder_heads {decoder_heads} and by 4"
            )
        self.backbone = require_vit(backbone, "MAE")
        self.patch = backbone.patch_size
        self.side = backbone.image_size // self.patch
        self.mask_ratio, self.norm_pix_loss = mask_ratio, norm_pix_loss
        self.decoder_embed = nn.Linear(feat_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        pos = sincos_position_embedding(decoder_dim, self.side).unsqueeze(0)
        self.register_buffer("decoder_pos", pos, persistent=False)  # fixed: not a parameter
        self.decoder_blocks = transformer_blocks(decoder_depth, decoder_dim, decoder_heads)
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch * self.patch * 3)
        for part in (self.decoder_embed, self.decoder_blocks, self.decoder_norm, self.decoder_pred):
            xavier_init(part)
        nn.init.normal_(self.mask_token, std=0.02)
        if not pretrained:  # --pretrained / --init_backbone: the backbone keeps its weights
            xavier_init(backbone)
            nn.init.normal_(backbone.class_token, std=0.02)
            fix_position_embedding(backbone)
        backbone.position_parameter.requires_grad_(False)

    def decode(self, latent: Tensor, keep: Tensor) -> Tensor:
        """Pixels [N, L, p·p·3] of every patch from the encoded class token and visible patches
        [N, 1 + K, D]: mask tokens fill the hidden places, each token at its patch's position."""
        x = self.decoder_embed(latent)
        n, dim, length = x.shape[0], x.shape[-1], self.side * self.side
        tokens = self.mask_token.expand(n, length, dim).clone()
        tokens.scatter_(1, keep.unsqueeze(-1).expand(-1, -1, dim), x[:, 1:])
        x = torch.cat([x[:, :1], tokens], dim=1) + self.decoder_pos
        x = self.decoder_norm(self.decoder_blocks(x))
        return self.decoder_pred(x[:, 1:])

    def forward(self, views: list[Tensor], labels: Tensor | None = None) -> dict[str, Tensor]:
        images = views[0]
        if images.shape[-1] != self.side * self.patch or images.shape[-2] != images.shape[-1]:
            raise ValueError(f"MAE needs {self.side * self.patch} px square images")
        keep, mask = random_masking(images.shape[0], self.side**2, self.mask_ratio, images.device)
        latent = self.backbone.forward_tokens(images, keep)
        pred = self.decode(latent, keep)
        loss = mae_loss(
            at_least_float32(pred),
            at_least_float32(patchify(images, self.patch)),
            mask,
            self.norm_pix_loss,
        )
        return {"loss": loss, "pred": pred, "mask": mask}

    @torch.no_grad()
    def reconstruct(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """The masked images (hidden patches grey) and the reconstructions (visible patches as
        given, hidden ones predicted; with norm_pix_loss the prediction is put back to each
        patch's own mean and variance, as the official visualisation does), both [N, 3, H, W]
        in the normalised pixel space."""
        out = self.forward([images])
        target = patchify(images, self.patch)
        pred, mask = at_least_float32(out["pred"]), out["mask"].unsqueeze(-1)
        if self.norm_pix_loss:
            pred = pred * (target.var(-1, keepdim=True) + 1e-6) ** 0.5 + target.mean(
                -1, keepdim=True
            )
        masked = unpatchify(target * (1 - mask), self.patch, self.side)
        mixed = unpatchify(target * (1 - mask) + pred * mask, self.patch, self.side)
        return masked, mixed
