"""Augmentation pipelines: each method's pretraining views (SimCLR's symmetric pair, BYOL's
asymmetric pair, SwAV's multi-crop), linear-evaluation training, and the eval transform.

Each pipeline is a small class with keyword-only arguments whose `__call__` delegates to a built
`Compose`, so a method states its recipe in one line and the code reads like the paper's appendix.
"""

from collections.abc import Callable

import torch
from PIL import Image
from torch import Tensor, nn
from torchvision import transforms as T

from utils.misc import given_kwargs

# Blur needs a few pixels of kernel to mean anything; SimCLR drops it for CIFAR-sized images.
BLUR_MIN_SIZE = 64


# PIL's GaussianBlur(radius=sigma), which the FAIR codes use (SwAV, DINO, MoCo, SimSiam, Barlow
# Twins, VICReg), has no kernel size: it reaches about 3 sigma at any crop size, so 13 px at the
# largest sigma, 2. SimCLR's and BYOL's kernel is 10 % of the side instead (blur_kernel_size).
PIL_BLUR_KERNEL = 13


def blur_kernel_size(image_size: int) -> int:
    """10 % of the side, odd (SimCLR's appendix)."""
    return int(0.1 * image_size) // 2 * 2 + 1


class View:
    """One random view, in the order of the papers' appendices: random resized crop (bilinear,
    torchvision's default, or bicubic: each method's official choice, its `view_options`),
    horizontal flip with probability `flip_prob`, colour jitter (brightness, contrast,
    saturation, hue) with probability `jitter_prob`, grayscale, Gaussian blur (only for images
    larger than 64 px), solarisation, normalisation; steps of probability 0 are left out."""

    def __init__(
        self,
        *,
        image_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        crop_scale: tuple[float, float] = (0.08, 1.0),
        jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1),
        jitter_prob: float = 0.8,
        gray_prob: float = 0.2,
        blur_prob: float = 0.0,
        blur_kernel: int | None = None,
        solarize_prob: float = 0.0,
        flip_prob: float = 0.5,
        interpolation: str = "bilinear",
    ) -> None:
        blur_prob = blur_prob if image_size > BLUR_MIN_SIZE else 0.0  # see BLUR_MIN_SIZE
        blur_kernel = blur_kernel or blur_kernel_size(image_size)
        # the recipe itself, from which BatchViews builds the same view on the GPU (--gpu_augment)
        self.options = dict(
            image_size=image_size,
            mean=mean,
            std=std,
            crop_scale=crop_scale,
            jitter=jitter,
            jitter_prob=jitter_prob,
            gray_prob=gray_prob,
            blur_prob=blur_prob,
            blur_kernel=blur_kernel,
            solarize_prob=solarize_prob,
            flip_prob=flip_prob,
            interpolation=interpolation,
        )
        mode = T.InterpolationMode(interpolation)
        steps = [T.RandomResizedCrop(image_size, scale=crop_scale, interpolation=mode)]
        if flip_prob > 0:
            steps.append(T.RandomHorizontalFlip(p=flip_prob))
        if jitter_prob > 0:
            steps.append(T.RandomApply([T.ColorJitter(*jitter)], p=jitter_prob))
        if gray_prob > 0:
            steps.append(T.RandomGrayscale(p=gray_prob))
        if blur_prob > 0:
            blur = T.GaussianBlur(blur_kernel, sigma=(0.1, 2.0))
            steps.append(T.RandomApply([blur], p=blur_prob))
        if solarize_prob > 0:
            steps.append(T.RandomSolarize(threshold=128, p=solarize_prob))  # on PIL uint8
        steps += [T.ToTensor(), T.Normalize(mean, std)]
        self.transform = T.Compose(steps)

    def __call__(self, image: Image.Image):
        return self.transform(image)

    def __repr__(self) -> str:
        return repr(self.transform)


