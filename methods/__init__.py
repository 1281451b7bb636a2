"""Method registry: `--model_name` -> an nn.Module class that wires backbone, heads and a loss.

A method class subclasses `Method`, takes `(backbone, feat_dim, **hyper_parameters)`, and its
`forward(views, labels=None)` returns a dict with at least "loss". Adding a method means one new
file with `@register("name")` on its class (its hyper-parameters declared in its constructor,
methods/hparams.py; everything else the toolkit needs to know of it in its class attributes,
below) plus one import line below; tests/test_new_method.py does it from a test file.
"""

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from methods.hparams import accepted_flags, hyper_parameters, resolve_aliases
from methods.recipe import Recipe
from networks import zero_init_residual
from utils.misc import UserError, given_kwargs, registrar


class Method(nn.Module):
    """What the training loop (main.py) expects of a method besides `forward`.

    Its hyper-parameters are its constructor's keyword arguments annotated with a
    `methods.hparams.Flag`: the command-line flags and their help come from there.
    Class attributes a method may set (docs/fidelity.md says where each comes from):
      augmentation        its pretraining views: a recipe of `transformations.PRETRAIN_TRANSFORMS`
                          by name, or a function of its own taking the same keywords
                          (image_size, mean, std and the view flags it accepts) and returning
                          a `transformations.MultiView`;
      loss_summary        its loss functions in a few words, for the tables;
      view_options        its own defaults for that recipe (e.g. crop_min_scale 0.2, bicubic
                          crops), which the view flags (--crop_min_scale, ...) override;
      needs_labels        whether it trains on class labels (SupCon): refused on unlabelled data;
      requires_vit        whether it only trains Vision Transformers (MAE, I-JEPA mask patches);
      eval_interpolation  how its official evaluation resizes and crops ("bilinear",
                          torchvision's default, or "bicubic"; main_linear --interpolation);
      pool                a ViT's features for evaluation: None, the class token; "mean", the
                          mean of the patch tokens (I-JEPA, which trains no class token);
      eval_last_blocks    a ViT's linear probe reads its last n blocks, concatenated (DINO: 4);
      eval_momentum_backbone  its evaluation reads the EMA copy of the backbone (DINO's teacher,
                              I-JEPA's target encoder);
      zero_init_residual  whether its official code zero-initialises the last BatchNorm of each
                          residual block (`build_method` applies it; --zero_init_residual);
                          "bottleneck": of Bottleneck blocks only (BYOL's haiku ResNet);
      momentum_backbone   the attribute holding its EMA copy of the backbone (BYOL's and MoCo's
                          target, DINO's teacher), which --momentum_backbone evaluates;
      vit_heads           attention heads its official code gives a ViT of a size, where they
                          differ from the backbone's (MoCo v3's ViT-Small: 12, DeiT-S's 6);
      vit_registers       register tokens its official code gives a ViT (--vit_registers; 0:
                          none; DINOv2's reg4 models: 4);
      vit_layerscale      the initial value of LayerScale on its ViT's blocks (--vit_layerscale;
                          0: none; DINOv2's student: 1e-5);
      init_flags          its hyper-parameters that shape how it initialises the backbone or
                          reads its features, which main_linear.py --random_init takes too
                          (I-JEPA's --rescale_init and --eval_class_token);
      collapse_hint       what usually makes it collapse, for the collapse monitor's warning;
      recipes             its official training recipes (`methods.recipe.Recipe`), one per regime
                          (CIFAR- and ImageNet-size images; convolutional and ViT backbones):
                          optimizer, lr rule, weight decay, schedule, batch, epochs, and the
                          views and hyper-parameters that differ by regime, each with its source;
      slow_start          how many times the short CPU tables' epochs its pretraining takes
                          (scripts/short_recipes.sh): methods without negatives or an explicit
                          variance term (BYOL, SwAV, DINO: 5) first lose kNN accuracy on the
                          synthetic set, and in an 8-epoch schedule end below the random
                          initialisation's.
    The hooks run once per step or epoch; methods with state outside autograd override them (BYOL's
    EMA target, SwAV's prototypes and queue). `param_group` gives a parameter's own optimizer
    options (Barlow Twins' bias lr, SimSiam's fixed predictor lr).
    """

    augmentation: str | Callable = "simclr"
    loss_summary = ""  # its loss functions, for the tables (scripts/methods_table.py)
    view_options: dict = {}
    zero_init_residual: bool | str = False
    needs_labels = False
    pool: str | None = None
    eval_last_blocks = 1
    eval_momentum_backbone = False
    eval_interpolation = "bilinear"
    requires_vit = False
    momentum_backbone: str | None = None
    vit_heads: dict[str, int] = {}
    vit_registers: int = 0
    vit_layerscale: float = 0.0
    init_flags: tuple[str, ...] = ()
    collapse_hint = "too high a --temperature or too small a batch of negatives"
    slow_start = 1
    recipes: tuple[Recipe, ...] = ()
    concat_views = False  # per-view methods: one pass over both views (see `per_view`)
    epoch = 0

    def per_view(self, fn: Callable[[Tensor], Tensor], inputs: Sequence[Tensor]) -> list[Tensor]:
        """`fn` of each input in its own call, so that BatchNorm normalises each view with its own
        statistics, as the official code of the two-view methods without negatives forwards each
        view (SimSiam's builder.py, BYOL, Barlow Twins, VICReg, MoCo); with `concat_views`, one
        call on the concatenation (one pass, BatchNorm statistics over both views)."""
        if self.concat_views:
            return list(fn(torch.cat(list(inputs))).chunk(len(inputs)))
        return [fn(x) for x in inputs]

    def features_by_resolution(self, backbone: nn.Module, crops: Sequence[Tensor]) -> Tensor:
        """Backbone features of all crops, concatenated in order: one backbone call per run of
        consecutive crops of the same size (the multi-crop methods' BatchNorm batches), as the
        official SwAV `resnet50.py` and DINO `MultiCropWrapper` do before one call of the head on
        the whole concatenation."""
        features, start = [], 0
        while start < len(crops):
            end = start + 1
            while end < len(crops) and crops[end].shape[-2:] == crops[start].shape[-2:]:
                end += 1
            features.append(backbone(torch.cat(list(crops[start:end]))))
            start = end
        return torch.cat(features)

    def param_group(self, name: str, param: nn.Parameter) -> dict:
        """Optimizer options of one parameter beyond the defaults: `lr_scale` (a multiplier of the
        scheduled lr) and/or `fix_lr` (keeps the peak lr). Parameters with the same options share
        a group (optimizers.param_groups)."""
        return {}

    def set_epoch(self, epoch: int) -> None:
        """Called before each training epoch (0-based)."""
        self.epoch = epoch

    def set_step(self, step: int, steps_per_epoch: int) -> None:
        """Called before each training step's forward with its global index (0-based), for
        schedules by step (DINOv2's teacher temperature)."""

    def before_optimizer_step(self) -> None:
        """Called after backward, before the optimizer step: gradients may be changed here."""

    def after_optimizer_step(self, step: int, total_steps: int) -> None:
        """Called after optimizer step `step` (0-based) of `total_steps` in the whole run."""


