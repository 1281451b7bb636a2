"""Augmentation pipelines: SimCLR's two views, linear-evaluation training, and the eval transform.

Each pipeline is a small class with keyword-only arguments whose `__call__` delegates to a built
`Compose`, so a method states its recipe in one line and the code reads like the paper's appendix.
"""

from collections.abc import Callable

from PIL import Image
from torchvision import transforms as T

# Blur needs a few pixels of kernel to mean anything; SimCLR drops it for CIFAR-sized images.
BLUR_MIN_SIZE = 64


class SimCLRView:
    """One SimCLR view (Chen et al. 2020, appendix A): random resized crop, horizontal flip,
    colour jitter (p=0.8, strength s: 0.8s brightness/contrast/saturation, 0.2s hue),
    grayscale (p=0.2), Gaussian blur (p=0.5, only for images larger than 64 px), normalise."""

    def __init__(
        self,
        *,
        image_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        crop_min_scale: float = 0.08,
        jitter_strength: float = 0.5,
        blur_prob: float = 0.5,
    ) -> None:
        s = jitter_strength
        steps = [
            T.RandomResizedCrop(image_size, scale=(crop_min_scale, 1.0)),
            T.RandomHorizontalFlip(),
            T.RandomApply([T.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=0.8),
            T.RandomGrayscale(p=0.2),
        ]
        if image_size > BLUR_MIN_SIZE and blur_prob > 0:
            kernel = int(0.1 * image_size) // 2 * 2 + 1  # 10% of the side, odd
            steps.append(T.RandomApply([T.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=blur_prob))
        steps += [T.ToTensor(), T.Normalize(mean, std)]
        self.transform = T.Compose(steps)

    def __call__(self, image: Image.Image):
        return self.transform(image)


class MultiView:
    """Applies one transform per view and returns the list of views of one image."""

    def __init__(self, view_transforms: list[Callable]) -> None:
        self.view_transforms = view_transforms

    def __call__(self, image: Image.Image) -> list:
        return [t(image) for t in self.view_transforms]

    def __repr__(self) -> str:
        return f"MultiView({self.view_transforms!r})"


def simclr_transform(*, image_size: int, mean, std, **view_kwargs) -> MultiView:
    """SimCLR's symmetric recipe: two views drawn from the same distribution."""
    view = SimCLRView(image_size=image_size, mean=mean, std=std, **view_kwargs)
    return MultiView([view, view])


def eval_transform(*, image_size: int, native_size: int, mean, std) -> T.Compose:
    """Resize (and centre crop at ImageNet sizes, with the usual 0.875 ratio), normalise."""
    if image_size <= BLUR_MIN_SIZE or image_size == native_size:
        resize = [T.Resize(image_size), T.CenterCrop(image_size)]
    else:
        resize = [T.Resize(round(image_size / 0.875)), T.CenterCrop(image_size)]
    return T.Compose([*resize, T.ToTensor(), T.Normalize(mean, std)])


def linear_train_transform(*, image_size: int, mean, std) -> T.Compose:
    """The standard linear-probe augmentation: padded random crop + flip for small images,
    random resized crop + flip at ImageNet sizes."""
    if image_size <= BLUR_MIN_SIZE:
        crop = [T.Resize(image_size), T.RandomCrop(image_size, padding=image_size // 8)]
    else:
        crop = [T.RandomResizedCrop(image_size)]
    return T.Compose([*crop, T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])
