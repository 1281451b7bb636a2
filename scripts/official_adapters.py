"""The adapters of scripts/official_check.py: for each method, the official module built from a
clone of its repository (imported unmodified), ours with the same architecture, the official
loss as its training loop computes it, how their state dicts correspond, and the shims.

Each `build(path)` returns a Pair; `groups` maps official key prefixes to ours (matched in
registration order within a group), `zeroed` names official tensors with no counterpart here
that are set to zero (with why that changes no output), `ignored` official buffers no output
reads. Views are built at 96 px (the ImageNet stem on both sides) and fed smaller, to keep a
ResNet-50 step in float64 quick.
"""

import importlib.util
import math
import os
import sys
from argparse import Namespace
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from methods import build_method
from networks import build_backbone
from networks.vit import set_heads
from utils.distributed import world_size
from utils.processes import free_port

BUILT_AT = 96  # image size our backbones are built for: the ImageNet stem, as the official ones


@dataclass
class Pair:
    official: nn.Module
    ours: nn.Module
    # (views, labels, the module to call: the official model, or DDP around it) -> loss
    official_loss: Callable[[list[Tensor], Tensor, nn.Module], Tensor]
    groups: list[tuple[str, str]]
    zeroed: dict[str, str] = field(default_factory=dict)
    ignored: dict[str, str] = field(default_factory=dict)
    ours_only: dict[str, str] = field(
        default_factory=dict
    )  # our state the official keeps elsewhere
    image_size: int = 32
    views: int = 2
    batch: int = 8
    before_step: Callable[[], None] = lambda: None
    after_step: Callable[[int, int], None] = lambda step, steps: None
    finish: Callable[[], None] = lambda: None  # the official update still due after the steps
    prepare: Callable[[], None] = lambda: None  # after the draw: the official invariants
    convert: dict[str, Callable[[Tensor], Tensor]] = field(default_factory=dict)  # to our layout
    built_at: int = BUILT_AT
    rename: Callable[[str], str] | None = None  # official key -> ours, in place of `groups`
    sizes: list[int] | None = None  # each view's size, where they differ (else image_size)
    also: dict[str, bool] = field(default_factory=dict)  # other comparisons the steps made
    # our key <- several official ones: (their keys, how they join into ours)
    combined: dict[str, tuple[tuple[str, ...], Callable[[list[Tensor]], Tensor]]] = field(
        default_factory=dict
    )


@dataclass(frozen=True)
class Adapter:
    repository: str
    imports: list[str]  # the official files imported (or whose loop lines are reproduced)
    shims: list[str]
    build: Callable[[str, dict], Pair]
    processes: tuple[int, ...] = (1,)  # the process counts the check runs in


def load(root: str, relpath: str):
    """The official module at `root/relpath`, imported as it is under its own dotted name
    (`src/models/vision_transformer.py` as src.models.vision_transformer), with `root` first on
    sys.path for its own imports; modules of ours with the names of its top-level files and
    folders (DINO's `utils`) are set aside meanwhile and put back after, the official module
    keeping its own."""
    names = {n.removesuffix(".py") for n in os.listdir(root)}
    clashing = lambda m: m.split(".")[0] in names  # noqa: E731
    ours_aside = {m: sys.modules.pop(m) for m in list(sys.modules) if clashing(m)}
    sys.path.insert(0, root)
    path, name = os.path.join(root, relpath), relpath.removesuffix(".py").replace("/", ".")
    try:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError:
            module = None
        if module is None or os.path.abspath(module.__file__) != os.path.abspath(path):
            # a folder without __init__.py loses to a package of ours of that name: by file
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
    finally:
        sys.path.remove(root)
        for m in [m for m in sys.modules if clashing(m)]:
            sys.modules.pop(m)
        sys.modules.update(ours_aside)
    return module


def one_process_group() -> None:
    """A gloo group of one process, for official code that calls torch.distributed."""
    if torch.distributed.is_initialized():
        return
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1
    )


def ours(name: str, backbone: str, extra: dict, built_at: int = BUILT_AT, **kwargs) -> nn.Module:
    """Our method on `backbone`, with the check's hyper-parameters and then `extra` (the
    check's --ours: another value of a flag, to see what it changes)."""
    net, feat_dim = build_backbone(backbone, built_at)
    return build_method(name, net, feat_dim, **{**kwargs, **extra})


@torch.no_grad()
def copy_module(source: nn.Module, target: nn.Module) -> None:
    """`target` as a copy of `source` (parameters and buffers): an EMA copy as its official
    constructor leaves it, after the check drew the BatchNorms of both."""
    target.load_state_dict(source.state_dict())


def stand_ins(modules: dict[str, list[str]]) -> None:
    """Empty modules (with these attributes, None) for imports of the official code that the
    check never calls, where the package is not installed."""
    for name, attributes in modules.items():
        try:
            importlib.import_module(name)
        except ImportError:
            module = type(sys)(name)
            for attribute in attributes:
                setattr(module, attribute, None)
            sys.modules[name] = module
            parent, _, child = name.rpartition(".")
            if parent:
                setattr(sys.modules[parent], child, module)


def cpu_cuda() -> None:
    """Official code that moves tensors with .cuda(): on the CPU, where they already are."""
    torch.Tensor.cuda = lambda self, *args, **kwargs: self


NO_SYNC_BN = (
    "in two processes no SyncBatchNorm on either side (its official conversion in main_worker "
    "has no CPU kernel): BatchNorm over each process's batch"
)
BIAS_BEFORE_BN = "a bias before a BatchNorm in training changes no output (its gradient is zero)"


def simsiam(path: str, extra: dict) -> Pair:
    builder = load(path, "simsiam/builder.py")
    official = builder.SimSiam(torchvision.models.resnet18, dim=256, pred_dim=64)
    cosine = nn.CosineSimilarity(dim=1)

    def loss(views, labels, forward):  # main_simsiam.py:293-295
        p1, p2, z1, z2 = forward(x1=views[0], x2=views[1])
        return -(cosine(p1, z2).mean() + cosine(p2, z1).mean()) * 0.5

    return Pair(
        official, ours("simsiam", "resnet18", extra, proj_dim=256, pred_hidden_dim=64), loss,
        groups=[("encoder.fc.", "projector."), ("encoder.", "backbone."),
                ("predictor.", "predictor.")],
        zeroed={"encoder.fc.6.bias": "frozen (requires_grad False) and followed by a "
                "BatchNorm1d without affine parameters: " + BIAS_BEFORE_BN},
    )  # fmt: skip


