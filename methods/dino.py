"""DINO: Caron, Touvron, Misra, Jégou, Mairal, Bojanowski, Joulin, "Emerging Properties in
Self-Supervised Vision Transformers", ICCV 2021 (https://arxiv.org/abs/2104.14294); official code
facebookresearch/dino (main_dino.py: DINOLoss, DataAugmentationDINO; vision_transformer.py:
DINOHead).

Self-distillation with no labels. A student g_s (backbone + DINO head) and a teacher g_t of the
same architecture both output K logits. Each image gives V crops: 2 global ones, which the teacher
sees, and V - 2 local ones, which only the student sees. The student matches the teacher's
centred and sharpened distribution of every other crop:

    P_t(x) = softmax((g_t(x) - c) / T_t),   P_s(x) = softmax(g_s(x) / T_s)
    L = 1 / (2 (V - 1)) sum_{i in global} sum_{j != i} H(P_t(x_i), P_s(x_j)),
    H(a, b) = - sum_k a_k log b_k, averaged over the batch.

Collapse is avoided by two opposite forces on the teacher's output: centering (subtracting c, a
running mean of the teacher's logits, keeps one dimension from dominating) and sharpening
(T_t < T_s keeps the distribution from becoming uniform). After every optimizer step:

    c   <- m c + (1 - m) mean of g_t over the two global crops of the (global) batch,  m = 0.9
    θ_t <- λ θ_t + (1 - λ) θ_s,  λ rising from 0.996 to 1 on a cosine (methods.momentum)

The teacher temperature is 0.04 throughout by default, main_dino.py's defaults
(--teacher_temp 0.04, --warmup_teacher_temp_epochs 0; that flag's help text says "Default: 30",
its code 0). The README's better ViT-S recipe raises it linearly from 0.04 to 0.07 over 30
epochs (`--teacher_temp 0.07 --teacher_temp_warmup_epochs 30`: np.linspace as in the official
code, 0.07 is reached at epoch 29). The student temperature is 0.1. The head is a 3-layer MLP
(GELU, no BatchNorm) in -> 2048 -> 2048 -> 256, an L2 normalisation, and a weight-normalised
linear layer 256 -> K without bias whose gain is fixed at 1 (`norm_last_layer`, the official
default: a cosine-similarity layer); that last layer gets no update during the first epoch. As in
the official MultiCropWrapper, the student's backbone runs once per crop resolution and its head
once over all crops (its BatchNorm with --use_bn_in_head sees every crop); the teacher sees the
two global crops in one batch.

Default recipe (paper, ImageNet): ViT-S/16, K = 65536, batch 1024, AdamW lr 5e-4 x B/256 with 10
warmup epochs and a cosine to 1e-6, weight decay 0.04 -> 0.4 on a cosine, gradient clipping at
norm 3, stochastic depth 0.1, 2 x 224 px + 10 x 96 px crops (8 in the code's default), 100-800
epochs; for ResNet-50 the README's command: SGD lr 0.03, weight decay 1e-4, global crops of
14-100 % and local ones of 5-14 %, no BatchNorm in the head; the code recommends teacher
momentum 0.9995 for batches of 256. K is the official 65536 by default (solo-learn's CIFAR
setting is 4096: `--out_dim 4096`, recipes/cifar10/dino.args; 65536 makes the head's last layer
16.8 M parameters). As in main_dino.py, each student parameter's gradient is
clipped to norm 3 on its own (`clip_gradients`, --clip_grad; solo-learn's CIFAR configs: 0, off)
and a ViT student (vit_tiny, vit_small, or a plain timm ViT), initialised as DINO's own ViT
(`dino_vit_init`), trains with stochastic depth 0.1 (--drop_path_rate; none for CNNs:
main_dino.py gives it to its ViTs and XCiTs, not to torchvision's CNNs). The weight-decay rise
is the shared `--weight_decay 0.04 --final_weight_decay 0.4`.

Flags: the constructor's annotated arguments (methods/hparams.py), listed with their defaults
by `python main.py --help` and the README; the view flags --num_crops (local crops, 8) and
--small_crop_size; views: transformations.dino_transform. --use_bn_in_head is the official option
for BatchNorm backbones: without it, a small CNN's ReLU features, which share a large common
component, map to similar bottleneck directions, and the teacher's output starts and stays
uniform.
"""