class MultiView:
    """Applies one transform per view and returns the list of views of one image."""

    def __init__(self, view_transforms: list[Callable]) -> None:
        self.view_transforms = view_transforms

    def __call__(self, image: Image.Image) -> list:
        return [t(image) for t in self.view_transforms]

    def __repr__(self) -> str:
        return f"MultiView({self.view_transforms!r})"


class BatchViews(nn.Module):
    """The views of a MultiView recipe drawn for a whole batch at once, on the batch's device
    (`--gpu_augment`), with kornia: uint8 images [B, 3, H, W] in, one normalised float tensor
    [B, 3, s, s] per view out. Every image gets its own random crop, flip, jitter, grayscale,
    blur and solarisation, with the probabilities and ranges of its `View`. Two differences from
    the PIL path: the four colour adjustments run in one random order per batch (torchvision: per
    image), and crops are resampled (bilinearly, or bicubically for MAE) by one batched affine
    warp, without antialiasing."""

    def __init__(self, views: MultiView) -> None:
        super().__init__()
        self.views = nn.ModuleList(batch_view(**view.options) for view in views.view_transforms)

    @torch.no_grad()
    def forward(self, images: Tensor) -> list[Tensor]:
        images = images.float().div_(255)
        return [view(images) for view in self.views]


def batch_view(
    *,
    image_size,
    mean,
    std,
    crop_scale,
    jitter,
    jitter_prob,
    gray_prob,
    blur_prob,
    blur_kernel,
    solarize_prob,
    flip_prob,
    interpolation,
) -> nn.Module:
    """One `View` as a kornia pipeline on float images in [0, 1]."""
    import kornia.augmentation as K  # only --gpu_augment needs it, and importing it takes seconds

    size = (image_size, image_size)
    resample = interpolation.upper()
    crop = K.RandomResizedCrop(size, scale=crop_scale, resample=resample, cropping_mode="resample")
    steps = [crop]
    if flip_prob > 0:
        steps.append(K.RandomHorizontalFlip(p=flip_prob))
    if jitter_prob > 0:
        steps.append(K.ColorJitter(*jitter, p=jitter_prob))
    if gray_prob > 0:
        steps.append(K.RandomGrayscale(p=gray_prob))
    if blur_prob > 0:
        steps.append(K.RandomGaussianBlur(blur_kernel, sigma=(0.1, 2.0), p=blur_prob))
    if solarize_prob > 0:  # a fixed threshold of one half, as torchvision's 128 on uint8
        steps.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=solarize_prob))
    steps.append(K.Normalize(torch.tensor(mean), torch.tensor(std)))
    return K.AugmentationSequential(*steps)


def simclr_jitter(strength: float) -> tuple[float, float, float, float]:
    """SimCLR's colour distortion of strength s: 0.8s brightness, contrast, saturation; 0.2s hue."""
    return (0.8 * strength, 0.8 * strength, 0.8 * strength, 0.2 * strength)


def simclr_transform(
    *, image_size: int, mean, std, crop_min_scale: float = 0.08, jitter_strength: float = 0.5,
    interpolation: str = "bilinear", blur_prob: float = 0.5,
) -> MultiView:  # fmt: skip
    """SimCLR (Chen et al. 2020, appendix A), symmetric: two views from one distribution with
    blur p=0.5 (above 64 px). Jitter strength 0.5 is the paper's CIFAR choice (1.0 on ImageNet).
    SupCon (no blur: `blur_prob` 0, its view_options) and SimSiam use the same views."""
    view = View(
        image_size=image_size,
        mean=mean,
        std=std,
        crop_scale=(crop_min_scale, 1.0),
        jitter=simclr_jitter(jitter_strength),
        blur_prob=blur_prob,
        interpolation=interpolation,
    )
    return MultiView([view, view])