def barlowtwins(path: str, extra: dict) -> Pair:
    one_process_group()
    main = load(path, "main.py")
    args = Namespace(projector="256-256-256", batch_size=8, lambd=0.0051)
    official = main.BarlowTwins(args)
    return Pair(
        official, ours("barlowtwins", "resnet50", extra, proj_hidden_dim=256, proj_dim=256),
        lambda views, labels, forward: forward(views[0], views[1]),
        groups=[("backbone.", "backbone."), ("projector.", "projector.")],
        ignored={f"bn.{k}": "the running statistics of the BatchNorm that standardises z in "
                 "training: no output reads them" for k in
                 ("running_mean", "running_var", "num_batches_tracked")},
    )  # fmt: skip


def vicreg(path: str, extra: dict) -> Pair:
    one_process_group()
    main = load(path, "main_vicreg.py")
    # its batch_size is the whole batch of all processes (main_vicreg.py:209-210 divide by it)
    args = Namespace(arch="resnet34", mlp="256-256-256", batch_size=8 * world_size(),
                     sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0)  # fmt: skip
    official = main.VICReg(args)
    zeroed = {f"projector.{i}.bias": BIAS_BEFORE_BN for i in (0, 3)}
    return Pair(
        official, ours("vicreg", "resnet34", extra, proj_hidden_dim=256, proj_dim=256),
        lambda views, labels, forward: forward(views[0], views[1]),
        groups=[("backbone.", "backbone."), ("projector.", "projector.")], zeroed=zeroed,
    )  # fmt: skip


def mocov2(path: str, extra: dict) -> Pair:
    one_process_group()
    cpu_cuda()
    builder = load(path, "moco/builder.py")
    official = builder.MoCo(torchvision.models.resnet18, dim=128, K=64, m=0.999, T=0.2, mlp=True)
    criterion = nn.CrossEntropyLoss()

    def loss(views, labels, forward):  # main_moco.py:417-418
        output, target = forward(im_q=views[0], im_k=views[1])
        return criterion(output, target)

    return Pair(
        official,
        # one process: the official shuffle leaves BatchNorm over the whole key batch
        ours("mocov2", "resnet18", extra, proj_dim=128, queue_size=64, temperature=0.2,
             ema_momentum=0.999, shuffle_bn=world_size() > 1),
        loss,
        groups=[("queue", "queue"), ("encoder_q.fc.", "projector."),
                ("encoder_q.", "backbone."), ("encoder_k.fc.", "target_projector."),
                ("encoder_k.", "target_backbone.")],
        convert={"queue": lambda q: q.T.unsqueeze(0), "queue_ptr": lambda p: p.reshape(())},
        # its forward updates the key encoder first: the update ours made after the last step
        finish=official._momentum_update_key_encoder,
        prepare=lambda: copy_module(official.encoder_q, official.encoder_k),
    )  # fmt: skip


def supcon(path: str, extra: dict) -> Pair:
    resnet_big = load(path, "networks/resnet_big.py")
    losses = load(path, "losses.py")
    official = resnet_big.SupConResNet(name="resnet18", head="mlp", feat_dim=128)
    criterion = losses.SupConLoss(temperature=0.1, base_temperature=0.07)

    def loss(views, labels, forward):  # main_supcon.py:205-223: both views in one forward
        features = forward(torch.cat([views[0], views[1]], dim=0))
        f1, f2 = torch.split(features, [labels.shape[0]] * 2, dim=0)
        return criterion(torch.cat([f1.unsqueeze(1), f2.unsqueeze(1)], dim=1), labels)

    return Pair(
        official,
        ours("supcon", "resnet18", extra, built_at=32, proj_dim=128, temperature=0.1),
        loss,
        groups=[("encoder.", "backbone."), ("head.", "projector.")], built_at=32,
    )  # fmt: skip


def moco_v3_pair(path: str, vit: bool, ours_model: nn.Module) -> Pair:
    """MoCo v3 with its ResNet-18 (main_moco.py:185) or a ViT-Small at 32 px (vits.py,
    stop_grad_conv1 as main_moco.py sets it), the momentum's cosine per step."""
    one_process_group()
    cpu_cuda()
    builder = load(path, "moco/builder.py")
    if vit:
        import timm.layers.helpers  # where timm moved timm.models.layers.helpers

        sys.modules.setdefault("timm.models.layers.helpers", timm.layers.helpers)
        vits = load(path, "vits.py")
        # timm renamed num_tokens num_prefix_tokens (its positions' assert reads the old name)
        vits.VisionTransformerMoCo.num_tokens = property(lambda self: self.num_prefix_tokens)
        encoder = partial(
            vits.VisionTransformerMoCo,
            img_size=32,
            patch_size=4,
            embed_dim=384,
            depth=12,
            num_heads=12,
            mlp_ratio=4,
            qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            stop_grad_conv1=True,
        )
        official = builder.MoCo_ViT(encoder, dim=32, mlp_dim=64, T=0.2)
    else:
        encoder = partial(torchvision.models.resnet18, zero_init_residual=True)
        official = builder.MoCo_ResNet(encoder, dim=64, mlp_dim=128, T=1.0)
    momentum = {"step": 0, "steps": 3}

    def m(step: int) -> float:  # main_moco.py:431-434 adjust_moco_momentum, per step
        return 1.0 - 0.5 * (1.0 + math.cos(math.pi * step / momentum["steps"])) * (1.0 - 0.99)

    def loss(views, labels, forward):  # main_moco.py:344-353: the step's momentum, then the model
        return forward(views[0], views[1], m(momentum["step"]))

    def after_step(step: int, steps: int) -> None:
        momentum["step"], momentum["steps"] = step + 1, steps

    head = "head." if vit else "fc."
    prefixes = (("base_encoder.", "backbone."), ("momentum_encoder.", "target_backbone."))

    def rename(key: str) -> str:
        for a, b in (
            ("base_encoder." + head, "projector."),
            ("momentum_encoder." + head, "target_projector."),
            *prefixes,
        ):
            if key.startswith(a):
                key = b + key[len(a) :]
                break
        if key.startswith(("backbone.", "target_backbone.")):
            root, _, rest = key.partition(".")
            key = f"{root}.{vit_key(rest)}"
        return key

    return Pair(
        official, ours_model, loss,
        groups=[] if vit else [("base_encoder.fc.", "projector."), ("base_encoder.", "backbone."),
                               ("momentum_encoder.fc.", "target_projector."),
                               ("momentum_encoder.", "target_backbone."),
                               ("predictor.", "predictor.")],
        rename=rename if vit else None,
        prepare=lambda: copy_module(official.base_encoder, official.momentum_encoder),
        after_step=after_step,
        # the update its next forward would make first, with m(K) = 1: none
        finish=lambda: official._update_momentum_encoder(m(momentum["steps"])),
        built_at=32 if vit else BUILT_AT,
    )  # fmt: skip


def mocov3(path: str, extra: dict) -> Pair:
    model = ours("mocov3", "resnet18", extra, proj_dim=64, proj_hidden_dim=128,
                 pred_hidden_dim=128, temperature=1.0, ema_momentum=0.99)  # fmt: skip
    return moco_v3_pair(path, False, model)


