"""I-JEPA: Assran et al., "Self-Supervised Learning from Images with a Joint-Embedding Predictive
Architecture", CVPR 2023 (https://arxiv.org/abs/2301.08243); official code facebookresearch/ijepa
(src/train.py, src/masks/multiblock.py, src/models/vision_transformer.py).

No hand-crafted views: from one crop of an image, a context encoder (the ViT backbone) sees one
large block of patches, and a narrow ViT predictor, given the context's tokens and the positions
of four target blocks (as mask tokens), predicts the target encoder's representations of those
blocks. The target encoder is an EMA copy of the context encoder that sees the whole image; its
output tokens are layer-normalised (no affine) before the target blocks are taken. The loss, in
the official code (`loss_fn`: `F.smooth_l1_loss(z, h)`), is the Huber (smooth L1, beta 1) loss
averaged over every predicted token and dimension; the paper's text writes an L2 distance.

    L = mean over blocks, tokens, dims of huber(pred - LN(target)),
    huber(d) = d^2 / 2 if |d| < 1 else |d| - 1/2

Multi-block masking (`multiblock_masks`, after MaskCollator): per batch, one target-block size of
scale 15-20 % of the patches and aspect ratio 0.75-1.5, and one context-block size of scale
85-100 % (square); per image, 4 target blocks at random places and one context block with the
target patches removed (tries again, then relaxes the constraints one target at a time, when
fewer than `min_keep` patches would remain); every mask is cut to the batch's smallest count
(the first indices in row-major order), so that masks stack. As the official code, one uniform
draw sets both a block's scale and its aspect ratio, and a block never touches the last row or
column (`torch.randint(0, side - h)`).

Architecture as the official code: encoder and predictor without a class token, fixed 2-D
sine-cosine position embeddings; the predictor a Linear to its width (`pred_emb_dim`), context
tokens plus one mask token per target patch (a learnt vector plus the patch's position
embedding), `pred_depth` blocks with the encoder's number of heads, a LayerNorm and a Linear back
to the encoder's width; initialisation: truncated N(0, 0.02) weights, zero biases, unit
LayerNorms, at every depth. The official modules' constructors divide each block's attention
output and second MLP layer by sqrt(2 x its 1-based depth) (`fix_init_weight`), but
`init_model` (src/helper.py) then draws every nn.Linear of encoder and predictor again at
N(0, 0.02), which undoes it; `--rescale_init true` keeps the division (the short tables' rows
were measured with it). EMA momentum from 0.996
rising linearly to 1 over the run. The default
predictor is `init_model`'s (src/helper.py): 6 blocks of 384; the ImageNet configs use 12 x 384.
`min_keep` 4 is MaskCollator's default: the configs' 10 is for 14x14 and larger grids, and at
8x8 (32 px images, 4 px patches) a target block has 6-12 patches.

Recipe (configs/in1k_vith14_ep300.yaml): AdamW, lr from 2e-4 warming up over 40 epochs to 1e-3
(for batch 2048), cosine to 1e-6, weight decay 0.04 rising to 0.4 on a cosine
(`--final_weight_decay`), 300 epochs; views: a random resized crop of 30-100 %, nothing else
(transformations.ijepa_transform). Evaluated from the mean of the patch tokens (`--pool mean`,
the default for checkpoints of this method). The backbone, this toolkit's ViT, has a class token,
which the official encoder lacks: training leaves it out (`forward_tokens(cls=False)`), and so do
the evaluated features (kNN, online and linear probes: the blocks run on the patch tokens alone,
the ViT's `class_token_attends` off). `--eval_class_token true`: the untrained token goes through
the blocks beside the patches (not into the mean), as the short tables' rows were measured.
"""

import math
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from methods import Method, register
from methods.hparams import Flag
from methods.mae import require_vit
from methods.momentum import ema_update, frozen_copy
from methods.recipe import Recipe
from networks.vit import (
    fix_position_embedding,
    residual_projections,
    sincos_position_embedding,
    transformer_blocks,
    trunc_normal_init,
)
from utils.accel import at_least_float32
from utils.misc import unit_float

TARGET_SCALE, ASPECT, MIN_KEEP = (0.15, 0.2), (0.75, 1.5), 4  # the official MaskCollator's