def byol_transform(
    *, image_size: int, mean, std, crop_min_scale: float = 0.08, jitter_strength: float = 1.0,
    interpolation: str = "bilinear",
) -> MultiView:  # fmt: skip
    """BYOL (Grill et al. 2020, table 6), asymmetric: jitter (0.4, 0.4, 0.2, 0.1) x strength with
    p=0.8, grayscale p=0.2; the first view always blurred and never solarised, the second blurred
    with p=0.1 and solarised with p=0.2. Barlow Twins and VICReg use the same views."""
    common = dict(
        image_size=image_size,
        mean=mean,
        std=std,
        crop_scale=(crop_min_scale, 1.0),
        jitter=tuple(jitter_strength * x for x in (0.4, 0.4, 0.2, 0.1)),
        interpolation=interpolation,
    )
    return MultiView(
        [
            View(**common, blur_prob=1.0, solarize_prob=0.0),
            View(**common, blur_prob=0.1, solarize_prob=0.2),
        ]
    )


def small_crop_size_for(image_size: int) -> int:
    """SwAV's 96 px low-resolution crops for 224 px images, scaled; at least 8 px, which the
    smallest backbones still reduce to a feature map."""
    return max(8, round(image_size * 96 / 224))


def multicrop_transform(
    *,
    image_size: int,
    mean,
    std,
    crop_min_scale: float = 0.14,
    jitter_strength: float = 1.0,
    num_crops: int = 6,
    small_crop_size: int | None = None,
    small_crop_scale: tuple[float, float] = (0.05, 0.14),
    interpolation: str = "bilinear",
) -> MultiView:
    """SwAV's multi-crop (Caron et al. 2020, section 3.2; facebookresearch/swav
    src/multicropdataset.py): two high-resolution crops covering 14-100 % of the image, then
    `num_crops` low-resolution crops of 5-14 %, all with SimCLR's colour distortion at strength 1
    (`get_color_distortion(s=1.0)`: jitter (0.8, 0.8, 0.8, 0.2) with p=0.8, grayscale p=0.2) and
    PIL's Gaussian blur with p=0.5. The two high-resolution views come first."""
    small_crop_size = small_crop_size or small_crop_size_for(image_size)
    colour = dict(
        mean=mean,
        std=std,
        jitter=simclr_jitter(jitter_strength),
        blur_prob=0.5,
        blur_kernel=PIL_BLUR_KERNEL,
        interpolation=interpolation,
    )
    high = View(image_size=image_size, crop_scale=(crop_min_scale, 1.0), **colour)
    low = View(image_size=small_crop_size, crop_scale=small_crop_scale, **colour)
    return MultiView([high, high] + [low] * num_crops)


def dino_transform(
    *,
    image_size: int,
    mean,
    std,
    crop_min_scale: float = 0.4,
    jitter_strength: float = 1.0,
    num_crops: int = 8,
    small_crop_size: int | None = None,
    small_crop_scale: tuple[float, float] = (0.05, 0.4),
    interpolation: str = "bilinear",
    blur_kernel: int = PIL_BLUR_KERNEL,
) -> MultiView:
    """DINO's multi-crop (Caron et al. 2021, appendix; facebookresearch/dino DataAugmentationDINO):
    BYOL's colour distortion (jitter (0.4, 0.4, 0.2, 0.1) x strength with p=0.8, grayscale p=0.2)
    and asymmetric global pair (the first always blurred, the second blurred with p=0.1 and
    solarised with p=0.2) on crops of 40-100 % of the image, then `num_crops` local crops of
    5-40 % at the small size, blurred with p=0.5 (PIL's blur, utils.GaussianBlur). The official
    code's default is 8 local crops (the paper's best setting 10). The two global views come
    first."""
    small_crop_size = small_crop_size or small_crop_size_for(image_size)
    jitter = tuple(jitter_strength * x for x in (0.4, 0.4, 0.2, 0.1))
    colour = dict(
        mean=mean, std=std, jitter=jitter, blur_kernel=blur_kernel, interpolation=interpolation
    )
    scale = (crop_min_scale, 1.0)
    first = View(image_size=image_size, crop_scale=scale, blur_prob=1.0, **colour)
    second = View(
        image_size=image_size, crop_scale=scale, blur_prob=0.1, solarize_prob=0.2, **colour
    )
    local = View(image_size=small_crop_size, crop_scale=small_crop_scale, blur_prob=0.5, **colour)
    return MultiView([first, second] + [local] * num_crops)


