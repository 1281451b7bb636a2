"""DINOv2: Oquab, Darcet, Moutakanni et al., "DINOv2: Learning Robust Visual Features without
Supervision", TMLR 2024 (https://arxiv.org/abs/2304.07193); official code
facebookresearch/dinov2 (train/ssl_meta_arch.py, loss/, data/masking.py, data/collate.py,
utils/param_groups.py, configs/ssl_default_config.yaml).

DINO's self-distillation of the class token plus iBOT's of the masked patch tokens, with a
KoLeo regulariser. A student ViT and its EMA teacher see the two global crops; the student
also sees the local crops, and in a share of its global crops some patches are replaced by a
learnt mask token (block-wise masking). Per step:

    DINO    mean over the pairs (teacher global crop i, student crop j != i) of
            H(P_t(cls_i), softmax(g_s(cls_j) / T_s))           (`distillation_loss`)
    iBOT    mean over the 2B global crops of the mean over its masked patches p of
            H(P_t(patch_p), softmax(h_s(patch_p) / T_s)), crops without a mask counting 0
            (`ibot_patch_loss`: the teacher sees the crop unmasked)
    KoLeo   -mean_i log(min_{j != i} ||x_i - x_j||) over the L2-normalised class tokens of
            the student (before the head), for each global crop separately  (`koleo_loss`)
    L = DINO + w_koleo (KoLeo(crop 1) + KoLeo(crop 2)) + w_ibot iBOT

The teacher's distributions P_t are Sinkhorn-Knopp codes of its logits at temperature T_t
(`--centering sinkhorn_knopp`, the ViT-L/14 and ViT-g/14 configs that trained the released
models, and the paper, section 4: "we use the Sinkhorn-Knopp batch normalization of SwAV") over
the class tokens of the global batch, and separately over the masked patches of all processes;
or DINO's centring, softmax((t - c) / T_t) with running means c of the class-token logits and of
the masked patches' (`--centering centering`: ssl_default_config.yaml's value). T_t rises
linearly from 0.04 to 0.07 over the first 30 epochs *per step* (CosineScheduler's warmup, unlike
DINO's per epoch), T_s = 0.1.

Heads: DINO's (3-layer GELU MLP 2048 -> 2048 -> 256, L2 norm, weight-normalised linear to K =
65536, its gain trained: the official DINOHead never freezes it); the iBOT head is the DINO head
itself (`ibot.separate_head` false, the default; the student runs the head once over local class
tokens, global class tokens and masked patches) or its own (`--ibot_separate_head`).

Masks (data/collate.py `collate_data_and_cast`, data/masking.py `MaskingGenerator`, BEiT's
block-wise masking): of the 2B global crops of a batch, int(2B x 0.5) get a mask; their ratios are
stratified over [0.1, 0.5] (mask i draws its share of the L patches uniformly from the i-th of
int(2B x 0.5) equal intervals), the others none, and the list is shuffled. A mask is built of
rectangles of 4 to L/2 patches with aspect ratios from 0.3 to 1/0.3 (log-uniform), each adding
patches not yet masked, until the target count (or no rectangle fits). Drawn with Python's
`random` in the same order of calls as the official collate, so that the same state gives the
same masks (and the checkpoint's random state resumes them).

Training (main.py's engine; optimizer from the recipe): the student's gradients clipped to norm
3 for each part on its own (backbone with the mask token, DINO head, iBOT head: FSDP's
clip_grad_norm_ per submodule); the heads' last layers keep their weights during the first epoch
(the official lr 0 for `last_layer` parameters: the optimizer still sees their gradients, so its
moments move; here the weights are put back after the step, which is the same); layer-wise lr
decay 0.9 (lr x 0.9^(depth + 1 - layer), the patch embedding, positions, class token, registers
and mask token at layer 0) and x 0.2 for the patch embedding (`utils/param_groups.py`); the
teacher's EMA momentum from 0.992 to 1 on a cosine; stochastic depth 0.3 at every block
(`drop_path_uniform`), LayerScale 1e-5 (the backbone options `--vit_layerscale`, and
`--vit_registers` for register tokens: 0 in the default config, 4 in the released `_reg4`
models). Evaluation reads the teacher (the official checkpoints of `eval/` hold it).
"""