from collections.abc import Iterable, Sequence
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from methods import Method, register
from methods.hparams import EMA_MOMENTUM, Flag
from methods.momentum import cosine_momentum, ema_update, frozen_copy
from methods.recipe import Recipe, solo_learn
from networks.vit import MaskableViT, trunc_normal_init
from utils.accel import at_least_float32
from utils.distributed import all_reduce_sum, world_size
from utils.misc import non_negative_float, non_negative_int, unit_float


def distillation_loss(
    student_out: Sequence[Tensor], targets: Sequence[Tensor], student_temp: float = 0.1
) -> Tensor:
    """Mean over the pairs (teacher crop i, student crop j), j != i, of
    H(P_i, softmax(s_j / T_s)) = mean_b(-sum_k P_i[b, k] log softmax(s_j / T_s)[b, k]).

    Args:
        student_out: [B, K] student logits, one per crop; the first `len(targets)` are the
            global crops, in the targets' order (a crop is never compared with itself).
        targets: [B, K] teacher distributions (rows summing to 1), one per global crop: DINO's
            centred softmax, DINOv2's Sinkhorn-Knopp codes; no gradient flows into them.
        student_temp: T_s.
    """
    if len(targets) > len(student_out):
        raise ValueError("distillation_loss: more teacher crops than student crops")
    log_p = [F.log_softmax(at_least_float32(s) / student_temp, dim=-1) for s in student_out]
    total, pairs = 0.0, 0
    for i, q in enumerate(targets):
        q = q.detach()
        for j, log_p_j in enumerate(log_p):
            if j != i:
                total = total - (q * log_p_j).sum(dim=-1).mean()
                pairs += 1
    if pairs == 0:
        raise ValueError("the distillation loss needs at least two crops")
    return total / pairs


def dino_loss(
    student_out: Sequence[Tensor],
    teacher_out: Sequence[Tensor],
    center: Tensor,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
) -> Tensor:
    """`distillation_loss` with DINO's targets softmax((t_i - c) / T_t):

        mean over (i, j != i) of H(softmax((t_i - c) / T_t), softmax(s_j / T_s)).

    Args:
        student_out: [B, K] student logits, one per crop, the global crops first.
        teacher_out: [B, K] teacher logits, one per global crop; no gradient flows into them.
        center: [K] (or [1, K]) running mean of the teacher logits, subtracted before the softmax.
        student_temp: T_s.
        teacher_temp: T_t; below T_s it sharpens the targets.
    """
    targets = [
        F.softmax((at_least_float32(t.detach()) - center) / teacher_temp, dim=-1)
        for t in teacher_out
    ]
    return distillation_loss(student_out, targets, student_temp)


@torch.no_grad()
def clip_gradients(parameters: Iterable[nn.Parameter], max_norm: float) -> None:
    """DINO's clipping (official utils.py `clip_gradients`), each parameter on its own:

        g <- g * min(1, max_norm / (||g||_2 + 1e-6))

    Unlike torch.nn.utils.clip_grad_norm_, which scales every gradient by one factor of their
    global norm, a parameter with a large gradient is shrunk without touching the others."""
    for p in parameters:
        if p.grad is not None:
            scale = max_norm / (p.grad.norm(2) + 1e-6)
            p.grad.mul_(scale.clamp(max=1.0))


def teacher_temperature(
    epoch: int, teacher_temp: float, warmup_teacher_temp: float, warmup_epochs: int
) -> float:
    """T_t of `epoch` (0-based): np.linspace(warmup_teacher_temp, teacher_temp, warmup_epochs)
    [epoch] during the warmup, as in the official code (so the final value is reached at epoch
    warmup_epochs - 1), then `teacher_temp`."""
    if epoch >= warmup_epochs:
        return teacher_temp
    if warmup_epochs == 1:
        return warmup_teacher_temp
    return warmup_teacher_temp + (teacher_temp - warmup_teacher_temp) * epoch / (warmup_epochs - 1)