def dinov2_transform(
    *,
    image_size: int,
    mean,
    std,
    crop_min_scale: float = 0.32,
    jitter_strength: float = 1.0,
    num_crops: int = 8,
    small_crop_size: int | None = None,
    small_crop_scale: tuple[float, float] = (0.05, 0.32),
    interpolation: str = "bilinear",
) -> MultiView:
    """DINOv2's views (facebookresearch/dinov2 data/augmentations.py DataAugmentationDINO,
    configs/ssl_default_config.yaml crops): DINO's, with global crops of 32-100 % and 8 local
    ones of 5-32 %, and torchvision's Gaussian blur with a 9 px kernel (data/transforms.py
    GaussianBlur) in place of PIL's."""
    return dino_transform(
        image_size=image_size, mean=mean, std=std, crop_min_scale=crop_min_scale,
        jitter_strength=jitter_strength, num_crops=num_crops, small_crop_size=small_crop_size,
        small_crop_scale=small_crop_scale, interpolation=interpolation, blur_kernel=9,
    )  # fmt: skip


def single_view(*, image_size: int, mean, std, crop_min_scale: float, **options) -> MultiView:
    """One view without colour or blur: a random resized crop of crop_min_scale-100 % of the
    image, then `options` (a flip by default)."""
    view = View(
        image_size=image_size,
        mean=mean,
        std=std,
        crop_scale=(crop_min_scale, 1.0),
        jitter_prob=0.0,
        gray_prob=0.0,
        **options,
    )
    return MultiView([view])


def mae_transform(
    *, image_size: int, mean, std, crop_min_scale: float = 0.2, interpolation: str = "bicubic"
) -> MultiView:
    """MAE (He et al. 2022, appendix A.1; facebookresearch/mae main_pretrain.py): one view, a
    random resized crop of 20-100 % of the image (bicubic) and a horizontal flip, no colour."""
    return single_view(
        image_size=image_size, mean=mean, std=std, crop_min_scale=crop_min_scale,
        interpolation=interpolation,
    )  # fmt: skip


def ijepa_transform(
    *, image_size: int, mean, std, crop_min_scale: float = 0.3, interpolation: str = "bilinear"
) -> MultiView:
    """I-JEPA (Assran et al. 2023; facebookresearch/ijepa configs/in1k_*.yaml: crop_scale
    [0.3, 1.0], use_horizontal_flip, use_color_distortion and use_gaussian_blur false): one view,
    a random resized crop of 30-100 % of the image and nothing else: no hand-crafted views."""
    return single_view(
        image_size=image_size, mean=mean, std=std, crop_min_scale=crop_min_scale, flip_prob=0.0,
        interpolation=interpolation,
    )  # fmt: skip


def simmim_transform(
    *, image_size: int, mean, std, crop_min_scale: float = 0.67, interpolation: str = "bilinear"
) -> MultiView:
    """SimMIM (Xie et al. 2022; microsoft/SimMIM data/data_simmim.py SimMIMTransform): one view,
    a random resized crop of 67-100 % of the image and a horizontal flip, no colour."""
    return single_view(
        image_size=image_size, mean=mean, std=std, crop_min_scale=crop_min_scale,
        interpolation=interpolation,
    )  # fmt: skip