import math
import random
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from methods import Method, register
from methods.dino import (
    CENTER_MOMENTUM,
    FREEZE_LAST_LAYER,
    HEAD_HIDDEN_DIM,
    OUT_DIM,
    TEACHER_TEMP,
    TEACHER_TEMP_WARMUP,
    WARMUP_TEACHER_TEMP,
    DINOHead,
    distillation_loss,
)
from methods.hparams import EMA_MOMENTUM, Flag
from methods.momentum import cosine_momentum, ema_update, frozen_copy
from methods.recipe import Recipe
from methods.swav import sinkhorn
from networks.vit import MaskableViT, trunc_normal_init
from utils.accel import at_least_float32
from utils.distributed import all_reduce_sum, world_size
from utils.misc import non_negative_float, unit_float


def koleo_loss(x: Tensor, eps: float = 1e-8) -> Tensor:
    """The Kozachenko-Leonenko entropy estimator as a loss (Sablayrolles et al., "Spreading
    vectors for similarity search", ICLR 2019): with x_i L2-normalised,

        L = -1/n sum_i log(||x_i - x_nn(i) + eps|| + eps),   nn(i) = argmax_{j != i} <x_i, x_j>

    (the eps inside the norm as torch's pairwise_distance, which the official KoLeoLoss uses).
    Spreads a batch's points apart by pushing each from its nearest neighbour; computed in
    float32. Args: x [n, D], n >= 2."""
    with torch.autocast(x.device.type, enabled=False):
        x = F.normalize(at_least_float32(x), dim=-1, eps=eps)
        dots = x @ x.T
        dots.fill_diagonal_(-1.0)  # a point is not its own neighbour (-1: the lowest cosine)
        neighbour = dots.argmax(dim=1)
        distances = F.pairwise_distance(x, x[neighbour], eps=eps)
        return -torch.log(distances + eps).mean()


def ibot_patch_loss(
    student: Tensor, targets: Tensor, masks: Tensor, student_temp: float = 0.1
) -> Tensor:
    """iBOT's masked-token distillation as DINOv2 weighs it: each image's mean over its masked
    patches of H(target, softmax(s / T_s)), averaged over all images (those without a mask count
    0):

        L = -1/N sum_n 1/|M_n| sum_{p in M_n} sum_k t_p,k log softmax(s_p / T_s)_k

    Args:
        student: [M, K] student logits of the masked patches, in the order of
            masks.flatten().nonzero() (image by image, row-major).
        targets: [M, K] teacher distributions of the same patches; no gradient flows into them.
        masks: [N, L] (or [N, h, w]) booleans: which patches of each image are masked.
        student_temp: T_s.
    """
    flat = masks.flatten(1)
    per_image = flat.sum(dim=1).clamp(min=1)
    weights = (1.0 / per_image).unsqueeze(1).expand_as(flat)[flat]  # [M]: 1 / |M_n| per patch
    log_p = F.log_softmax(at_least_float32(student) / student_temp, dim=-1)
    cross = (targets.detach() * log_p).sum(dim=-1)
    return -(cross * weights).sum() / flat.shape[0]