class DINOHead(nn.Module):
    """MLP (Linear-GELU blocks; Linear-BatchNorm-GELU with `use_bn`) to a bottleneck, L2
    normalisation, then a weight-normalised bias-free linear layer to `out_dim` logits. With
    `norm_last_layer` its gain g stays 1, so each logit is the cosine similarity to a learnt unit
    vector (a prototype)."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        num_layers: int = 3,
        norm_last_layer: bool = True,
        use_bn: bool = False,
    ) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1)
        layers: list[nn.Module] = []
        for d_in, d_out in zip(dims[:-1], dims[1:], strict=True):
            layers += [nn.Linear(d_in, d_out)]
            layers += [nn.BatchNorm1d(d_out)] if use_bn else []
            layers += [nn.GELU()]
        layers.append(nn.Linear(dims[-1], bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):  # the official initialisation (ViT's)
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        # weight = g v / ||v|| per output row; v keeps nn.Linear's default initialisation
        self.last_layer = weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        gain = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            gain.fill_(1.0)
        gain.requires_grad_(not norm_last_layer)

    def forward(self, x: Tensor) -> Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))


HEAD_HIDDEN_DIM = Flag("head hidden size")
# --out_dim is the official name; --num_prototypes the name this toolkit used before
OUT_DIM = Flag("output size K of the head", alias="num_prototypes")
TEACHER_TEMP = Flag(
    "teacher softmax temperature after its warmup (0.04: the official code; its README raises it "
    "to 0.07 over 30 epochs for ViT-S)"
)
WARMUP_TEACHER_TEMP = Flag("teacher temperature at epoch 0, rising linearly to --teacher_temp")
TEACHER_TEMP_WARMUP = Flag("epochs of the teacher temperature warmup", non_negative_int)
CENTER_MOMENTUM = Flag(
    "momentum of the running mean subtracted from the teacher's output", unit_float
)
FREEZE_LAST_LAYER = Flag(
    "epochs during which the head's last layer is not updated", non_negative_int
)
NORM_LAST_LAYER = Flag(
    "keep the gain of the head's weight-normalised last layer at 1 (the official code sets false "
    "for ViT-S)"
)
USE_BN_IN_HEAD = Flag(
    "BatchNorm after each hidden layer of the head, the official option for BatchNorm backbones"
)
CLIP_GRAD = Flag(
    "clip each student parameter's gradient to this L2 norm (0: off; the official --clip_grad)",
    non_negative_float,
)
DROP_PATH = Flag(
    "stochastic depth of a ViT student (vit_*, plain timm ViTs; the teacher has none), rising "
    "with depth to this rate (the official name; main_linear's fine-tuning calls it --drop_path)",
    unit_float,
)


def dino_vit_init(backbone: MaskableViT) -> None:
    """DINO's vision_transformer.py `VisionTransformer`: truncated N(0, 0.02) Linear weights (the
    attention's qkv too), zero biases, unit LayerNorms, class token and position embeddings
    truncated N(0, 0.02); the patch projection keeps nn.Conv2d's own initialisation."""
    trunc_normal_init(backbone)
    backbone.patch_projection.reset_parameters()
    nn.init.trunc_normal_(backbone.class_token, std=0.02)
    nn.init.trunc_normal_(backbone.position_parameter, std=0.02)