def mocov3_vit(path: str, extra: dict) -> Pair:
    net, feat_dim = build_backbone("vit_small", 32)
    set_heads(net, 12, "vit_small")  # MoCo v3's ViT-Small (vits.py): 12 heads
    kwargs = dict(proj_dim=32, proj_hidden_dim=64, pred_hidden_dim=64, temperature=0.2,
                  ema_momentum=0.99)  # fmt: skip
    return moco_v3_pair(path, True, build_method("mocov3", net, feat_dim, **{**kwargs, **extra}))


def dino_pair(path: str, extra: dict, vit: bool) -> Pair:
    """DINO with its ResNet-18 (main_dino.py:175-178) or its ViT-Tiny at 32 px (4-px patches)
    with local crops of 16 px, whose position embeddings its interpolate_pos_encoding resizes."""
    one_process_group()
    main = load(path, "main_dino.py")
    utils, head = main.utils, main.DINOHead
    if vit:
        student_net = main.vits.vit_tiny(patch_size=4, img_size=[32], drop_path_rate=0.0)
        teacher_net = main.vits.vit_tiny(patch_size=4, img_size=[32])
        embed = student_net.embed_dim  # main_dino.py:166-173
    else:
        student_net, teacher_net = torchvision.models.resnet18(), torchvision.models.resnet18()
        embed = student_net.fc.weight.shape[1]  # main_dino.py:175-178
    student_head = head(embed, 64, use_bn=False, norm_last_layer=True)
    student = utils.MultiCropWrapper(student_net, student_head)
    teacher = utils.MultiCropWrapper(teacher_net, head(embed, 64, False))
    official = nn.ModuleDict({"student": student, "teacher": teacher})
    criterion = main.DINOLoss(64, 4, 0.04, 0.04, 0, 1, 0.1, 0.9)
    official.register_buffer("center", criterion.center)

    def loss(views, labels, forward):  # main_dino.py:318-320
        teacher_output = teacher(views[:2])
        out = criterion(student(views), teacher_output, 0)
        official.center.copy_(criterion.center)
        return out

    def before_step() -> None:  # main_dino.py:331-334: clip at 3.0, cancel the last layer's
        utils.clip_gradients(student, 3.0)
        utils.cancel_gradients_last_layer(0, student, 1)

    @torch.no_grad()
    def after_step(step: int, steps: int) -> None:  # main_dino.py:346-350 with its schedule
        m = utils.cosine_scheduler(0.996, 1, 1, steps)[step]
        for q, k in zip(student.parameters(), teacher.parameters(), strict=True):
            k.data.mul_(m).add_((1 - m) * q.detach().data)

    def rename(key: str) -> str:
        roots = (
            ("student.backbone.", "backbone."),
            ("teacher.backbone.", "teacher_backbone."),
            ("student.head.", "head."),
            ("teacher.head.", "teacher_head."),
        )
        for a, b in roots:
            if key.startswith(a):
                root, rest = b, key[len(a) :]
                break
        else:
            return key
        if root.endswith("backbone."):
            rest = vit_key(rest)
        # nn.utils.weight_norm's g and v; ours is the parametrization of the same pair
        rest = rest.replace("last_layer.weight_g", "last_layer.parametrizations.weight.original0")
        rest = rest.replace("last_layer.weight_v", "last_layer.parametrizations.weight.original1")
        return root + rest

    kwargs = dict(out_dim=64, ema_momentum=0.996) | ({"drop_path_rate": 0.0} if vit else {})
    return Pair(
        official,
        ours("dino", "vit_tiny" if vit else "resnet18", extra,
             built_at=32 if vit else BUILT_AT, **kwargs),
        loss,
        groups=[] if vit else [("student.backbone.", "backbone."), ("student.head.", "head."),
                               ("teacher.backbone.", "teacher_backbone."),
                               ("teacher.head.", "teacher_head."), ("center", "center")],
        rename=rename if vit else None,
        convert={"center": lambda c: c.reshape(-1)},
        prepare=lambda: copy_module(student, teacher),  # main_dino.py:202: teacher <- student
        before_step=before_step, after_step=after_step, views=4,
        sizes=[32, 32, 16, 16] if vit else None, built_at=32 if vit else BUILT_AT,
    )  # fmt: skip


def dino(path: str, extra: dict) -> Pair:
    return dino_pair(path, extra, vit=False)


def dino_vit(path: str, extra: dict) -> Pair:
    return dino_pair(path, extra, vit=True)


def swav(path: str, extra: dict) -> Pair:
    one_process_group()
    cpu_cuda()
    # imported at the top of main_swav.py and src/logger.py, for fp16, LARC and logging only
    stand_ins({"apex": [], "apex.parallel": [], "apex.parallel.LARC": ["LARC"], "pandas": []})
    main = load(path, "main_swav.py")
    main.args = Namespace(crops_for_assign=[0, 1], nmb_crops=[2, 2], temperature=0.1,
                          epsilon=0.05, sinkhorn_iterations=3, world_size=1)  # fmt: skip
    model = main.resnet_models.resnet50(normalize=True, hidden_mlp=64, output_dim=32,
                                        nmb_prototypes=16)  # fmt: skip
    official = nn.ModuleDict({"model": model})
    official.register_buffer("queue", torch.zeros(2, 16, 32))  # main_swav.py:236-241
    state = {"use_the_queue": False}

    def loss(
        views, labels, forward
    ):  # main_swav.py:277-315, reproduced with its distributed_sinkhorn
        args, queue, bs = main.args, official.queue, views[0].shape[0]
        with torch.no_grad():
            w = nn.functional.normalize(model.prototypes.weight.data.clone(), dim=1, p=2)
            model.prototypes.weight.copy_(w)
        embedding, output = model(views)
        embedding = embedding.detach()
        total = 0
        for i, crop_id in enumerate(args.crops_for_assign):
            with torch.no_grad():
                out = output[bs * crop_id : bs * (crop_id + 1)].detach()
                if state["use_the_queue"] or not torch.all(queue[i, -1, :] == 0):
                    state["use_the_queue"] = True
                    out = torch.cat((torch.mm(queue[i], model.prototypes.weight.t()), out))
                queue[i, bs:] = queue[i, :-bs].clone()
                queue[i, :bs] = embedding[crop_id * bs : (crop_id + 1) * bs]
                q = main.distributed_sinkhorn(out)[-bs:]
            subloss = 0
            for v in [v for v in range(sum(args.nmb_crops)) if v != crop_id]:
                x = output[bs * v : bs * (v + 1)] / args.temperature
                subloss -= torch.mean(torch.sum(q * F.log_softmax(x, dim=1), dim=1))
            total += subloss / (sum(args.nmb_crops) - 1)
        return total / len(args.crops_for_assign)

    @torch.no_grad()
    def normalize() -> None:  # what its next iteration does first (main_swav.py:278-281)
        model.prototypes.weight.copy_(nn.functional.normalize(model.prototypes.weight, dim=1))

    return Pair(
        official,
        ours("swav", "resnet50", extra, proj_hidden_dim=64, proj_dim=32, num_prototypes=16,
             queue_size=16, epoch_queue_starts=0, freeze_prototypes_epochs=0),
        loss,
        groups=[("queue", "queue"), ("model.projection_head.", "projector."),
                ("model.prototypes.", "prototypes."), ("model.", "backbone.")],
        zeroed={"model.projection_head.0.bias": BIAS_BEFORE_BN},
        ours_only={"queue_filled": "its loop's use_the_queue"},
        prepare=normalize, finish=normalize, views=4,
    )  # fmt: skip


