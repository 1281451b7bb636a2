"""MoCo v2 and MoCo v3: a query encoder trained by contrast against the keys of a momentum
(EMA) copy of itself.

MoCo v2: Chen, Fan, Girshick, He, "Improved Baselines with Momentum Contrastive Learning", 2020
(https://arxiv.org/abs/2003.04297), on MoCo: He et al., CVPR 2020
(https://arxiv.org/abs/1911.05722).

    The query q (backbone + MLP head) of one view must pick out the key k+ that the key encoder
    gives of the other view, among K negatives: the keys of past batches kept in a queue. With
    all vectors L2-normalised and T the temperature, InfoNCE is

        L = -log( exp(q.k+ / T) / (exp(q.k+ / T) + sum_{j=1..K} exp(q.queue_j / T)) ),

    a (K+1)-way cross-entropy whose target is index 0 (`moco_loss`), averaged over the batch.
    The keys of each batch are enqueued after the loss (the oldest leave), so the negatives are
    at most K / B steps old; the key encoder follows the query encoder by an EMA,
    xi <- m xi + (1 - m) theta, so that keys of consecutive batches stay consistent.

    Default recipe (paper, ImageNet): ResNet-50, head Linear 2048 - ReLU - Linear 128 (no BN),
    K = 65536, m = 0.999 constant, T = 0.2, SGD lr 0.03 x B/256 (B = 256), weight decay 1e-4,
    cosine schedule, 200 or 800 epochs, SimCLR-style views with blur. On CIFAR-10 the official
    MoCo demo (facebookresearch/moco, colab/moco_cifar10_demo: ResNet-18, batch 512, K = 4096,
    m = 0.99, T = 0.1) finds kNN accuracy saturating at K = 4096; solo-learn's MoCo v2+ uses
    K = 32768, T = 0.2 and m rising from 0.99 to 0.999. Choices here:
      - the defaults are the paper's (moco/builder.py, main_moco.py): the loss in one direction,
        L(q1, k2) with one queue, and a constant momentum m. Two flags give solo-learn's MoCo v2+
        (the form the README's tables were measured with, and the CIFAR recipe's): --symmetric,
        1/2 (L(q1, k2) + L(q2, k1)) with one queue per direction, as the CIFAR demo's option and
        MoCo v3 (each image pair used in both directions, at twice the cost per image; the demo:
        "behaves like 2x epochs of the asymmetric counterpart"); --ema_cosine, the momentum
        rising from --ema_momentum to 1 on BYOL's cosine (from 0.999 it stays in [0.999, 1];
        short runs on small data want a faster key encoder: --ema_momentum 0.99);
      - K = 65536 exceeds CIFAR's 50,000 images (the queue would hold keys of the same image
        from an earlier epoch): use --queue_size 4096 to 16384 there.
    Shuffle-BN (on by default, --shuffle_bn). A query and its positive key normalised by
    BatchNorm with statistics of the same images, while the queued negatives had other
    batches', can tell the positive apart by those statistics ("cheat" the pretext task, paper
    Sec. 3.3). MoCo trains on 8 GPUs, each normalising its own share of the batch, and gives the
    key encoder a batch shuffled across them (moco/builder.py `_batch_shuffle_ddp`, keys put
    back in order after it): under torchrun this does the same. On one process its CIFAR demo
    (colab/moco_cifar10_demo.ipynb) emulates the GPUs: BatchNorm statistics over 8 interleaved
    splits of each batch in both encoders (`SplitBatchNorm`, --bn_splits) and the key batch
    shuffled between them; without it the demo lost 4 points of kNN accuracy at 800 epochs.
    --shuffle_bn false gives plain BatchNorm over each encoder's whole batch and no shuffle:
    solo-learn's form (no Shuffle-BN) and that of the short recipes.

MoCo v3: Chen, Xie, He, "An Empirical Study of Training Self-Supervised Vision Transformers",
ICCV 2021 (https://arxiv.org/abs/2104.02057).

    No queue: the keys of the current (global) batch are the negatives. The query encoder is
    backbone + projector + predictor, the momentum encoder backbone + projector. Per direction

        L(q, k) = 2T * CE( q k_all^T / T, labels ),  labels_i = i + rank * N,

    with q, k L2-normalised, k_all the keys gathered from every process without gradient, so
    a query's positive is its own image's key in the global batch (`mocov3_loss`). The factor
    2T (from the official code) keeps the gradient's scale roughly independent of T (the
    gradient of CE(x / T) carries a 1 / T). The loss is symmetric: L(q1, k2) + L(q2, k1).
    The momentum rises from m = 0.99 to 1 on a cosine.

    Architecture as the official code (facebookresearch/moco-v3 moco/builder.py, main_moco.py),
    which differs by backbone family: for a ResNet (MoCo_ResNet) a 2-layer projector ending in
    BatchNorm and a predictor without one, T = 1.0 (main_moco.py's default, kept by every
    ResNet-50 command of CONFIG.md); for a ViT (MoCo_ViT) a 3-layer projector and a predictor
    ending in BatchNorm, T = 0.2 (CONFIG.md's ViT commands). Hidden 4096, output 256, no biases,
    BatchNorm after every hidden layer, a last BatchNorm without affine parameters; each view
    through both encoders in its own call (`--concat_views`: one pass of 2N); the last
    BatchNorm of each residual block starts at zero (`zero_init_residual=True`). `proj_layers`
    (--proj_layers 3: the paper's 3-layer projector on a CNN) and --temperature override. A ViT
    (vit_tiny, vit_small, or a plain timm ViT: vits.py subclasses timm's) is built as vits.py's
    `VisionTransformerMoCo` (`mocov3_vit_init`: fixed sine-cosine positions, its
    initialisation) with a frozen random patch projection, the paper's fix for its training
    instability (`--stop-grad-conv1` in CONFIG.md's ViT commands; --stop_grad_conv1 false trains
    it).

    Default recipe (CONFIG.md): ResNet-50 with LARS (biases and norms excluded), lr 0.6 x B/256
    (0.3 for 300 and 1000 epochs), weight decay 1e-6 (1.5e-6 for 1000 epochs), batch 4096, m
    0.99 (0.996 for 1000 epochs) on the cosine, crops of 20-100 % (`--crop-min=.2`; the code's
    default 0.08), 100 epochs; ViTs: AdamW lr 1.5e-4 x B/256, weight decay 0.1, 40 warmup
    epochs, 300 epochs. BYOL's asymmetric views. solo-learn on CIFAR (ResNet-18): T = 0.2,
    batch 256, LARS lr 0.3, m 0.99 -> 1.
"""