def block_mask(
    height: int,
    width: int,
    count: int,
    max_block: float,
    min_block: int = 4,
    min_aspect: float = 0.3,
    rng: random.Random | None = None,
) -> Tensor:
    """[height, width] booleans with about `count` patches masked in rectangles (BEiT's
    block-wise masking, DINOv2's MaskingGenerator): while fewer than `count` are masked, up to
    10 tries to place a rectangle of area uniform in [min_block, min(what is left, max_block)]
    and aspect ratio log-uniform in [min_aspect, 1 / min_aspect] that adds at least one new
    patch and no more than what is left; stops when no try adds any. `rng`: Python's random
    module by default (the random calls in the official order)."""
    rng = rng or random
    mask = torch.zeros(height, width, dtype=torch.bool)
    log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))
    masked = 0
    while masked < count:
        left_over = min(count - masked, max_block)
        added = 0
        for _ in range(10):
            area = rng.uniform(min_block, left_over)
            aspect = math.exp(rng.uniform(*log_aspect))
            h, w = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if w < width and h < height:
                top, left = rng.randint(0, height - h), rng.randint(0, width - w)
                box = mask[top : top + h, left : left + w]
                new = h * w - int(box.sum())
                if 0 < new <= left_over:
                    box.fill_(True)
                    added = new
            if added > 0:
                break
        if added == 0:
            break
        masked += added
    return mask


def batch_masks(
    images: int,
    side: int,
    ratio: tuple[float, float] = (0.1, 0.5),
    probability: float = 0.5,
    rng: random.Random | None = None,
) -> Tensor:
    """[images, side, side] booleans for a batch of global crops (DINOv2's
    collate_data_and_cast): int(images x probability) masks with shares of the side^2 patches
    stratified over `ratio` (the i-th drawn uniformly between the i-th and (i+1)-th of
    int(images x probability) + 1 evenly spaced float32 values, as torch.linspace gives them),
    the rest empty, in shuffled order; each by `block_mask` with rectangles of at most half the
    patches."""
    rng = rng or random
    patches = side * side
    masked = int(images * probability)
    bounds = torch.linspace(ratio[0], ratio[1], masked + 1)  # float32, as the official
    masks = []
    for i in range(masked):  # uniform between float32 bounds: a float32 share, as official
        count = int(patches * rng.uniform(bounds[i], bounds[i + 1]))
        masks.append(block_mask(side, side, count, 0.5 * patches, rng=rng))
    masks += [torch.zeros(side, side, dtype=torch.bool)] * (images - masked)
    rng.shuffle(masks)
    return torch.stack(masks)


def teacher_temperature(step: int, warmup_steps: int, start: float, end: float) -> float:
    """T_t at global step `step`: np.linspace(start, end, warmup_steps)[step] during the warmup
    (CosineScheduler's warmup: `end` reached at its last step), then `end`."""
    if step >= warmup_steps:
        return end
    if warmup_steps == 1:
        return start
    return start + (end - start) * step / (warmup_steps - 1)


def dinov2_vit_init(backbone: MaskableViT) -> None:
    """DINOv2's DinoVisionTransformer.init_weights: truncated N(0, 0.02) Linear weights (the
    attention's too) with zero biases and position embeddings, N(0, 1e-6) class token (and
    registers, `set_registers`' own), unit LayerNorms; the patch projection keeps nn.Conv2d's
    initialisation."""
    trunc_normal_init(backbone)
    backbone.patch_projection.reset_parameters()
    nn.init.normal_(backbone.class_token, std=1e-6)
    nn.init.trunc_normal_(backbone.position_parameter, std=0.02)


def default_config(what: str, sources: dict[str, str], **regime) -> Recipe:
    """A regime of ssl_default_config.yaml's optimisation (AdamW, lr 0.004 per 1024 under
    square-root scaling, weight decay 0.04 -> 0.4, warmup from 0): `regime` the values that
    differ by image size (batch, epochs, warmup, final lr, settings), `sources` theirs."""
    return Recipe(
        source=f"facebookresearch/dinov2 b8931f7, {what}",
        optimizer="adamw",
        betas=(0.9, 0.999),
        exclude_bias_and_norm=True,
        base_lr=0.002,
        lr_scaling="sqrt",
        weight_decay=0.04,
        final_weight_decay=0.4,
        warmup_lr=0.0,
        sources={
            "optimizer, betas": (
                "train/train.py build_optimizer (AdamW, betas adamw_beta1/2 0.9, 0.999)"
            ),
            "exclude_bias_and_norm": (
                "utils/param_groups.py (biases, norms and LayerScale gammas: wd_multiplier 0)"
            ),
            "base_lr, lr_scaling": (
                "ssl_default_config.yaml optim base_lr 0.004 per 1024, scaling_rule "
                "sqrt_wrt_1024 (0.002 per 256 under sqrt scaling)"
            ),
            **sources,
            "weight_decay, final_weight_decay": (
                "ssl_default_config.yaml weight_decay 0.04, weight_decay_end 0.4 (cosine)"
            ),
            "warmup_lr": "train/train.py build_schedulers (start_warmup_value 0)",
        },
        **regime,
    )