@register("dino")
class DINO(Method):
    """Student backbone + DINO head; EMA teacher backbone + head; the center as a buffer."""

    loss_summary = "`dino_loss`, EMA teacher"
    augmentation = "dino"
    momentum_backbone = "teacher_backbone"
    slow_start = 5  # scripts/short_recipes.sh: 5x the short tables' epochs
    collapse_hint = "too little centering or sharpening (--teacher_temp, --center_momentum), or lr"
    # official main_dino.py: every crop BICUBIC; eval_linear.py: Resize(256, interpolation=3)
    # (its linear training crop is bilinear: main_linear --interpolation bilinear at 224 px)
    view_options = {"interpolation": "bicubic"}
    eval_interpolation = "bicubic"
    # eval_linear.py --n_last_blocks 4 (ViT-S): the class tokens of the last 4 blocks, each
    # through the final norm, concatenated
    eval_last_blocks = 4
    eval_momentum_backbone = True  # eval_linear.py, eval_knn.py: --checkpoint_key teacher
    recipes = (
        solo_learn(
            "cifar/dino.yaml",
            "(solo-learn's reproduction: DINO's code has no CIFAR recipe)",
            base_lr=0.3,
            weight_decay=1e-06,
            settings={
                "out_dim": 4096,
                "ema_momentum": 0.9995,
                "teacher_temp": 0.07,
                "clip_grad": 0.0,
                "num_crops": 0,
            },
            sources={
                "optimizer, larc_trust_coefficient, larc_clip": (
                    "dino.yaml:32-39 (name lars, clip_lr True, eta 0.02)"
                ),
                "exclude_bias_and_norm": (
                    "dino.yaml:40 (exclude_bias_n_norm True); solo/utils/lars.py:140-150 (1-D "
                    "params: no LARS, no decay)"
                ),
                "base_lr, lr_scaling, batch_size": (
                    "dino.yaml:33-34 (batch_size 256, lr 0.3); solo/args/pretrain.py:151-154 (lr x"
                    " batch/256)"
                ),
                "num_epochs": "dino.yaml:51 (max_epochs 1000)",
                "weight_decay, final_weight_decay": "dino.yaml:36 (weight_decay 1e-6, constant)",
                "out_dim": "dino.yaml:21 (num_prototypes 4096)",
                "ema_momentum": "dino.yaml:22-24 (base_tau 0.9995, final_tau 1.0)",
                "teacher_temp": (
                    "solo/methods/dino.py:215-223 (teacher_temperature 0.07, "
                    "warmup_teacher_temperature_epochs 0)"
                ),
                "clip_grad": "solo/methods/dino.py:198 (clip_grad default 0)",
                "crop_min_scale, num_crops": (
                    "augmentations/asymmetric.yaml:3,21-22,26,44-45 (two 32 px crops of 0.08-1, no"
                    " small crops)"
                ),
            },
        ),
        Recipe(
            source=(
                "facebookresearch/dino 7c446df, README's vanilla ViT-S/16 command (main_dino.py "
                "defaults) on 16 GPUs: batch 1024, 100 epochs"
            ),
            images="large",
            backbones="vit",
            optimizer="adamw",
            betas=(0.9, 0.999),
            exclude_bias_and_norm=True,
            base_lr=5e-4,
            lr_scaling="linear",
            batch_size=1024,
            num_epochs=100,
            weight_decay=0.04,
            final_weight_decay=0.4,
            warmup_epochs=10,
            warmup_lr=0.0,
            final_lr=2.5e-7,
            sources={
                "optimizer, betas": (
                    "main_dino.py:103,226-227 (adamw: torch.optim.AdamW(params_groups), default "
                    "betas)"
                ),
                "exclude_bias_and_norm": (
                    "utils.py:632-643 (get_params_groups: biases, 1-D params weight_decay 0)"
                ),
                "base_lr, lr_scaling": "main_dino.py:96 (lr 0.0005), 239 (x batch/256)",
                "batch_size": "main_dino.py:90 (64 per GPU); README.md:168-171 (2 nodes x 8 GPUs)",
                "num_epochs": "main_dino.py:92 (epochs 100); README.md:163 (ViT-small, 100 epochs)",
                "weight_decay, final_weight_decay": (
                    "main_dino.py:82-86 (0.04 -> 0.4), 244-248 (cosine_scheduler)"
                ),
                "warmup_epochs, warmup_lr": (
                    "main_dino.py:99 (warmup_epochs 10); utils.py:187-191 (linspace from "
                    "start_warmup_value 0)"
                ),
                "final_lr": (
                    "main_dino.py:101 (min_lr 1e-6: absolute in the official code; scaled here, "
                    "1e-6 x 256/1024)"
                ),
            },
        ),
        Recipe(
            source=(
                "facebookresearch/dino 7c446df, README's ResNet-50 command (8 GPUs x 64: batch "
                "512, 100 epochs)"
            ),
            images="large",
            backbones="convnet",
            optimizer="sgd",
            momentum=0.9,
            exclude_bias_and_norm=True,
            base_lr=0.03,
            lr_scaling="linear",
            batch_size=512,
            num_epochs=100,
            weight_decay=1e-4,
            final_weight_decay=None,
            warmup_epochs=10,
            warmup_lr=0.0,
            final_lr=5e-7,
            settings={"crop_min_scale": 0.14},
            sources={
                "optimizer, momentum": (
                    "README.md:207 (--optimizer sgd); main_dino.py:228-229 (SGD(momentum=0.9))"
                ),
                "exclude_bias_and_norm": (
                    "utils.py:632-643 (get_params_groups: biases, 1-D params weight_decay 0)"
                ),
                "base_lr, lr_scaling": "README.md:207 (--lr 0.03); main_dino.py:239 (x batch/256)",
                "batch_size, num_epochs": (
                    "README.md:205 (8 GPUs, 100 epochs); main_dino.py:90,92 (64 per GPU, epochs "
                    "100)"
                ),
                "weight_decay, final_weight_decay": (
                    "README.md:207 (--weight_decay 1e-4 --weight_decay_end 1e-4: constant)"
                ),
                "warmup_epochs, warmup_lr": (
                    "main_dino.py:99 (warmup_epochs 10); utils.py:187-191 (linspace from "
                    "start_warmup_value 0)"
                ),
                "final_lr": (
                    "main_dino.py:101 (min_lr 1e-6: absolute in the official code; scaled here, "
                    "1e-6 x 256/512)"
                ),
                "crop_min_scale": "README.md:207 (--global_crops_scale 0.14 1)",
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
        teacher_temp: Annotated[float, TEACHER_TEMP] = 0.04,
        warmup_teacher_temp: Annotated[float, WARMUP_TEACHER_TEMP] = 0.04,
        teacher_temp_warmup_epochs: Annotated[int, TEACHER_TEMP_WARMUP] = 0,
        center_momentum: Annotated[float, CENTER_MOMENTUM] = 0.9,
        ema_momentum: Annotated[float, EMA_MOMENTUM] = 0.996,
        freeze_prototypes_epochs: Annotated[int, FREEZE_LAST_LAYER] = 1,
        norm_last_layer: Annotated[bool, NORM_LAST_LAYER] = True,
        use_bn_in_head: Annotated[bool, USE_BN_IN_HEAD] = False,
        clip_grad: Annotated[float, CLIP_GRAD] = 3.0,
        drop_path_rate: Annotated[float, DROP_PATH] = 0.1,
        pretrained: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (("ema_momentum", ema_momentum), ("center_momentum", center_momentum)):
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if isinstance(backbone, MaskableViT) and not pretrained:  # before the teacher's copy
            dino_vit_init(backbone)
        self.backbone = backbone
        self.head = DINOHead(
            feat_dim, out_dim, proj_hidden_dim, proj_dim, 3, norm_last_layer, use_bn_in_head
        )
        self.teacher_backbone = frozen_copy(backbone)
        self.teacher_head = frozen_copy(self.head)
        if isinstance(backbone, MaskableViT):  # main_dino.py: its ViT students only
            backbone.set_drop_path(drop_path_rate)
        self.clip_grad = clip_grad
        self.temperature = temperature
        self.teacher_temp = teacher_temp
        self.warmup_teacher_temp = warmup_teacher_temp
        self.teacher_temp_warmup_epochs = teacher_temp_warmup_epochs
        self.center_momentum = center_momentum
        self.ema_momentum = ema_momentum
        self.current_momentum = ema_momentum
        self.freeze_prototypes_epochs = freeze_prototypes_epochs
        self.current_teacher_temp = self.teacher_temperature(0)
        self.register_buffer("center", torch.zeros(out_dim))
        # this step's teacher mean, folded into the center after the optimizer step (not saved)
        self.register_buffer("batch_center", torch.zeros(out_dim), persistent=False)

    def teacher_temperature(self, epoch: int) -> float:
        return teacher_temperature(
            epoch, self.teacher_temp, self.warmup_teacher_temp, self.teacher_temp_warmup_epochs
        )

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.current_teacher_temp = self.teacher_temperature(epoch)

    def forward(self, views: list[Tensor], labels: Tensor | None = None) -> dict[str, Tensor]:
        global_views = views[:2]
        # backbone once per resolution, the head once over all crops (MultiCropWrapper), so that
        # the head's BatchNorm (--use_bn_in_head) sees every crop in one batch, as official
        features = self.features_by_resolution(self.backbone, views)
        student = list(self.head(features).chunk(len(views)))
        with torch.no_grad():
            teacher = at_least_float32(
                self.teacher_head(self.teacher_backbone(torch.cat(global_views)))
            )
            # mean over both global crops and every process's batch
            total = all_reduce_sum(teacher.sum(dim=0))
            self.batch_center.copy_(total / (teacher.shape[0] * world_size()))
        loss = dino_loss(
            student,
            list(teacher.chunk(len(global_views))),
            self.center,
            self.temperature,
            self.current_teacher_temp,
        )
        return {"loss": loss, "z1": student[0], "z2": student[1]}

    def before_optimizer_step(self) -> None:
        # main_dino.py's order: clip the student's gradients, then cancel the last layer's
        if self.clip_grad:
            clip_gradients([*self.backbone.parameters(), *self.head.parameters()], self.clip_grad)
        if self.epoch < self.freeze_prototypes_epochs:
            for p in self.head.last_layer.parameters():
                p.grad = None  # skipped by the optimizer, momentum and weight decay included

    @torch.no_grad()
    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        self.current_momentum = cosine_momentum(step, total_steps, self.ema_momentum)
        ema_update(self.teacher_backbone, self.backbone, self.current_momentum)
        ema_update(self.teacher_head, self.head, self.current_momentum)
        self.center.lerp_(self.batch_center, 1.0 - self.center_momentum)