import math
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache, partial
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from methods import Method, register
from methods.hparams import (
    CONCAT_VIEWS,
    EMA_MOMENTUM,
    PRED_HIDDEN_DIM,
    PROJ_DIM,
    PROJ_HIDDEN_DIM,
    PROJ_WIDTH_OF_FEATURES,
    TEMPERATURE,
    Flag,
)
from methods.momentum import cosine_momentum, ema_update, frozen_copy
from methods.recipe import Recipe, solo_learn
from networks import is_vit
from networks.heads import build_mlp
from networks.vit import MaskableViT, fix_position_embedding, xavier_init
from utils.distributed import broadcast, gather, rank, world_size
from utils.misc import non_negative_int, positive_int, unit_float


def moco_loss(q: Tensor, k: Tensor, queue: Tensor, temperature: float = 0.2) -> Tensor:
    """InfoNCE of MoCo: each query against its key (index 0) and the K queued negatives.

        L = mean_i -log( exp(q_i.k_i / T) / (exp(q_i.k_i / T) + sum_j exp(q_i.queue_j / T)) )

    Args:
        q: [N, D] queries; L2-normalised inside.
        k: [N, D] keys of the other view, row i the positive of query i; normalised inside, no
            gradient flows into them.
        queue: [K, D] negatives, rows assumed L2-normalised (the module stores them so); no
            gradient.
        temperature: T dividing the cosine similarities.

    Returns:
        Scalar: mean over the N queries of the (K+1)-way cross-entropy with target 0.
    """
    q = F.normalize(q, dim=1)
    k = F.normalize(k.detach(), dim=1)
    positives = (q * k).sum(dim=1, keepdim=True)  # N x 1
    negatives = q @ queue.detach().T  # N x K
    logits = torch.cat([positives, negatives], dim=1) / temperature
    targets = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits, targets)