CENTERING = Flag(
    "how the teacher's outputs become targets: sinkhorn_knopp (the released models' configs) or "
    "centering (DINO's running mean; ssl_default_config.yaml)",
    lambda v: v if v in ("sinkhorn_knopp", "centering") else _bad_centering(v),
)


def _bad_centering(value: str) -> str:
    raise ValueError(f"choose sinkhorn_knopp or centering, not {value!r}")


@register("dinov2")
class DINOv2(Method):
    """Student ViT + DINO head (+ iBOT head), EMA teacher of each, mask token; the centres."""

    loss_summary = "`distillation_loss` + `ibot_patch_loss` + `koleo_loss`, EMA teacher"
    augmentation = "dinov2"
    requires_vit = True
    momentum_backbone = "teacher_backbone"
    eval_momentum_backbone = True  # the official eval/ checkpoints are the teacher's
    view_options = {"interpolation": "bicubic"}  # augmentations.py: BICUBIC crops
    eval_interpolation = "bicubic"  # transforms.py make_classification_eval_transform
    vit_layerscale = 1e-5
    collapse_hint = "too little sharpening (--teacher_temp), too high an lr, or no KoLeo"
    recipes = (
        default_config(
            "README's ViT-L/16 ImageNet-1k command (configs/train/vitl16_short.yaml = "
            "ssl_default_config.yaml) on 4 nodes x 8 GPUs",
            images="large",
            batch_size=2048,
            num_epochs=200,
            warmup_epochs=20,
            final_lr=1e-6 / math.sqrt(2048 / 256),
            settings={"teacher_temp_warmup_epochs": 60, "freeze_prototypes_epochs": 2},
            sources={
                "batch_size": "ssl_default_config.yaml batch_size_per_gpu 64; README (--nodes 4)",
                "num_epochs, warmup_epochs, teacher_temp_warmup_epochs, freeze_prototypes_epochs": (
                    "ssl_default_config.yaml: epochs 100, warmup_epochs 10, "
                    "warmup_teacher_temp_epochs 30, freeze_last_layer_epochs 1 of "
                    "OFFICIAL_EPOCH_LENGTH 1250 steps at batch 2048: 2 passes over ImageNet-1k "
                    "each"
                ),
                "final_lr": (
                    "ssl_default_config.yaml min_lr 1e-6 (absolute: 1e-6 / sqrt(2048 / 256) "
                    "per 256 here)"
                ),
            },
        ),
        default_config(
            "ssl_default_config.yaml's values with its epochs counted as passes over the data "
            "(it has no small-image recipe)",
            images="small",
            batch_size=256,
            num_epochs=100,
            warmup_epochs=10,
            final_lr=1e-6,
            sources={
                "batch_size": (
                    "the CIFAR recipes' batch here (recipes/cifar10); the official 2048 is "
                    "ImageNet's"
                ),
                "num_epochs, warmup_epochs": (
                    "ssl_default_config.yaml epochs 100, warmup_epochs 10 (of 1250 steps there)"
                ),
                "final_lr": "ssl_default_config.yaml min_lr 1e-6 (at batch 256: 1e-6 per 256)",
            },
        ),
    )

    def __init__(
        self,
        backbone: nn.Module,
        feat_dim: int,
        proj_hidden_dim: Annotated[int, HEAD_HIDDEN_DIM] = 2048,
        proj_dim: Annotated[int, Flag("head bottleneck size")] = 256,
        out_dim: Annotated[int, OUT_DIM] = 65536,
        temperature: Annotated[float, Flag("student softmax temperature")] = 0.1,
        teacher_temp: Annotated[float, TEACHER_TEMP] = 0.07,
        warmup_teacher_temp: Annotated[float, WARMUP_TEACHER_TEMP] = 0.04,
        teacher_temp_warmup_epochs: Annotated[int, TEACHER_TEMP_WARMUP] = 30,
        centering: Annotated[str, CENTERING] = "sinkhorn_knopp",
        center_momentum: Annotated[float, CENTER_MOMENTUM] = 0.9,
        ema_momentum: Annotated[float, EMA_MOMENTUM] = 0.992,
        freeze_prototypes_epochs: Annotated[int, FREEZE_LAST_LAYER] = 1,
        koleo_weight: Annotated[
            float, Flag("weight of the KoLeo regulariser", non_negative_float)
        ] = 0.1,
        ibot_weight: Annotated[
            float, Flag("weight of iBOT's masked-patch loss (0: off)", non_negative_float)
        ] = 1.0,
        ibot_separate_head: Annotated[
            bool, Flag("a head of its own for the iBOT loss (else the DINO head)")
        ] = False,
        ibot_out_dim: Annotated[int, Flag("output size of a separate iBOT head")] = 65536,
        mask_ratio_min: Annotated[
            float, Flag("smallest share of patches a mask hides", unit_float)
        ] = 0.1,
        mask_ratio_max: Annotated[
            float, Flag("largest share of patches a mask hides", unit_float)
        ] = 0.5,
        mask_probability: Annotated[
            float, Flag("share of the global crops that get a mask", unit_float)
        ] = 0.5,
        layerwise_decay: Annotated[
            float, Flag("layer-wise lr decay of the ViT (1: none)", unit_float)
        ] = 0.9,
        patch_embed_lr_scale: Annotated[
            float, Flag("lr multiplier of the patch embedding", non_negative_float)
        ] = 0.2,
        clip_grad: Annotated[
            float,
            Flag(
                "clip the gradient norm of each part (backbone, DINO head, iBOT head) to this "
                "(0: off)",
                non_negative_float,
            ),
        ] = 3.0,
        drop_path_rate: Annotated[
            float, Flag("stochastic depth of the student's blocks", unit_float)
        ] = 0.3,
        drop_path_uniform: Annotated[
            bool, Flag("the same stochastic depth at every block (else rising with depth)")
        ] = True,
        pretrained: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(backbone, MaskableViT):
            raise ValueError("DINOv2 masks a ViT's patch tokens: use a vit_* or plain timm ViT")
        if not mask_ratio_min <= mask_ratio_max:
            raise ValueError(f"mask_ratio_min {mask_ratio_min} > mask_ratio_max {mask_ratio_max}")
        for name, value in (("ema_momentum", ema_momentum), ("center_momentum", center_momentum)):
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if not pretrained:  # before the teacher's copy
            dinov2_vit_init(backbone)
        self.backbone = backbone
        width = backbone.class_token.shape[-1]
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))  # the official zeros

        def head(k: int) -> DINOHead:
            return DINOHead(width, k, proj_hidden_dim, proj_dim, 3, norm_last_layer=False)

        self.head = head(out_dim)
        self.ibot_head = head(ibot_out_dim) if ibot_separate_head else None
        self.teacher_backbone = frozen_copy(backbone)
        self.teacher_head = frozen_copy(self.head)
        self.teacher_ibot_head = frozen_copy(self.ibot_head) if ibot_separate_head else None
        backbone.set_drop_path(drop_path_rate, uniform=drop_path_uniform)  # the student's only
        self.temperature, self.centering = temperature, centering
        self.teacher_temp, self.warmup_teacher_temp = teacher_temp, warmup_teacher_temp
        self.teacher_temp_warmup_epochs = teacher_temp_warmup_epochs
        self.current_teacher_temp = (
            warmup_teacher_temp if teacher_temp_warmup_epochs else teacher_temp
        )
        self.center_momentum, self.ema_momentum = center_momentum, ema_momentum
        self.current_momentum = ema_momentum
        self.freeze_prototypes_epochs = freeze_prototypes_epochs
        self.koleo_weight, self.ibot_weight = koleo_weight, ibot_weight
        self.mask_ratio = (mask_ratio_min, mask_ratio_max)
        self.mask_probability = mask_probability
        self.layerwise_decay, self.patch_embed_lr_scale = layerwise_decay, patch_embed_lr_scale
        self.clip_grad = clip_grad
        # DINO's centring (--centering centering): running means, and this step's, folded in
        # after the optimizer step
        self.register_buffer("center", torch.zeros(out_dim))
        self.register_buffer(
            "patch_center", torch.zeros(ibot_out_dim if ibot_separate_head else out_dim)
        )
        self.register_buffer("batch_center", torch.zeros_like(self.center), persistent=False)
        self.register_buffer(
            "batch_patch_center", torch.zeros_like(self.patch_center), persistent=False
        )
        self.kept: list[Tensor] = []  # last-layer weights held during the frozen epochs

    # ---- schedules and optimizer options ----

    def set_step(self, step: int, steps_per_epoch: int) -> None:
        self.current_teacher_temp = teacher_temperature(
            step,
            self.teacher_temp_warmup_epochs * steps_per_epoch,
            self.warmup_teacher_temp,
            self.teacher_temp,
        )

    def param_group(self, name: str, param: nn.Parameter) -> dict:
        """Layer-wise lr decay (utils/param_groups.py): lr x decay^(depth + 1 - layer), the
        mask token at layer 0 with the embeddings, the heads at depth + 1; the patch embedding
        x patch_embed_lr_scale on top."""
        net = self.backbone
        if name.startswith("backbone."):
            layer = net.layer_id(name.removeprefix("backbone."))
        else:
            layer = 0 if name == "mask_token" else net.depth + 1
        scale = self.layerwise_decay ** (net.depth + 1 - layer)
        if any(param is p for p in net.patch_projection.parameters()):
            scale *= self.patch_embed_lr_scale
        return {"lr_scale": scale} if scale != 1 else {}

    # ---- the step ----

    def targets(self, logits: Tensor, center: Tensor, samples: Tensor) -> Tensor:
        """The teacher's distributions of `logits` [n, K] (this process's; `samples` the count
        over all processes): Sinkhorn-Knopp codes, or softmax((t - c) / T_t)."""
        logits = at_least_float32(logits)
        if self.centering == "sinkhorn_knopp":
            return sinkhorn(logits, self.current_teacher_temp, 3, samples)
        return F.softmax((logits - center) / self.current_teacher_temp, dim=-1)

    @torch.no_grad()
    def teacher(self, crops: Tensor, flat: Tensor, masked: Tensor) -> tuple[Tensor, Tensor | None]:
        """The targets of the global crops' class tokens [2B, K] and of their masked patches
        [M, K'] (None without a masked patch in any process or without the iBOT loss); under
        --centering centering, this step's means for the centres' update: the class tokens'
        over all processes, the masked patches' per process and then over the processes (the
        official iBOTPatchLoss.reduce_center_update)."""
        tokens = self.teacher_backbone.forward_tokens(crops)
        cls = at_least_float32(self.teacher_head(tokens[:, 0]))
        patch = at_least_float32((self.teacher_ibot_head or self.teacher_head)(tokens[:, 1:][flat]))
        images = torch.tensor(float(crops.shape[0] * world_size()), device=crops.device)
        if self.centering == "centering":
            self.batch_center.copy_(all_reduce_sum(cls.sum(dim=0)) / images)
            mean = patch.sum(dim=0) / max(len(patch), 1)
            self.batch_patch_center.copy_(all_reduce_sum(mean) / world_size())
        patch_targets = None
        if self.ibot_weight > 0 and masked > 0:
            patch_targets = self.targets(patch, self.patch_center, masked)
        return self.targets(cls, self.center, images), patch_targets

    def forward(self, views: list[Tensor], labels: Tensor | None = None) -> dict[str, Tensor]:
        crops = torch.cat(views[:2])  # the global crops, crop-major as the official collate
        side = crops.shape[-1] // self.backbone.patch_size
        masks = batch_masks(crops.shape[0], side, self.mask_ratio, self.mask_probability)
        masks = masks.to(crops.device)
        flat = masks.flatten(1)
        masked = all_reduce_sum(flat.sum().float())  # over all processes
        cls_targets, patch_targets = self.teacher(crops, flat, masked)

        student = self.backbone.forward_tokens(crops, masked=(masks, self.mask_token))
        s_cls, s_patch = student[:, 0], student[:, 1:][flat]
        inputs = [s_cls]
        if len(views) > 2:  # the local crops, one size
            inputs.append(self.backbone.forward_tokens(torch.cat(views[2:]))[:, 0])
        if self.ibot_head is None:  # one pass of the head over class and patch tokens
            out = self.head(torch.cat([*inputs, s_patch]))
            cls_out, patch_out = out[: len(out) - len(s_patch)], out[len(out) - len(s_patch) :]
        else:
            cls_out, patch_out = self.head(torch.cat(inputs)), self.ibot_head(s_patch)
        n = views[0].shape[0]
        dino = distillation_loss(
            list(cls_out.split(n)), list(cls_targets.chunk(2)), self.temperature
        )
        koleo = sum(koleo_loss(c) for c in s_cls.chunk(2))
        loss = dino + self.koleo_weight * koleo
        ibot = torch.zeros((), device=loss.device)
        if patch_targets is not None:
            ibot = ibot_patch_loss(patch_out, patch_targets, flat, self.temperature)
            loss = loss + self.ibot_weight * ibot
        return {
            "loss": loss,
            "z1": cls_out[:n],
            "z2": cls_out[n : 2 * n],
            "dino_loss": dino.detach(),
            "koleo_loss": koleo.detach(),
            "ibot_loss": ibot.detach(),
        }

    # ---- around the optimizer step ----

    def last_layers(self) -> list[nn.Parameter]:
        heads = [h for h in (self.head, self.ibot_head) if h is not None]
        return [p for h in heads for p in h.last_layer.parameters()]

    def before_optimizer_step(self) -> None:
        if self.clip_grad:  # each part's own norm, as FSDP's clip_grad_norm_ per submodule
            parts = [[*self.backbone.parameters(), self.mask_token], self.head.parameters()]
            parts += [self.ibot_head.parameters()] if self.ibot_head is not None else []
            for params in parts:
                torch.nn.utils.clip_grad_norm_(list(params), self.clip_grad)
        if self.epoch < self.freeze_prototypes_epochs:
            self.kept = [p.detach().clone() for p in self.last_layers()]

    @torch.no_grad()
    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        for p, kept in zip(self.last_layers(), self.kept, strict=False):
            p.copy_(kept)  # lr 0 for the last layers: the weights as before the step
        self.kept = []
        self.current_momentum = cosine_momentum(step, total_steps, self.ema_momentum)
        ema_update(self.teacher_backbone, self.backbone, self.current_momentum)
        ema_update(self.teacher_head, self.head, self.current_momentum)
        if self.ibot_head is not None:
            ema_update(self.teacher_ibot_head, self.ibot_head, self.current_momentum)
        if self.centering == "centering":
            keep = self.center_momentum
            self.center.lerp_(self.batch_center, 1 - keep)
            self.patch_center.lerp_(self.batch_patch_center, 1 - keep)