VIT_NAMES = (  # timm's ViT names -> torchvision's, which our ViTs keep
    ("patch_embed.proj.", "conv_proj."), ("norm1.", "ln_1."), ("norm2.", "ln_2."),
    ("attn.qkv.weight", "self_attention.in_proj_weight"),
    ("attn.qkv.bias", "self_attention.in_proj_bias"), ("attn.proj.", "self_attention.out_proj."),
    ("mlp.fc1.", "mlp.0."), ("mlp.fc2.", "mlp.3."),
)  # fmt: skip


def vit_key(key: str) -> str:
    """A timm-style ViT encoder's key (cls_token, pos_embed, patch_embed, blocks, norm) under our
    ViTs' names (torchvision's)."""
    key = {"cls_token": "class_token", "pos_embed": "encoder.pos_embedding"}.get(key, key)
    for a, b in (("blocks.", "encoder.layers.encoder_layer_"), ("norm.", "encoder.ln.")):
        if key.startswith(a):
            key = b + key[len(a) :]
    for a, b in VIT_NAMES:
        key = key.replace(a, b)
    return key


def timm_block_without_qk_scale() -> None:
    """timm's Block dropped `qk_scale` (None in the official calls: the default scale)."""
    from timm.models import vision_transformer

    block = vision_transformer.Block
    if getattr(block, "takes_qk_scale", False):
        return

    class Block(block):
        takes_qk_scale = True

        def __init__(self, *args, qk_scale=None, **kwargs):
            super().__init__(*args, **kwargs)

    vision_transformer.Block = Block


def mae(path: str, extra: dict) -> Pair:
    timm_block_without_qk_scale()
    np.float = float  # util/pos_embed.py uses the alias numpy removed (np.float: float64)
    models_mae = load(path, "models_mae.py")
    official = models_mae.MaskedAutoencoderViT(
        img_size=32, patch_size=4, embed_dim=192, depth=12, num_heads=3, decoder_embed_dim=64,
        decoder_depth=1, decoder_num_heads=2, mlp_ratio=4,
        norm_layer=partial(nn.LayerNorm, eps=1e-6), norm_pix_loss=True,
    )  # fmt: skip

    def rename(key: str) -> str:
        encoder = ("cls_token", "pos_embed", "patch_embed.", "blocks.", "norm.")
        if key.startswith(encoder):
            return "backbone." + vit_key(key)
        for a, b in VIT_NAMES:  # the decoder's blocks keep their names
            key = key.replace(a, b)
        return key

    return Pair(
        official,
        ours("mae", "vit_tiny", extra, built_at=32, decoder_dim=64, decoder_depth=1,
             decoder_heads=2, norm_pix_loss=True),
        lambda views, labels, forward: forward(views[0], mask_ratio=0.75)[0],  # main_pretrain.py
        groups=[], rename=rename, built_at=32, views=1,
        ignored={"decoder_pos_embed": "fixed sin-cos positions (requires_grad False), which "
                 "ours computes instead of storing: the loss compares them"},
    )  # fmt: skip


def ijepa(path: str, extra: dict) -> Pair:
    import copy

    import methods.ijepa as ours_ijepa

    vit = load(path, "src/models/vision_transformer.py")
    multiblock = load(path, "src/masks/multiblock.py")
    apply_masks = load(path, "src/masks/utils.py").apply_masks
    repeat_interleave_batch = load(path, "src/utils/tensors.py").repeat_interleave_batch
    encoder = vit.vit_tiny(img_size=[32], patch_size=4)  # helper.py init_model's calls
    predictor = vit.vit_predictor(num_patches=64, embed_dim=192, predictor_embed_dim=48,
                                  depth=2, num_heads=3)  # fmt: skip
    target = copy.deepcopy(encoder)  # train.py:213
    official = nn.ModuleDict({"encoder": encoder, "predictor": predictor, "target": target})
    collator = multiblock.MaskCollator(
        input_size=(32, 32), patch_size=4, enc_mask_scale=(0.85, 1.0),
        pred_mask_scale=ours_ijepa.TARGET_SCALE, aspect_ratio=ours_ijepa.ASPECT, nenc=1,
        npred=4, min_keep=ours_ijepa.MIN_KEEP, allow_overlap=False,
    )  # fmt: skip
    drawn, sizes = {}, []
    official_size = collator._sample_block_size  # its block sizes, from its own generator
    sampler, our_size = ours_ijepa.multiblock_masks, ours_ijepa.block_size
    also = {}

    def sample_block_size(generator, scale, aspect_ratio_scale):  # and ours from the same draw
        r = torch.rand(1, generator=torch.Generator().set_state(generator.get_state())).item()
        sizes.append(official_size(generator, scale, aspect_ratio_scale))
        key = "our block_size equal to _sample_block_size for the same draw"
        mine = our_size(8, scale, aspect_ratio_scale, r)
        also[key] = also.get(key, True) and tuple(mine) == tuple(sizes[-1])
        return sizes[-1]

    collator._sample_block_size = sample_block_size

    def loss(
        views, labels, forward
    ):  # train.py:295-321, reproduced (one process: AllReduce is none)
        imgs = views[0]
        before = torch.get_rng_state()
        sizes.clear()
        _, masks_enc, masks_pred = collator([(img, 0) for img in imgs])
        drawn["masks"] = (masks_enc[0], torch.stack(masks_pred))
        # our sampler from the same random state, given the block sizes the collator drew
        after, given = torch.get_rng_state(), iter(list(sizes))
        torch.set_rng_state(before)
        ours_ijepa.block_size = lambda side, scale, aspect: next(given)
        try:
            mine = sampler(len(imgs), 8, num_targets=4)
        finally:
            ours_ijepa.block_size = our_size
            torch.set_rng_state(after)
        same = all(torch.equal(a, b) for a, b in zip(mine, drawn["masks"], strict=True))
        key = "our multiblock_masks equal to MaskCollator's (positions, cuts) at every step"
        also[key] = also.get(key, True) and same
        with torch.no_grad():
            h = target(imgs)
            h = F.layer_norm(h, (h.size(-1),))
            h = apply_masks(h, masks_pred)
            h = repeat_interleave_batch(h, len(imgs), repeat=len(masks_enc))
        z = predictor(encoder(imgs, masks_enc), masks_enc, masks_pred)
        return F.smooth_l1_loss(z, h)

    # ours takes the official collator's masks of the step (its own sampler draws otherwise)
    ours_ijepa.multiblock_masks = lambda batch, side, num_targets: drawn["masks"]

    @torch.no_grad()
    def after_step(step: int, steps: int) -> None:  # train.py:227-229, 333-336
        m = 0.996 + step * (1.0 - 0.996) / steps
        for q, k in zip(encoder.parameters(), target.parameters(), strict=True):
            k.data.mul_(m).add_((1.0 - m) * q.detach().data)

    def rename(key: str) -> str:
        part, _, rest = key.partition(".")
        if part != "predictor":
            return {"encoder": "backbone.", "target": "target_backbone."}[part] + vit_key(rest)
        for a, b in (
            ("predictor_embed.", "embed."),
            ("predictor_blocks.", "blocks."),
            ("predictor_norm.", "norm."),
            ("predictor_proj.", "proj."),
        ):
            if rest.startswith(a):
                rest = b + rest[len(a) :]
        for a, b in VIT_NAMES:
            rest = rest.replace(a, b)
        return f"predictor.{rest}"

    with_class_position = lambda p: torch.cat([torch.zeros_like(p[:, :1]), p], dim=1)  # noqa: E731
    no_class = "I-JEPA's encoder has no class token; ours keeps one that its tokens leave out"
    return Pair(
        official,
        ours("ijepa", "vit_tiny", extra, built_at=32, pred_depth=2, pred_emb_dim=48,
             ema_momentum=0.996),
        loss, groups=[], rename=rename, built_at=32, views=1, after_step=after_step,
        convert={"encoder.pos_embed": with_class_position,
                 "target.pos_embed": with_class_position},
        ignored={"predictor.predictor_pos_embed": "fixed sin-cos positions (requires_grad "
                 "False), which ours computes: the loss compares them"},
        ours_only={"backbone.class_token": no_class, "target_backbone.class_token": no_class},
        prepare=lambda: copy_module(encoder, target), also=also,
    )  # fmt: skip