def block_size(side: int, scale: tuple, aspect: tuple, r: float | None = None) -> tuple[int, int]:
    """A block's height and width in patches: `_sample_block_size`, one draw `r` in [0, 1] for
    both (drawn here when None)."""
    r = torch.rand(1).item() if r is None else r
    count = int(side * side * (scale[0] + r * (scale[1] - scale[0])))
    ratio = aspect[0] + r * (aspect[1] - aspect[0])
    h, w = round(math.sqrt(count * ratio)), round(math.sqrt(count / ratio))
    return min(h, side - 1), min(w, side - 1)


def place_block(side: int, size: tuple[int, int], allowed: list[Tensor], min_keep: int):
    """A block of `size` at a random place: its patch indices (row-major) restricted to the
    patches that every mask in `allowed` leaves (drawing again up to 20 times, then dropping the
    constraints one at a time, while fewer than min_keep + 1 remain), and its complement."""
    h, w = size
    tries, timeout = 0, 20
    while True:
        top = torch.randint(0, side - h, (1,)).item()
        left = torch.randint(0, side - w, (1,)).item()
        block = torch.zeros(side, side, dtype=torch.bool)
        block[top : top + h, left : left + w] = True
        kept = block.clone()
        for region in allowed[: max(len(allowed) - tries, 0)]:
            kept &= region
        if kept.sum() > min_keep:
            return kept.flatten().nonzero().flatten(), ~block
        timeout -= 1
        if timeout == 0:
            tries, timeout = tries + 1, 20


def multiblock_masks(
    batch: int,
    side: int,
    num_targets: int = 4,
    target_scale: tuple[float, float] = TARGET_SCALE,
    context_scale: tuple[float, float] = (0.85, 1.0),
    aspect: tuple[float, float] = ASPECT,
    min_keep: int = MIN_KEEP,
) -> tuple[Tensor, Tensor]:
    """The context patches [N, Kc] and the target blocks [M, N, Kt] of a batch of images with
    side x side patches (indices in row-major order), as MaskCollator with nenc 1 and npred M."""
    target_size = block_size(side, target_scale, aspect)
    if target_size[0] * target_size[1] <= min_keep:  # no place would ever be accepted
        raise ValueError(
            f"{side}x{side} patches are too few for I-JEPA's target blocks: use a larger "
            "--image_size"
        )
    context_size = block_size(side, context_scale, (1.0, 1.0))
    contexts, targets = [], []
    for _ in range(batch):
        blocks = [place_block(side, target_size, [], min_keep) for _ in range(num_targets)]
        targets.append([indices for indices, _ in blocks])
        free = [complement for _, complement in blocks]  # the context avoids every target
        contexts.append(place_block(side, context_size, free, min_keep)[0])
    kt = min(len(t) for image in targets for t in image)
    kc = min(len(c) for c in contexts)
    context = torch.stack([c[:kc] for c in contexts])
    target = torch.stack([torch.stack([t[:kt] for t in image]) for image in targets], dim=1)
    return context, target