def mocov3_loss(q: Tensor, k: Tensor, temperature: float = 0.2) -> Tensor:
    """MoCo v3's in-batch contrastive loss, one direction.

        L = 2T * mean_i -log( exp(q_i.k_{r N + i} / T) / sum_m exp(q_i.k_m / T) ),

    where k_m runs over the keys of the global batch (gathered from all processes without
    gradient; r is this process's rank) and N is the local batch size. On one process it is
    2T * CE(q k^T / T, arange(N)).

    Args:
        q: [N, D] queries (predictor outputs) of this process; L2-normalised inside.
        k: [N, D] keys (momentum projector outputs) of the other view on this process;
            normalised inside, no gradient.
        temperature: T.
    """
    q = F.normalize(q, dim=1)
    keys = gather(F.normalize(k.detach(), dim=1))  # world*N x D
    logits = q @ keys.T / temperature  # N x world*N
    n = q.shape[0]
    labels = torch.arange(n, device=q.device) + rank() * n
    return F.cross_entropy(logits, labels) * (2 * temperature)


@torch.no_grad()
def enqueue(queue: Tensor, queue_ptr: Tensor, keys: Tensor) -> None:
    """First in, first out, in place: write `keys` [..., B, D] into `queue` [..., K, D] from row
    `queue_ptr` (a 0-d long tensor: the oldest row once the queue is full) on, wrapping around
    the end, and move the pointer by B modulo K. When B > K only the last K keys fit.

    Both are buffers of the method, so the queue and its position are checkpointed; under DDP
    the caller passes the keys gathered from all processes, so every process keeps the same
    queue.
    """
    size = queue.shape[-2]
    keys = keys[..., -size:, :]
    start = int(queue_ptr)
    idx = (start + torch.arange(keys.shape[-2], device=queue.device)) % size
    queue[..., idx, :] = keys.to(queue.dtype)
    queue_ptr.fill_((start + keys.shape[-2]) % size)


class SplitBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training-mode statistics are taken over `num_splits` interleaved parts of
    the batch (part s: the images n with n mod S = s), each part as one GPU's share: the
    one-process emulation of MoCo's CIFAR demo (`SplitBatchNorm`). The running statistics move
    by the mean of the parts'. With one split, or in eval mode, it is BatchNorm2d; its
    parameters and buffers are BatchNorm2d's, so its state dict is too. A batch that S does not
    divide is split into gcd(N, S) parts; parts of one value per channel, not at all."""

    num_splits = 1

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        splits = math.gcd(n, self.num_splits)
        one_value = n // splits * h * w == 1  # no statistics: one value per channel and part
        if splits == 1 or one_value or not self.training or not self.track_running_stats:
            return super().forward(x)
        mean = self.running_mean.repeat(splits)
        var = self.running_var.repeat(splits)
        weight = self.weight.repeat(splits) if self.weight is not None else None
        bias = self.bias.repeat(splits) if self.bias is not None else None
        self.num_batches_tracked.add_(1)
        factor = self.momentum  # None: BatchNorm's cumulative average
        if factor is None:
            factor = 1.0 / float(self.num_batches_tracked)
        # image n = r * S + s becomes row r, channels of part s: one BatchNorm call for all parts
        out = F.batch_norm(
            x.reshape(n // splits, c * splits, h, w),
            mean,
            var,
            weight,
            bias,
            True,
            factor,
            self.eps,
        )
        with torch.no_grad():
            self.running_mean.copy_(mean.view(splits, c).mean(dim=0))
            self.running_var.copy_(var.view(splits, c).mean(dim=0))
        return self.after_norm(out.reshape(n, c, h, w))

    def after_norm(self, x: Tensor) -> Tensor:
        return x  # timm's BatchNormAct2d: its dropout and activation (split_batchnorm_act2d)


@cache
def split_batchnorm_act2d() -> type:
    """SplitBatchNorm2d for timm's BatchNormAct2d (EfficientNet, MobileNet, RegNet, DenseNet,
    ...): the split BatchNorm, then the layer's own dropout and activation."""
    from timm.layers import BatchNormAct2d

    class SplitBatchNormAct2d(SplitBatchNorm2d, BatchNormAct2d):
        def after_norm(self, x: Tensor) -> Tensor:
            return self.act(self.drop(x))

    SplitBatchNormAct2d.__qualname__ = "SplitBatchNormAct2d"  # pickle: this module's __getattr__
    return SplitBatchNormAct2d