def lejepa(path: str, extra: dict) -> Pair:
    """MINIMAL.md's model and loss (its training script is in the markdown: reproduced) with the
    release's SIGReg modules: a backbone, torchvision's MLP with BatchNorm over every view at
    once, `(proj.mean(0) - proj).square().mean()`, and SlicingUnivariateTest(EppsPulley) over
    each view's projections."""
    from torchvision.ops import MLP

    univariate = load(path, "lejepa/univariate/epps_pulley.py")
    slicing = load(path, "lejepa/multivariate/slicing.py")
    torch_names = {k: getattr(torch, k) for k in dir(torch) if not k.startswith("__")}
    # its directions are drawn in float32 (randn's default): cast for the float64 product
    slicing.torch = Namespace(**torch_names)
    slicing.torch.randn = lambda *a, **k: torch.randn(*a, **k).double()
    # its quadrature's nodes and weights, built in float32: built in float64 instead
    univariate.torch = Namespace(**{**torch_names, "float32": torch.float64})
    lamb = 0.02
    net = torchvision.models.resnet18()
    net.fc = nn.Identity()
    official = nn.Module()
    official.backbone = net
    official.proj = MLP(512, [64, 64, 16], norm_layer=nn.BatchNorm1d)
    official.sigreg = slicing.SlicingUnivariateTest(univariate.EppsPulley(), num_slices=256)

    def loss(views, labels, forward):  # MINIMAL.md's step: net(vs), inv_loss, sigreg
        n, v = views[0].shape[0], len(views)
        images = torch.stack(views, dim=1).flatten(0, 1)  # [N, V, ...] flattened, as its loader
        proj = forward.proj(forward.backbone(images)).reshape(n, v, -1).transpose(0, 1)
        inv_loss = (proj.mean(0) - proj).square().mean()
        return forward.sigreg(proj) * lamb + inv_loss * (1 - lamb)

    return Pair(
        official,
        ours("lejepa", "resnet18", extra, proj_hidden_dim=64, proj_dim=16, lamb=lamb,
             num_slices=256, num_crops=0),
        loss,
        groups=[("backbone.", "backbone."), ("proj.", "projector."),
                ("sigreg.global_step", "slicing_step")],
        zeroed={f"proj.{i}.bias": BIAS_BEFORE_BN for i in (0, 4)},
        ignored={f"sigreg.univariate_test.{k}": "the quadrature's nodes and weights, which ours "
                 "computes: the loss compares them" for k in ("t", "phi", "weights")},
    )  # fmt: skip


def simmim(path: str, extra: dict) -> Pair:
    """VisionTransformerForSimMIM with absolute positions and neither LayerScale nor relative
    position bias (the toolkit's ViT: the ViT-B config's init_values 0.1 and shared relative bias
    are options there), at 32 px with 4 px patches and 8 px mask patches."""
    import timm.data.transforms

    import methods.simmim as ours_simmim

    if not hasattr(timm.data.transforms, "_pil_interp"):  # removed from timm; data/__init__.py
        timm.data.transforms._pil_interp = None  # imports it for fine-tuning, never called here
    models = load(path, "models/simmim.py")
    generator = load(path, "data/data_simmim.py").MaskGenerator(
        input_size=32, mask_patch_size=8, model_patch_size=4, mask_ratio=0.6
    )
    encoder = models.VisionTransformerForSimMIM(
        img_size=32, patch_size=4, in_chans=3, num_classes=0, embed_dim=192, depth=12,
        num_heads=3, mlp_ratio=4, qkv_bias=True, drop_rate=0.0, drop_path_rate=0.0,
        norm_layer=partial(nn.LayerNorm, eps=1e-6), init_values=None, use_abs_pos_emb=True,
        use_rel_pos_bias=False, use_shared_rel_pos_bias=False, use_mean_pooling=False,
    )  # fmt: skip
    official = models.SimMIM(encoder=encoder, encoder_stride=4)
    drawn = {}

    def loss(views, labels, forward):  # main_simmim.py: loss = model(img, mask)
        images = views[0]
        mask = torch.from_numpy(np.stack([generator() for _ in images])).to(images.device)
        drawn["grid"] = mask[:, ::2, ::2].to(images.dtype)  # the mask patches' grid, for ours
        return forward(images, mask)

    # ours takes the official generator's masks of the step (its own sampler draws otherwise)
    ours_simmim.simmim_masks = lambda batch, side, ratio, device=None: drawn["grid"]

    def rename(key: str) -> str:
        if key.startswith("encoder.") and key != "encoder.mask_token":
            return "backbone." + vit_key(key[len("encoder.") :])
        return key.removeprefix("encoder.")

    depth = len(encoder.blocks)
    combined = {
        f"backbone.encoder.layers.encoder_layer_{i}.self_attention.in_proj_bias": (
            (f"encoder.blocks.{i}.attn.q_bias", f"encoder.blocks.{i}.attn.v_bias"),
            lambda parts: torch.cat([parts[0], torch.zeros_like(parts[0]), parts[1]]),
        )
        for i in range(depth)
    }
    return Pair(
        official,
        ours("simmim", "vit_tiny", extra, built_at=32, mask_ratio=0.6, mask_patch_size=8),
        loss, groups=[], rename=rename, built_at=32, views=1, combined=combined,
    )  # fmt: skip