METHODS: dict[str, type[Method]] = {}


register = registrar(METHODS, "method")  # @register("name") on a new one


def build_method(name: str, backbone: nn.Module, feat_dim: int, /, **kwargs) -> nn.Module:
    """Build method `name`; keyword arguments it does not take, or that are None, are dropped,
    so the caller can pass every flag and a method keeps its paper's defaults for unset ones;
    the aliases it declares (methods.hparams) stand for their hyper-parameter. A value the
    method refuses raises its ValueError.

    `zero_init_residual` (default: the method's own) zero-initialises the backbone's last
    residual BatchNorms before the method copies it (EMA targets); never with `pretrained`, whose
    weights it would overwrite."""
    if name not in METHODS:
        raise UserError(f"unknown method {name!r}; choose from {sorted(METHODS)}")
    cls = METHODS[name]
    zero_init = kwargs.get("zero_init_residual")
    zero_init = cls.zero_init_residual if zero_init is None else zero_init
    if zero_init and not kwargs.get("pretrained"):
        zero_init_residual(backbone, bottleneck_only=zero_init == "bottleneck")
    kwargs = given_kwargs(cls, resolve_aliases(cls, kwargs), exclude=("backbone", "feat_dim"))
    return cls(backbone, feat_dim, **kwargs)


def resolved_hparams(model: Method, kwargs: dict) -> dict[str, tuple[object, bool]]:
    """Each hyper-parameter `model` declares, as (value, given): the value given in `kwargs`
    (the flags passed to build_method; aliases under their own name) or the method's default,
    and for a default of None the value the method chose (the attribute of that name it sets,
    e.g. SimCLR's proj_hidden_dim, the backbone's width)."""
    cls = type(model)
    given = given_kwargs(cls, resolve_aliases(cls, kwargs), exclude=("backbone", "feat_dim"))
    found = {}
    for name, hp in hyper_parameters(cls).items():
        value = given.get(name, hp.default)
        if value is None:
            value = getattr(model, name, None)
        found[name] = (value, name in given)
    return found


def method_options(name: str) -> set[str]:
    """The flags method `name` takes: its declared hyper-parameters and their aliases."""
    return accepted_flags(METHODS[name])


from methods import barlowtwins, byol, simclr, simsiam, supcon, swav, vicreg  # noqa: E402,F401  (fills METHODS)

# isort: split
from methods import dino  # noqa: E402,F401

# isort: split
from methods import moco, nnclr  # noqa: E402,F401

# isort: split
from methods import ijepa, mae  # noqa: E402,F401

# isort: split
from methods import dcl, lejepa, simmim  # noqa: E402,F401

# isort: split
from methods import dinov2  # noqa: E402,F401