def __getattr__(name: str) -> type:
    """SplitBatchNormAct2d, made on first use (it needs timm), for pickle."""
    if name == "SplitBatchNormAct2d":
        return split_batchnorm_act2d()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def split_batchnorm_layers(module: nn.Module) -> None:
    """The module's BatchNorm2d layers, and timm's BatchNormAct2d, made SplitBatchNorm2d (one
    split until set), in place."""
    timm_layers = sys.modules.get("timm.layers")  # no timm model exists without it loaded
    for layer in module.modules():
        if type(layer) is nn.BatchNorm2d:
            layer.__class__ = SplitBatchNorm2d
        elif timm_layers is not None and type(layer) is timm_layers.BatchNormAct2d:
            layer.__class__ = split_batchnorm_act2d()


@torch.no_grad()
def shuffled_forward(encode: Callable[[Tensor], Tensor], images: Tensor) -> Tensor:
    """`encode` of a batch shuffled across all processes' images, its rows put back in the order
    of `images`: MoCo's Shuffle-BN (moco/builder.py `_batch_shuffle_ddp` and
    `_batch_unshuffle_ddp`; on one process the demo's `_batch_shuffle_single_gpu`). Each
    process encodes as many images as it holds, drawn from everyone's by rank 0's permutation."""
    everyone = gather(images)
    order = broadcast(torch.randperm(everyone.shape[0], device=images.device))
    back = torch.argsort(order)
    mine = order.view(world_size(), -1)[rank()]
    return gather(encode(everyone[mine]))[back.view(world_size(), -1)[rank()]]


NEGATIVES = Flag(
    "negatives kept in a queue (an ImageNet value, over CIFAR's 50,000 images: use 4096-16384 "
    "there)",
    non_negative_int,
)
MOCOV3_TEMPERATURE = Flag(TEMPERATURE.help, none="1.0 for CNNs, 0.2 for ViTs, as official")
PROJ_LAYERS = Flag("projector layers", none="2 for CNNs, 3 for ViTs, as official")
STOP_GRAD_CONV1 = Flag(
    "a ViT's patch projection stays at its random initialisation (MoCo v3's random patch "
    "projection, --stop-grad-conv1)",
    none="on for ViTs (vit_*, plain timm ViTs), as CONFIG.md's ViT commands",
)


def mocov3_vit_init(backbone: MaskableViT) -> None:
    """moco-v3 vits.py `VisionTransformerMoCo`: Xavier-uniform Linear weights, q, k and v each as
    its own [D, D] matrix, zero biases; the patch projection Xavier-uniform over its flattened
    kernel; the class token N(0, 1e-6); fixed sine-cosine positions, the row's half first."""
    xavier_init(backbone, split_qkv=True)
    nn.init.normal_(backbone.class_token, std=1e-6)
    fix_position_embedding(backbone, rows_first=True)


KEY_EMA_MOMENTUM = Flag(
    "EMA momentum of the key encoder, constant as moco/builder.py (with --ema_cosine: at step 0, "
    "rising to 1 on a cosine)",
    unit_float,
)
SYMMETRIC = Flag(
    "symmetrised loss, 1/2 (L(q1, k2) + L(q2, k1)), one queue per direction (solo-learn's MoCo "
    "v2+; moco/builder.py: L(q1, k2) only)"
)
SHUFFLE_BN = Flag(
    "Shuffle-BN: the key encoder's batch shuffled across processes, or on one process across "
    "--bn_splits BatchNorm splits, so that no key shares its query's BatchNorm statistics "
    "(moco/builder.py; false: plain BatchNorm, solo-learn's)"
)
BN_SPLITS = Flag(
    "with --shuffle_bn, BatchNorm statistics over this many interleaved splits of each "
    "process's batch in both encoders (the CIFAR demo's SplitBatchNorm)",
    positive_int,
    none="8 on one process, as the demo; 1 under torchrun, whose processes are the splits",
)
EMA_COSINE = Flag(
    "raise the key encoder's EMA momentum to 1 on a cosine (solo-learn's MoCo v2+; "
    "moco/builder.py: constant)"
)