@contextmanager
def float_kept():
    """Tensor.float() as the identity: official code that casts to float32 where ours keeps
    float64 (DINOv2's Sinkhorn-Knopp; both run in float32 under mixed precision), so that the
    float64 comparison is not measuring float32 rounding."""
    cast = torch.Tensor.float
    torch.Tensor.float = lambda self, *args, **kwargs: self
    try:
        yield
    finally:
        torch.Tensor.float = cast


def dinov2(path: str, extra: dict) -> Pair:
    """DINOv2's training step (train/ssl_meta_arch.py forward_backward, re-stated: the meta
    architecture needs xFormers and CUDA; train/train.py's clipping, last-layer lr and EMA) on
    its DinoVisionTransformer the size of ViT-Tiny at 32 px (4-px patches, LayerScale 1e-5, 4
    registers), with its DINOHead, DINOLoss, iBOTPatchLoss, KoLeoLoss, MaskingGenerator and
    collate_data_and_cast; the iBOT head shared, Sinkhorn-Knopp or (--ours centering=centering)
    DINO's centring."""
    import random

    one_process_group()  # its Sinkhorn-Knopp all_reduces (iBOT's B unconditionally)
    vits = load(path, "dinov2/models/vision_transformer.py")
    layers = load(path, "dinov2/layers/__init__.py")
    losses = load(path, "dinov2/loss/__init__.py")
    data = load(path, "dinov2/data/collate.py")
    masking = load(path, "dinov2/data/masking.py")
    schedules = load(path, "dinov2/utils/utils.py")
    centering = extra.get("centering", "sinkhorn_knopp")
    k, side, local = 64, 8, 2

    def backbone(drop_path: float) -> nn.Module:  # vit_small's builder with ViT-Tiny's sizes
        return vits.DinoVisionTransformer(
            img_size=32, patch_size=4, embed_dim=192, depth=12, num_heads=3, mlp_ratio=4,
            block_fn=partial(vits.Block, attn_class=layers.MemEffAttention),
            init_values=1e-5, num_register_tokens=4, drop_path_rate=drop_path, block_chunks=0,
        )  # fmt: skip

    def head() -> nn.Module:
        return layers.DINOHead(in_dim=192, out_dim=k, hidden_dim=128, bottleneck_dim=32, nlayers=3)

    student = nn.ModuleDict({"backbone": backbone(0.0), "dino_head": head()})
    teacher = nn.ModuleDict({"backbone": backbone(0.0), "dino_head": head()})
    dino_loss, ibot_loss, koleo = losses.DINOLoss(k), losses.iBOTPatchLoss(k), losses.KoLeoLoss()
    official = nn.ModuleDict(
        {"student": student, "teacher": teacher, "dino_loss": dino_loss, "ibot_loss": ibot_loss}
    )
    generator = masking.MaskingGenerator(input_size=(side, side), max_num_patches=0.5 * side * side)
    net, width = build_backbone("vit_tiny", 32)
    net.set_registers(4)
    net.set_layerscale(1e-5)
    settings = dict(out_dim=k, proj_hidden_dim=128, proj_dim=32, drop_path_rate=0.0)
    ours_model = build_method("dinov2", net, width, **{**settings, **extra})

    def loss(views, labels, forward):  # ssl_meta_arch.py forward_backward, 2 local crops
        temp = ours_model.current_teacher_temp
        samples = [({"global_crops": [v[i] for v in views[:2]],
                     "local_crops": [v[i] for v in views[2:]]}, None)
                   for i in range(len(views[0]))]  # fmt: skip
        state = random.getstate()
        batch = data.collate_data_and_cast(
            samples, (0.1, 0.5), 0.5, torch.float64, n_tokens=side * side,
            mask_generator=generator,
        )  # fmt: skip
        random.setstate(state)  # ours draws the same masks from the same state
        crops, masks = batch["collated_global_crops"], batch["collated_masks"]
        index, n_masked = batch["mask_indices_list"], batch["mask_indices_list"].shape[0]
        with torch.no_grad():
            out = teacher.backbone(crops, is_training=True)
            cls = out["x_norm_clstoken"].chunk(2)
            cls = torch.cat((cls[1], cls[0]))  # reversed: crop A's targets for crop B
            patches = torch.index_select(out["x_norm_patchtokens"].flatten(0, 1), 0, index)
            after = teacher.dino_head(torch.cat([cls, patches]))
            t_cls, t_patch = after[: len(cls)], after[len(cls) :]
            if centering == "centering":
                dino_t = dino_loss.softmax_center_teacher(t_cls, teacher_temp=temp)
                dino_loss.update_center(t_cls)
                t_patch = t_patch.unsqueeze(0)
                ibot_t = ibot_loss.softmax_center_teacher(t_patch[:, :n_masked], teacher_temp=temp)
                ibot_t = ibot_t.squeeze(0)
                ibot_loss.update_center(t_patch[:n_masked])
            else:
                with float_kept():
                    dino_t = dino_loss.sinkhorn_knopp_teacher(t_cls, teacher_temp=temp)
                    ibot_t = ibot_loss.sinkhorn_knopp_teacher(
                        t_patch, teacher_temp=temp,
                        n_masked_patches_tensor=batch["n_masked_patches"],
                    )  # fmt: skip
            dino_t = dino_t.view(2, -1, k)
        g = student.backbone(crops, masks=masks, is_training=True)
        loc = student.backbone(batch["collated_local_crops"], is_training=True)
        s_patch = torch.index_select(g["x_norm_patchtokens"].flatten(0, 1), 0, index)
        inputs = [loc["x_norm_clstoken"], g["x_norm_clstoken"], s_patch]
        s_loc, s_glob, s_patch = student.dino_head(torch.cat(inputs)).split(
            [len(x) for x in inputs]
        )
        terms = 2 * local + 2
        total = dino_loss(s_loc.chunk(local), dino_t) / terms
        total = total + dino_loss([s_glob], [dino_t.flatten(0, 1)]) * 2 / terms
        total = total + 0.1 * sum(koleo(p) for p in g["x_norm_clstoken"].chunk(2))
        ibot = ibot_loss.forward_masked(
            s_patch, ibot_t, student_masks_flat=masks, n_masked_patches=n_masked,
            masks_weight=batch["masks_weight"],
        )  # fmt: skip
        return total + ibot * 2 * 0.5

    last_layer = list(student.dino_head.last_layer.parameters())
    kept = []

    def before_step() -> None:  # train.py: clip_grad_norm_(3.0) for each student submodule
        for part in student.values():
            torch.nn.utils.clip_grad_norm_(part.parameters(), 3.0)
        kept[:] = [p.detach().clone() for p in last_layer]

    @torch.no_grad()
    def after_step(step: int, steps: int) -> None:
        for p, before in zip(last_layer, kept, strict=True):  # last_layer_lr 0 in epoch 0
            p.copy_(before)
        m = schedules.CosineScheduler(0.992, 1, steps)[step]  # train.py momentum_schedule
        s_params, t_params = list(student.parameters()), list(teacher.parameters())
        torch._foreach_mul_(t_params, m)  # ssl_meta_arch.py update_teacher
        torch._foreach_add_(t_params, s_params, alpha=1 - m)

    def rename(key: str) -> str:
        for a, b in (("student.", ""), ("teacher.", "teacher_")):
            if key.startswith(a):
                part, rest = key[len(a) :].split(".", 1)
                if rest == "mask_token":
                    return "mask_token" if a == "student." else key
                if part == "backbone":
                    return b + "backbone." + vit_key(rest)
                rest = rest.replace("weight_g", "parametrizations.weight.original0")
                rest = rest.replace("weight_v", "parametrizations.weight.original1")
                return b + "head." + rest
        return {"dino_loss.center": "center", "ibot_loss.center": "patch_center"}[key]

    return Pair(
        official, ours_model, loss, groups=[], rename=rename, built_at=32, views=2 + local,
        sizes=[32, 32, 32, 32], batch=8,
        ignored={"teacher.backbone.mask_token": "the teacher sees no mask (ours has none)"},
        convert={"student.backbone.mask_token": lambda t: t.reshape(1, 1, -1),
                 "dino_loss.center": lambda c: c.reshape(-1),
                 "ibot_loss.center": lambda c: c.reshape(-1)},  # fmt: skip
        prepare=lambda: copy_module(student, teacher),  # prepare_for_distributed_training
        before_step=before_step, after_step=after_step,
        # the centres' updates of the last step, which its next forward would apply first
        finish=lambda: (dino_loss.apply_center_update(), ibot_loss.apply_center_update()),
    )  # fmt: skip