# method.augmentation -> the pretraining views (see methods.Method)
PRETRAIN_TRANSFORMS: dict[str, Callable[..., MultiView]] = {
    "simclr": simclr_transform,
    "byol": byol_transform,
    "multicrop": multicrop_transform,
    "dino": dino_transform,
    "mae": mae_transform,
    "ijepa": ijepa_transform,
    "simmim": simmim_transform,
    "dinov2": dinov2_transform,
}


def view_builder(recipe: str | Callable[..., MultiView]) -> Callable[..., MultiView]:
    """A method's `augmentation`: a recipe of PRETRAIN_TRANSFORMS by name, or its own function."""
    return PRETRAIN_TRANSFORMS[recipe] if isinstance(recipe, str) else recipe


def recipe_name(recipe: str | Callable[..., MultiView]) -> str:
    """How the logs and tables name a method's views: the recipe's name, or its function's."""
    return recipe if isinstance(recipe, str) else recipe.__name__


def pretrain_transform(
    recipe: str | Callable[..., MultiView], *, image_size: int, mean, std, **options
) -> MultiView:
    """The views of `recipe` (view_builder); options that are None or that the recipe does not
    take (such as `num_crops` for a two-view recipe) are dropped, so the recipe keeps its own
    defaults."""
    build = view_builder(recipe)
    return build(image_size=image_size, mean=mean, std=std, **given_kwargs(build, options))


def eval_transform(
    *, image_size: int, native_size: int, mean, std, interpolation: str = "bilinear"
) -> T.Compose:
    """Resize (and centre crop at ImageNet sizes, with the usual 0.875 ratio), normalise; the
    resize bilinear or bicubic (the method's `eval_interpolation`, main_linear --interpolation)."""
    mode = T.InterpolationMode(interpolation)
    if image_size <= BLUR_MIN_SIZE or image_size == native_size:
        resize = [T.Resize(image_size, mode), T.CenterCrop(image_size)]
    else:
        resize = [T.Resize(round(image_size / 0.875), mode), T.CenterCrop(image_size)]
    return T.Compose([*resize, T.ToTensor(), T.Normalize(mean, std)])


def linear_train_transform(
    *, image_size: int, mean, std, randaugment: int = 0, random_erasing: float = 0.0,
    interpolation: str = "bilinear",
) -> T.Compose:  # fmt: skip
    """The standard linear-probe augmentation: padded random crop + flip for small images,
    random resized crop (bilinear or bicubic) + flip at ImageNet sizes.

    Fine-tuning adds, in the order of timm's `create_transform` (MAE's main_finetune.py: `--aa
    rand-m9-mstd0.5-inc1 --reprob 0.25 --remode pixel`): RandAugment of 2 operations at
    magnitude `randaugment` on timm's 0-10 scale (torchvision's RandAugment with 11 bins, whose
    ops grow in severity with the magnitude as timm's "inc1"; resampling as the crops, as timm
    passes its `interpolation`; unlike timm, no magnitude noise (mstd 0.5), and its op set has
    Identity where timm has Invert and SolarizeAdd; uncovered pixels filled with the mean
    colour, timm's `img_mean`), then random erasing with probability `random_erasing` of a patch
    filled with normal noise per pixel after the normalisation (timm's "pixel" mode; same area
    and aspect ranges)."""
    mode = T.InterpolationMode(interpolation)
    if image_size <= BLUR_MIN_SIZE:
        crop = [T.Resize(image_size, mode), T.RandomCrop(image_size, padding=image_size // 8)]
    else:
        crop = [T.RandomResizedCrop(image_size, interpolation=mode)]
    fill = [round(255 * m) for m in mean]  # timm fills what shears and turns uncover with the mean
    augment = [T.RandAugment(2, randaugment, 11, mode, fill)] if randaugment else []
    erase = [T.RandomErasing(random_erasing, value="random")] if random_erasing else []
    return T.Compose(
        [*crop, T.RandomHorizontalFlip(), *augment, T.ToTensor(), T.Normalize(mean, std), *erase]
    )