@register("mocov2")
class MoCoV2(Method):
    """Query encoder (backbone + MLP head), EMA key encoder, queues of past keys."""

    loss_summary = "`moco_loss`, queue, EMA keys"
    augmentation = "simclr"  # the paper's views: SimCLR's, with blur
    momentum_backbone = "target_backbone"
    view_options = {"crop_min_scale": 0.2}  # official main_moco.py --aug-plus: scale=(0.2, 1.)
    recipes = (
        solo_learn(
            "cifar/mocov2plus.yaml",
            "(MoCo v2+, a reproduction: the official CIFAR demo is MoCo v1's linear head)",
            optimizer="sgd",
            base_lr=0.3,
            weight_decay=0.0001,
            exclude_bias_and_norm=False,
            settings={
                "symmetric": True,
                "ema_cosine": True,
                "shuffle_bn": False,
                "ema_momentum": 0.99,
                "queue_size": 32768,
                "proj_hidden_dim": 2048,
                "proj_dim": 256,
            },
            sources={
                "optimizer, momentum": (
                    "cifar/mocov2plus.yaml:33 (sgd); solo/args/pretrain.py:161-162 (momentum 0.9 "
                    "by default)"
                ),
                "exclude_bias_and_norm": (
                    "solo/methods/base.py:280-281 (exclude_bias_n_norm_wd False: every parameter "
                    "decayed)"
                ),
                "base_lr, lr_scaling, batch_size": (
                    "cifar/mocov2plus.yaml:34-35 (batch_size 256, lr 0.3); "
                    "solo/args/pretrain.py:153-154 (lr x batch / 256)"
                ),
                "num_epochs": "cifar/mocov2plus.yaml:48 (max_epochs 1000)",
                "weight_decay, final_weight_decay": (
                    "cifar/mocov2plus.yaml:37 (weight_decay 1e-4, constant)"
                ),
                "symmetric, shuffle_bn": (
                    "solo/methods/mocov2plus.py:186-194 (both directions, a queue each; no batch "
                    "shuffle)"
                ),
                "ema_momentum, ema_cosine": (
                    "cifar/mocov2plus.yaml:23-25 (tau 0.99 to 0.999 on a cosine; here to 1)"
                ),
                "queue_size, proj_hidden_dim, proj_dim": (
                    "cifar/mocov2plus.yaml:19-21 (proj_hidden_dim 2048, proj_output_dim 256, "
                    "queue_size 32768)"
                ),
            },
        ),
        Recipe(
            source="facebookresearch/moco 7397dfe, README's command with MoCo v2's --mlp "
            "--moco-t 0.2 --aug-plus --cos (200 epochs, 67.5 %)",
            images="large",
            optimizer="sgd",
            momentum=0.9,
            exclude_bias_and_norm=False,
            base_lr=0.03,
            lr_scaling="none",
            batch_size=256,
            num_epochs=200,
            weight_decay=1e-4,
            warmup_epochs=0,
            warmup_lr=0.0,
            final_lr=0.0,
            sources={
                "optimizer, momentum": "main_moco.py:94-96,291-296 (torch.optim.SGD, --momentum "
                "0.9)",
                "exclude_bias_and_norm": "main_moco.py:291-292 (SGD(model.parameters()): every "
                "parameter decayed)",
                "base_lr, lr_scaling, batch_size": "README.md:46-47 (--lr 0.03 --batch-size "
                "256); main_moco.py:490 (lr used as given)",
                "num_epochs": "main_moco.py:58-60 (--epochs 200); README.md:80-83 (200 epochs, "
                "MoCo v2 67.5)",
                "weight_decay, final_weight_decay": "main_moco.py:97-105 (--wd 1e-4, constant)",
                "warmup_epochs, warmup_lr, final_lr": "README.md:51 (--cos); "
                "main_moco.py:372,488-492 (per-epoch cosine to 0, no warmup)",
            },
        ),
    )

    def __init__(
        self,
        backbone: nn.Module,
        feat_dim: int,
        proj_hidden_dim: Annotated[int | None, PROJ_WIDTH_OF_FEATURES] = None,
        proj_dim: Annotated[int, PROJ_DIM] = 128,
        temperature: Annotated[float, TEMPERATURE] = 0.2,
        queue_size: Annotated[int, NEGATIVES] = 65536,
        ema_momentum: Annotated[float, KEY_EMA_MOMENTUM] = 0.999,
        symmetric: Annotated[bool, SYMMETRIC] = False,
        ema_cosine: Annotated[bool, EMA_COSINE] = False,
        shuffle_bn: Annotated[bool, SHUFFLE_BN] = True,
        bn_splits: Annotated[int | None, BN_SPLITS] = None,
        concat_views: Annotated[bool, CONCAT_VIEWS] = False,
    ) -> None:
        super().__init__()
        if not 0 <= ema_momentum <= 1:
            raise ValueError(f"ema_momentum must be in [0, 1], got {ema_momentum}")
        if bn_splits is not None and not shuffle_bn:
            raise ValueError("bn_splits splits BatchNorm for Shuffle-BN: drop it or shuffle_bn")
        if queue_size < 1:
            raise ValueError(
                f"mocov2 needs a queue of negatives: queue_size >= 1, got {queue_size}"
            )
        self.backbone = backbone
        # MoCo v2's head (builder.py, --mlp): fc(d, d) - ReLU - fc(d, 128), no BatchNorm, with d
        # the backbone's feature size
        hidden = proj_hidden_dim or feat_dim
        self.proj_hidden_dim = hidden  # resolved, for the run's record
        self.projector = build_mlp(2, feat_dim, hidden, proj_dim, batch_norm=False)
        self.shuffle_bn = shuffle_bn
        self.bn_splits = bn_splits or (8 if world_size() == 1 else 1)
        if shuffle_bn:  # split only inside forward: elsewhere (evaluation) plain BatchNorm
            split_batchnorm_layers(backbone)
        self.target_backbone = frozen_copy(backbone)
        self.target_projector = frozen_copy(self.projector)
        self.temperature = temperature
        self.ema_momentum = ema_momentum
        self.current_momentum = ema_momentum
        self.symmetric, self.ema_cosine = symmetric, ema_cosine
        self.concat_views = concat_views
        # one queue per direction; random unit vectors until real keys replace them (as MoCo).
        # The same on every process: each enqueues the keys gathered from all of them.
        directions = 2 if symmetric else 1
        queue = F.normalize(torch.randn(directions, queue_size, proj_dim), dim=2)
        self.register_buffer("queue", queue)
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self._pending: Tensor | None = None

    def forward(self, views: list[Tensor], labels: Tensor | None = None) -> dict[str, Tensor]:
        x1, x2 = views[:2]
        query_images = [x1, x2] if self.symmetric else [x1]
        key_images = [x2, x1] if self.symmetric else [x2]
        with self.split_batchnorm():
            # each view in its own call (official: encoder_q(im_q), encoder_k(im_k))
            qs = self.per_view(lambda x: self.projector(self.backbone(x)), query_images)
            with torch.no_grad():
                key = lambda x: F.normalize(self.target_projector(self.target_backbone(x)), dim=1)
                if self.shuffle_bn and self.training:
                    key = partial(shuffled_forward, key)
                ks = self.per_view(key, key_images)
        # direction d: queries of view d against keys of the other view and queue d
        loss = sum(
            moco_loss(qd, kd, self.queue[d], self.temperature)
            for d, (qd, kd) in enumerate(zip(qs, ks, strict=True))
        ) / len(qs)
        if self.training:
            # enqueued only once the step is taken (after_optimizer_step): a skipped step with
            # a non-finite loss leaves the queue clean; gathered here, where every process runs
            self._pending = torch.stack([gather(kd) for kd in ks])
        # the monitors' pair (monitors.py): the two queries, or (one direction) the query and its
        # positive key
        return {"loss": loss, "z1": qs[0], "z2": qs[1] if self.symmetric else ks[0]}

    @contextmanager
    def split_batchnorm(self) -> Iterator[None]:
        """Both encoders' BatchNorm in --bn_splits splits for this forward (with --shuffle_bn)."""
        encoders = (self.backbone, self.target_backbone)
        layers = [m for e in encoders for m in e.modules() if isinstance(m, SplitBatchNorm2d)]
        for layer in layers:
            layer.num_splits = self.bn_splits
        try:
            yield
        finally:
            for layer in layers:
                layer.num_splits = 1

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        if self.ema_cosine:
            self.current_momentum = cosine_momentum(step, total_steps, self.ema_momentum)
        ema_update(self.target_backbone, self.backbone, self.current_momentum)
        ema_update(self.target_projector, self.projector, self.current_momentum)
        if self._pending is not None:
            enqueue(self.queue, self.queue_ptr, self._pending)
            self._pending = None