ADAPTERS = {
    "simsiam": Adapter(
        "facebookresearch/simsiam",
        ["simsiam/builder.py (SimSiam)", "main_simsiam.py:293-295 (the loss, reproduced)"],
        ["ResNet-18 in place of ResNet-50 (the builder takes the torchvision constructor)"],
        simsiam,
    ),
    "barlowtwins": Adapter(
        "facebookresearch/barlowtwins",
        ["main.py (BarlowTwins: its forward is the loss, all_reduce included)"],
        [
            "a gloo group (of one process, or --processes) for its torch.distributed.all_reduce",
            "a 256-256-256 projector in place of 8192-8192-8192",
        ],  # fmt: skip
        barlowtwins,
    ),
    "vicreg": Adapter(
        "facebookresearch/vicreg",
        [
            "main_vicreg.py (VICReg: its forward is the loss, FullGatherLayer included)",
            "resnet.py (resnet34)",
        ],  # fmt: skip
        [
            "a gloo group (of one process, or --processes) for its all_gather",
            "ResNet-34 in place of ResNet-50 (its resnet.py has no ResNet-18)",
            "a 256-256-256 expander in place of 8192-8192-8192",
            NO_SYNC_BN,
        ],
        vicreg,
        processes=(1, 2),
    ),
    "dino": Adapter(
        "facebookresearch/dino",
        [
            "main_dino.py (DINOLoss, DINOHead; the step at 318-350 reproduced: clipping, the "
            "cancelled last layer, the teacher's EMA by utils.cosine_scheduler)",
            "utils.py (MultiCropWrapper, clip_gradients, cancel_gradients_last_layer, "
            "cosine_scheduler)",
        ],  # fmt: skip
        [
            "a gloo group (of one process, or --processes) for the center's all_reduce",
            "ResNet-18, an output of 64 in place of 65536",
            "2 global and 2 local crops of one size (one backbone call)",
        ],
        dino,
    ),
    "ijepa": Adapter(
        "facebookresearch/ijepa",
        [
            "src/models/vision_transformer.py (vit_tiny, vit_predictor)",
            "src/masks/multiblock.py (MaskCollator: its masks, fed to ours)",
            "src/masks/utils.py (apply_masks)",
            "src/utils/tensors.py (repeat_interleave_batch)",
            "src/train.py:213,227-229,295-336 (the target copy, the step and the EMA: reproduced)",
        ],
        [
            "ViT-Tiny with 4-px patches at 32 px, a 2-block predictor of 48",
            "ours takes the official collator's masks of each step (methods.ijepa.multiblock_masks "
            "replaced for the loss); our sampler, run from the same random state with the block "
            "sizes the collator drew from its own generator, is compared with those masks",
            "one process: the loss's AllReduce is the identity",
        ],
        ijepa,
    ),
    "mae": Adapter(
        "facebookresearch/mae",
        [
            "models_mae.py (MaskedAutoencoderViT: its forward is the loss)",
            "util/pos_embed.py (its fixed sin-cos positions)",
        ],  # fmt: skip
        [
            "timm's Block without the qk_scale argument it dropped (None in the official calls)",
            "ViT-Tiny at 32 px (4-px patches), a one-block decoder of 64",
            "the same masking noise: the global generator seeded alike before each forward",
        ],
        mae,
    ),
    "dino_vit": Adapter(
        "facebookresearch/dino",
        [
            "vision_transformer.py (vit_tiny, interpolate_pos_encoding)",
            "main_dino.py and utils.py as for dino",
        ],  # fmt: skip
        [
            "a gloo group (of one process, or --processes) for the center's all_reduce",
            "ViT-Tiny with 4-px patches "
            "at 32 px, 2 global crops of 32 px and 2 local ones of 16 px",
            "drop path 0 on both sides (its draws are random)",
            "an output of 64 in place of 65536",
        ],
        dino_vit,
    ),
    "mocov2": Adapter(
        "facebookresearch/moco",
        [
            "moco/builder.py (MoCo, mlp=True: MoCo v2)",
            "main_moco.py:417-418 (the loss, reproduced)",
        ],  # fmt: skip
        [
            "a gloo group (of one process, or --processes) for its gathers and broadcast",
            "Tensor.cuda() as the identity on the CPU",
            "ResNet-18 in place of ResNet-50, a queue of 64",
            "in one process ours with --shuffle_bn false: there the official batch shuffle "
            "leaves BatchNorm over the whole key batch (in two, ours shuffles as the official)",
            "the key encoder's update its next forward makes first, applied after the last step",
        ],  # fmt: skip
        mocov2,
        processes=(1, 2),
    ),
    "mocov3": Adapter(
        "facebookresearch/moco-v3",
        [
            "moco/builder.py (MoCo_ResNet)",
            "main_moco.py:185,344-353,431-434 (the encoder, the "
            "step's cosine momentum: reproduced)",
        ],  # fmt: skip
        [
            "a gloo group (of one process, or --processes) for its all_gather",
            "Tensor.cuda() as the identity on the CPU",
            "ResNet-18 in place of ResNet-50, a 128-64 head in place of 4096-256",
            "the momentum's cosine over the check's steps (its epochs x iterations)",
        ],
        mocov3,
    ),
    "swav": Adapter(
        "facebookresearch/swav",
        [
            "src/resnet50.py (resnet50 with its projection head and prototypes)",
            "main_swav.py (distributed_sinkhorn; the step at 277-315 reproduced: the prototypes "
            "normalised first, the queue, the codes, the loss)",
        ],  # fmt: skip
        [
            "a gloo group (of one process, or --processes) for the Sinkhorn's all_reduce",
            "Tensor.cuda() as the identity on the CPU",
            "a stand-in module for apex (imported at the top of "
            "main_swav.py for fp16 and LARC, neither of which the check runs)",
            "a 64-32 head, 16 "
            "prototypes, a queue of 16 used from the third step (when full), prototypes not frozen",
            "2 crops for the codes and 2 more of the same size",
        ],
        swav,
    ),
    "mocov3_vit": Adapter(
        "facebookresearch/moco-v3",
        [
            "vits.py (VisionTransformerMoCo, over timm's VisionTransformer)",
            "moco/builder.py (MoCo_ViT)",
            "main_moco.py:344-353,431-434 (the step's cosine momentum: reproduced)",
        ],  # fmt: skip
        [
            "a gloo group (of one process, or --processes) for its all_gather",
            "Tensor.cuda() as the identity on the CPU",
            "ViT-Small with 4-px patches at 32 px (vit_small's 16 px at 224), 12 heads, "
            "stop_grad_conv1 as main_moco.py sets it for ViTs",
            "a 64-32 head in place of 4096-256",
            "the momentum's cosine over the check's steps",
        ],
        mocov3_vit,
    ),
    "supcon": Adapter(
        "HobbitLong/SupContrast",
        [
            "networks/resnet_big.py (SupConResNet, resnet18)",
            "losses.py (SupConLoss)",
            "main_supcon.py:205-223 (both views in one forward, the loss: reproduced)",
        ],
        ["its CIFAR ResNet-18 beside ours built at 32 px (the small-image stem)"],
        supcon,
    ),
    "lejepa": Adapter(
        "rbalestr-lab/lejepa",
        [
            "lejepa/univariate/epps_pulley.py (EppsPulley)",
            "lejepa/multivariate/slicing.py (SlicingUnivariateTest)",
            "MINIMAL.md (the model and the loss of its training step: reproduced)",
        ],
        [
            "its directions drawn as it draws them (float32 randn from its step-seeded "
            "generator) and cast to float64 for the product; its quadrature's constants built "
            "in float64 where it writes float32",
            "torchvision's ResNet-18 in place of MINIMAL.md's timm ViT-S/8 (the README: any "
            "backbone), without a 512-d head (ResNet-18's features are 512-d); a 64-64-16 MLP",
            "2 views, both global (MINIMAL.md's views are all global)",
        ],
        lejepa,
    ),
    "simmim": Adapter(
        "microsoft/SimMIM",
        [
            "models/simmim.py (SimMIM, VisionTransformerForSimMIM; its forward is the loss)",
            "models/vision_transformer.py (its BEiT-style ViT)",
            "data/data_simmim.py (MaskGenerator)",
        ],
        [
            "ViT-Tiny with 4-px patches at 32 px, mask patches of 8 px; its ViT with absolute "
            "positions, no LayerScale and no relative position bias (its ViT-B config's "
            "init_values 0.1 and shared relative bias have no counterpart here)",
            "its q and v biases joined into our in_proj_bias with a zero k bias (its "
            "qkv_bias: the k bias, which no output depends on, is zero)",
            "ours takes the official MaskGenerator's masks of each step "
            "(methods.simmim.simmim_masks replaced for the check)",
            "a stand-in for timm's removed data.transforms._pil_interp (imported by "
            "data/data_finetune.py through data/__init__.py, never called)",
        ],
        simmim,
    ),
    "dinov2": Adapter(
        "facebookresearch/dinov2",
        [
            "dinov2/models/vision_transformer.py (DinoVisionTransformer, LayerScale, registers)",
            "dinov2/layers (DINOHead, MemEffAttention without xFormers)",
            "dinov2/loss (DINOLoss, iBOTPatchLoss, KoLeoLoss)",
            "dinov2/data/masking.py (MaskingGenerator), dinov2/data/collate.py "
            "(collate_data_and_cast: the masks and their weights)",
            "dinov2/train/ssl_meta_arch.py forward_backward (re-stated: the class "
            "needs xFormers and CUDA), train/train.py (clipping per student part, last-layer lr "
            "0 in the first epoch, the momentum's CosineScheduler, update_teacher)",
        ],
        [
            "a gloo group of one process for its all_reduces",
            "ViT-Tiny sizes with 4-px patches at 32 px, LayerScale 1e-5, 4 registers; 2 global "
            "crops and 2 local ones, all of 32 px (its interpolation of the position embeddings "
            "for other sizes runs in float32: pos_embed.float(); ours is compared in float64 "
            "with DINO's, dino_vit); a 128-32-64 head in place of 2048-256-65536",
            "drop path 0 on both sides (its draws are random)",
            "the student's global and local crops in two backbone calls (its list call needs "
            "xFormers' nested tensors; the same computation)",
            "the last layer's lr 0 of the first epoch as its weights put back after the "
            "check's SGD step (the momentum buffers see its gradients, as under lr 0)",
            "Python's random state restored after its collate, so that ours draws the same masks",
            "its Sinkhorn-Knopp in float64 (Tensor.float() the identity during the call: its "
            "codes are float32, whose last bit flips where the float64 logits of the two sides "
            "differ in their last bits; both are float32 under mixed precision)",
        ],
        dinov2,
    ),
}