def select(tokens: Tensor, indices: Tensor) -> Tensor:
    """tokens [N, L, D] at `indices` [N, K] -> [N, K, D] (the official `apply_masks`)."""
    return torch.gather(tokens, 1, indices.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


def ijepa_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Smooth L1 (beta 1) between the predicted and the target representations of the target
    blocks' tokens, averaged over every element; no gradient into the target.

    Args:
        pred: [M·N, Kt, D] the predictor's outputs.
        target: [M·N, Kt, D] the target encoder's layer-normalised tokens there.
    """
    return F.smooth_l1_loss(pred, target.detach())


def ijepa_init(
    module: nn.Module, projections: list[tuple[Tensor, Tensor]], rescale: bool = False
) -> None:
    """I-JEPA's initialisation as `init_model` (src/helper.py) leaves it: truncated N(0, 0.02)
    weights (Linear, attention input, patch projection), zero biases, unit LayerNorms.

    The modules' constructors draw these (`_init_weights`), then divide block i's attention
    output projection and second MLP layer (its `projections`, `attn.proj` and `mlp.fc2` in the
    official code) by sqrt(2 i), i from 1 (`fix_init_weight`); `init_model` then draws every
    nn.Linear of encoder and predictor again at N(0, 0.02) (LayerNorms 1 / 0), which undoes the
    division, and leaves the patch projection (a Conv2d) as drawn. `rescale` keeps the division
    (`--rescale_init`)."""
    trunc_normal_init(module, conv=True)
    if not rescale:
        return
    with torch.no_grad():
        for depth, branch_ends in enumerate(projections, start=1):
            for weight in branch_ends:
                weight.div_(math.sqrt(2.0 * depth))


class Predictor(nn.Module):
    """I-JEPA's narrow ViT predictor (`VisionTransformerPredictor`)."""

    def __init__(
        self, dim: int, width: int, depth: int, heads: int, side: int, rescale: bool = False
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(dim, width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        pos = sincos_position_embedding(width, side)[1:].unsqueeze(0)  # no class token
        self.register_buffer("pos", pos, persistent=False)
        self.blocks = transformer_blocks(depth, width, heads)
        self.norm = nn.LayerNorm(width, eps=1e-6)
        self.proj = nn.Linear(width, dim)
        ijepa_init(self, residual_projections(self.blocks), rescale)
        nn.init.trunc_normal_(self.mask_token, std=0.02)  # not a Linear: init_model keeps it

    def forward(self, context: Tensor, context_idx: Tensor, target_idx: Tensor) -> Tensor:
        """Predictions [M·N, Kt, D] (target-block-major, as the official `apply_masks`) from the
        context tokens [N, Kc, D] at `context_idx` [N, Kc] for the targets [M, N, Kt]."""
        m, n, kt = target_idx.shape
        pos = self.pos.expand(n, -1, -1)
        x = self.embed(context) + select(pos, context_idx)
        x = x.repeat(m, 1, 1)  # one copy of the context per target block
        queries = self.mask_token + select(pos.repeat(m, 1, 1), target_idx.reshape(m * n, kt))
        x = self.norm(self.blocks(torch.cat([x, queries], dim=1)))
        return self.proj(x[:, context.shape[1] :])


RESCALE_INIT = Flag(
    "divide each block's attention output projection and second MLP layer by sqrt(2 x its "
    "depth) after the truncated-normal init, in encoder and predictor (the modules' "
    "fix_init_weight, which the official init_model undoes by drawing every Linear again)"
)
EVAL_CLASS_TOKEN = Flag(
    "the ViT's untrained class token goes through its blocks when its features (the patch "
    "tokens' mean: kNN, probes) are taken (the official encoder has none; training never sees it)"
)


@register("ijepa")
class IJEPA(Method):
    """Context ViT encoder + narrow predictor; EMA target encoder on the whole image."""

    loss_summary = "`ijepa_loss` (smooth L1 on target blocks), EMA target"
    augmentation = "ijepa"
    momentum_backbone = "target_backbone"
    collapse_hint = "too low an EMA momentum (--ema_momentum) or too high an lr"
    requires_vit = True
    pool = "mean"  # its features: the mean of the patch tokens (no class token is trained)
    # Appendix A.1 of the paper (the official repository has no evaluation code): "We use the
    # target-encoder for evaluation and average pool its output"
    eval_momentum_backbone = True
    init_flags = ("rescale_init", "eval_class_token")  # the untrained baseline's too
    recipes = (
        Recipe(
            source=(
                "facebookresearch/ijepa 52c1ae9, configs/in1k_vith14_ep300.yaml (ViT-H/14 on 16 "
                "GPUs: batch 2048, 300 epochs); no CIFAR recipe there or in solo-learn"
            ),
            optimizer="adamw",
            betas=(0.9, 0.999),
            exclude_bias_and_norm=True,
            base_lr=1e-3,
            lr_scaling="none",
            batch_size=2048,
            num_epochs=300,
            weight_decay=0.04,
            final_weight_decay=0.4,
            warmup_epochs=40,
            warmup_lr=2e-4,
            final_lr=1e-6,
            sources={
                "optimizer, betas": (
                    "src/helper.py:142 (torch.optim.AdamW(param_groups): default betas)"
                ),
                "exclude_bias_and_norm": (
                    "src/helper.py:121-138 (biases, 1-D params: weight_decay 0, WD_exclude)"
                ),
                "base_lr, lr_scaling": (
                    "in1k_vith14_ep300.yaml:49 (lr 0.001); src/train.py:121 (used as given, not "
                    "scaled)"
                ),
                "batch_size": (
                    "in1k_vith14_ep300.yaml:2 (128 per GPU); README.md:120 (16 GPUs, batch 2048)"
                ),
                "num_epochs, warmup_epochs": "in1k_vith14_ep300.yaml:45,51 (epochs 300, warmup 40)",
                "weight_decay, final_weight_decay": (
                    "in1k_vith14_ep300.yaml:47,52 (0.04 -> 0.4); src/utils/schedulers.py:48-75 "
                    "(cosine)"
                ),
                "warmup_lr, final_lr": (
                    "in1k_vith14_ep300.yaml:46,50 (start_lr 0.0002, final_lr 1.0e-06: absolute)"
                ),
            },
        ),
    )

    def __init__(
        self,
        backbone: nn.Module,
        feat_dim: int,
        pred_depth: Annotated[int, Flag("I-JEPA predictor blocks")] = 6,
        pred_emb_dim: Annotated[int, Flag("I-JEPA predictor width")] = 384,
        num_targets: Annotated[int, Flag("I-JEPA target blocks per image")] = 4,
        ema_momentum: Annotated[
            float,
            Flag("EMA momentum of the target encoder at step 0, rising linearly to 1", unit_float),
        ] = 0.996,
        rescale_init: Annotated[bool, RESCALE_INIT] = False,
        eval_class_token: Annotated[bool, EVAL_CLASS_TOKEN] = False,
        pretrained: bool = False,
    ) -> None:
        super().__init__()
        self.backbone = require_vit(backbone, "I-JEPA")
        heads = backbone.num_heads
        if pred_emb_dim % heads or pred_emb_dim % 4:
            raise ValueError(f"pred_emb_dim {pred_emb_dim} must divide by 4 and by {heads} heads")
        self.side = backbone.image_size // backbone.patch_size
        # refused now, not at a random step of the run: some draw would give a target block of
        # no more than MIN_KEEP patches, which multiblock_masks cannot place
        draws = (block_size(self.side, TARGET_SCALE, ASPECT, r / 100) for r in range(101))
        if min(h * w for h, w in draws) <= MIN_KEEP:
            raise ValueError(
                f"{self.side}x{self.side} patches are too few for its target blocks: use a "
                f"larger --image_size (32 px gives 8x8 patches of 4 px)"
            )
        if not pretrained:  # --pretrained / --init_backbone: the backbone keeps its weights
            ijepa_init(backbone, backbone.residual_projections(), rescale_init)
            fix_position_embedding(backbone)
        backbone.position_parameter.requires_grad_(False)
        backbone.class_token.requires_grad_(False)  # unused: no gradient, no DDP reduction
        # the features (pool "mean") from the patch tokens alone, as the official encoder has no
        # class token (before the target's copy: both encoders evaluate so)
        backbone.class_token_attends = eval_class_token
        self.predictor = Predictor(
            feat_dim, pred_emb_dim, pred_depth, heads, self.side, rescale_init
        )
        self.target_backbone = frozen_copy(backbone)
        self.num_targets, self.ema_momentum = num_targets, ema_momentum
        self.current_momentum = ema_momentum

    def forward(self, views: list[Tensor], labels: Tensor | None = None) -> dict[str, Tensor]:
        images = views[0]
        side = images.shape[-1] // self.backbone.patch_size
        context_idx, target_idx = multiblock_masks(images.shape[0], side, self.num_targets)
        context_idx, target_idx = context_idx.to(images.device), target_idx.to(images.device)
        with torch.no_grad():
            h = self.target_backbone.forward_tokens(images, cls=False)
            h = F.layer_norm(h, h.shape[-1:])
            target = torch.cat([select(h, t) for t in target_idx])  # [M·N, Kt, D]
        context = self.backbone.forward_tokens(images, context_idx, cls=False)
        pred = self.predictor(context, context_idx, target_idx)
        return {"loss": ijepa_loss(at_least_float32(pred), at_least_float32(target))}

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """EMA with the official linear schedule: m = m0 + (1 - m0) step / total."""
        m0 = self.ema_momentum
        self.current_momentum = m0 + (1 - m0) * min(step / max(total_steps, 1), 1.0)
        ema_update(self.target_backbone, self.backbone, self.current_momentum)