@register("mocov3")
class MoCoV3(Method):
    """Backbone + projector + predictor; EMA momentum backbone + projector; in-batch keys."""

    loss_summary = "`mocov3_loss`, EMA keys"
    augmentation = "byol"
    momentum_backbone = "target_backbone"
    collapse_hint = "too high an lr without warmup (the paper's instability)"
    zero_init_residual = True  # official main_moco.py: zero_init_residual=True
    vit_heads = {"vit_small": 12}  # official vits.py:115-117 vit_small: num_heads=12 (DeiT-S: 6)
    recipes = (
        solo_learn(
            "cifar/mocov3.yaml",
            "(a reproduction: the official code has no CIFAR recipe)",
            backbones="convnet",
            base_lr=0.3,
            weight_decay=1e-06,
            settings={"temperature": 0.2},
            sources={
                "optimizer, larc_trust_coefficient, larc_clip": (
                    "cifar/mocov3.yaml:33-40 (lars, clip_lr True, eta 0.02); "
                    "solo/utils/lars.py:141-150 (clip: min(lars_lr / lr, 1))"
                ),
                "exclude_bias_and_norm": (
                    "cifar/mocov3.yaml:41 (exclude_bias_n_norm True); lars.py:140 (1-D parameters:"
                    " no adaptation, no decay)"
                ),
                "base_lr, lr_scaling, batch_size": (
                    "cifar/mocov3.yaml:34-35 (batch_size 256, lr 0.3); "
                    "solo/args/pretrain.py:153-154 (lr x batch / 256)"
                ),
                "num_epochs": "cifar/mocov3.yaml:52 (max_epochs 1000)",
                "weight_decay, final_weight_decay": (
                    "cifar/mocov3.yaml:37 (weight_decay 1e-6, constant)"
                ),
                "temperature": (
                    "cifar/mocov3.yaml:22 (temperature 0.2; the official ResNet default is 1.0)"
                ),
            },
        ),
        Recipe(
            source="facebookresearch/moco-v3 c349e6e, README's ResNet-50 command = CONFIG.md's "
            "100-epoch one (main_moco.py defaults; 68.9 %)",
            images="large",
            backbones="convnet",
            optimizer="lars",
            momentum=0.9,
            lars_eta=0.001,
            exclude_bias_and_norm=True,
            base_lr=0.6,
            lr_scaling="linear",
            batch_size=4096,
            num_epochs=100,
            weight_decay=1e-6,
            warmup_epochs=10,
            warmup_lr=0.0,
            final_lr=0.0,
            settings={"crop_min_scale": 0.2},
            sources={
                "optimizer, momentum, lars_eta": "main_moco.py:67,224-227 (moco.optimizer.LARS, "
                "--momentum 0.9); moco/optimizer.py:14 (trust_coefficient 0.001)",
                "exclude_bias_and_norm": "moco/optimizer.py:27 (decay and LARS scaling only "
                "where p.ndim > 1)",
                "base_lr, lr_scaling": "main_moco.py:65 (--lr 0.6), 190 (lr x batch_size / 256)",
                "batch_size": "main_moco.py:60 (-b 4096, all GPUs); README.md:10 (every result "
                "at batch 4096)",
                "num_epochs": "main_moco.py:56 (--epochs 100); README.md:102-106, "
                "CONFIG.md:76-78 (100 epochs, 68.9)",
                "weight_decay, final_weight_decay": "main_moco.py:69 (--wd 1e-6, constant)",
                "warmup_epochs, warmup_lr, final_lr": "main_moco.py:115 (--warmup-epochs 10), "
                "342,420-425 (per step: linear from 0, cosine to 0)",
                "crop_min_scale": "README.md:103 (--crop-min=.2; main_moco.py:117: 0.08 by "
                "default)",
            },
        ),
        Recipe(
            source="facebookresearch/moco-v3 c349e6e, CONFIG.md's ViT-Small and ViT-Base "
            "commands (300 epochs, batch 4096: 73.2 and 76.7 %)",
            backbones="vit",
            optimizer="adamw",
            betas=(0.9, 0.999),
            exclude_bias_and_norm=False,
            base_lr=1.5e-4,
            lr_scaling="linear",
            batch_size=4096,
            num_epochs=300,
            weight_decay=0.1,
            warmup_epochs=40,
            warmup_lr=0.0,
            final_lr=0.0,
            sources={
                "optimizer, betas": "CONFIG.md:128 (--optimizer=adamw); main_moco.py:228-230 "
                "(torch's AdamW, its default betas (0.9, 0.999))",
                "exclude_bias_and_norm": "main_moco.py:229 (AdamW(model.parameters()): every "
                "parameter decayed)",
                "base_lr, lr_scaling": "CONFIG.md:128,158 (--lr=1.5e-4); main_moco.py:190 (lr x "
                "batch_size / 256)",
                "batch_size": "CONFIG.md:126-133,156-163 (no -b: main_moco.py:60, 4096); "
                "CONFIG.md:183 (batch 4096)",
                "num_epochs, warmup_epochs": "CONFIG.md:129,159 (--epochs=300 --warmup-epochs=40)",
                "weight_decay, final_weight_decay": "CONFIG.md:128,158 (--weight-decay=.1, "
                "constant)",
                "warmup_lr, final_lr": "main_moco.py:342,420-425 (per step: linear from 0, "
                "cosine to 0)",
            },
        ),
    )

    def __init__(
        self,
        backbone: nn.Module,
        feat_dim: int,
        proj_hidden_dim: Annotated[int, PROJ_HIDDEN_DIM] = 4096,
        proj_dim: Annotated[int, PROJ_DIM] = 256,
        pred_hidden_dim: Annotated[int, PRED_HIDDEN_DIM] = 4096,
        temperature: Annotated[float | None, MOCOV3_TEMPERATURE] = None,
        ema_momentum: Annotated[float, EMA_MOMENTUM] = 0.99,
        proj_layers: Annotated[int | None, PROJ_LAYERS] = None,
        concat_views: Annotated[bool, CONCAT_VIEWS] = False,
        stop_grad_conv1: Annotated[bool | None, STOP_GRAD_CONV1] = None,
        pretrained: bool = False,
    ) -> None:
        super().__init__()
        if not 0 <= ema_momentum <= 1:
            raise ValueError(f"ema_momentum must be in [0, 1], got {ema_momentum}")
        if isinstance(backbone, MaskableViT):  # official vits.py, before the momentum copy
            if not pretrained:  # --pretrained / --init_backbone: the backbone keeps its weights
                mocov3_vit_init(backbone)
            backbone.position_parameter.requires_grad_(False)
            backbone.patch_projection.requires_grad_(stop_grad_conv1 is False)
        elif stop_grad_conv1:
            raise ValueError(
                "stop_grad_conv1 freezes the patch projection of a ViT (vit_tiny, vit_small, a "
                "plain timm ViT): drop it for this backbone"
            )
        self.backbone = backbone
        # official builder.py: MoCo_ResNet a 2-layer projector and a predictor without a last
        # BatchNorm, MoCo_ViT a 3-layer projector and one with; no biases, BatchNorm after every
        # hidden layer, the last one (where present) without affine parameters
        vit = is_vit(backbone)  # torchvision's or timm's
        layers = proj_layers or (3 if vit else 2)
        # resolved, for the run's record
        frozen = isinstance(backbone, MaskableViT) and stop_grad_conv1 is not False
        self.proj_layers, self.stop_grad_conv1 = layers, frozen
        self.projector = build_mlp(
            layers, feat_dim, proj_hidden_dim, proj_dim, last_bn=True, bias=False
        )
        self.predictor = build_mlp(2, proj_dim, pred_hidden_dim, proj_dim, last_bn=vit, bias=False)
        self.target_backbone = frozen_copy(backbone)
        self.target_projector = frozen_copy(self.projector)
        self.temperature = temperature or (0.2 if vit else 1.0)
        self.ema_momentum = ema_momentum
        self.current_momentum = ema_momentum
        self.concat_views = concat_views

    def forward(self, views: list[Tensor], labels: Tensor | None = None) -> dict[str, Tensor]:
        # each view in its own call (official: q1 = predictor(base_encoder(x1)), ...)
        z1, z2 = self.per_view(lambda x: self.projector(self.backbone(x)), views[:2])
        q1, q2 = self.per_view(self.predictor, (z1, z2))
        with torch.no_grad():
            key = lambda x: self.target_projector(self.target_backbone(x))
            k1, k2 = self.per_view(key, views[:2])
        loss = mocov3_loss(q1, k2, self.temperature) + mocov3_loss(q2, k1, self.temperature)
        return {"loss": loss, "z1": z1, "z2": z2}

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        # official builder.py updates the momentum encoder at the start of the next step's
        # forward, with that step's momentum m(step + 1) (main_moco.py adjust_moco_momentum):
        # the same update, done here after the optimizer step
        self.current_momentum = cosine_momentum(step + 1, total_steps, self.ema_momentum)
        ema_update(self.target_backbone, self.backbone, self.current_momentum)
        ema_update(self.target_projector, self.projector, self.current_momentum)
