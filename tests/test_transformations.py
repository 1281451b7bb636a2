"""Each method's pretraining views: the recipe it names, the number and size of views, and the
asymmetric BYOL pair."""

import pytest
import torch
from torchvision import transforms as T

from methods import METHODS
from transformations import (
    PRETRAIN_TRANSFORMS,
    byol_transform,
    multicrop_transform,
    pretrain_transform,
    small_crop_size_for,
)
from utils.data import DATASETS
from utils.synthetic import SyntheticShapes

INFO = DATASETS["synthetic"]


def steps(view) -> list:
    return view.transform.transforms


def probability_of(view, kind) -> float:
    """p of the RandomApply (or random transform) wrapping `kind` in a view; 0 when absent."""
    for step in steps(view):
        if isinstance(step, T.RandomApply) and isinstance(step.transforms[0], kind):
            return step.p
        if isinstance(step, kind):
            return step.p
    return 0.0


def test_every_method_names_a_known_recipe_and_the_papers_choices():
    # a recipe of PRETRAIN_TRANSFORMS by name, or the method's own function (LeJEPA's)
    assert all(cls.augmentation in PRETRAIN_TRANSFORMS or callable(cls.augmentation)
               for cls in METHODS.values())  # fmt: skip
    recipes = {name: cls.augmentation for name, cls in METHODS.items()}
    assert recipes["byol"] == recipes["barlowtwins"] == recipes["vicreg"] == "byol"
    assert recipes["simclr"] == recipes["supcon"] == recipes["simsiam"] == "simclr"
    assert recipes["swav"] == "multicrop"


def test_byol_views_are_asymmetric():
    first, second = byol_transform(image_size=96, mean=INFO.mean, std=INFO.std).view_transforms
    assert probability_of(first, T.GaussianBlur) == 1.0
    assert probability_of(second, T.GaussianBlur) == 0.1
    assert probability_of(first, T.RandomSolarize) == 0.0
    assert probability_of(second, T.RandomSolarize) == 0.2
    jitter = next(s for s in steps(first) if isinstance(s, T.RandomApply)).transforms[0]
    assert (jitter.brightness, jitter.saturation, jitter.hue) == (
        (0.6, 1.4),
        (0.8, 1.2),
        (-0.1, 0.1),
    )


def test_blur_is_dropped_for_small_images_but_solarisation_is_kept():
    first, second = byol_transform(image_size=32, mean=INFO.mean, std=INFO.std).view_transforms
    assert probability_of(first, T.GaussianBlur) == 0.0
    assert probability_of(second, T.RandomSolarize) == 0.2


def test_multicrop_gives_two_large_then_small_views():
    transform = multicrop_transform(image_size=32, mean=INFO.mean, std=INFO.std, num_crops=3)
    (views, _) = SyntheticShapes(train=True, transform=transform, num_images=10)[0]
    assert [tuple(v.shape) for v in views] == [(3, 32, 32)] * 2 + [(3, 14, 14)] * 3
    high, low = transform.view_transforms[0], transform.view_transforms[2]
    assert steps(high)[0].scale == (0.14, 1.0) and steps(low)[0].scale == (0.05, 0.14)


@pytest.mark.parametrize(("size", "small"), [(224, 96), (32, 14), (16, 8), (8, 8)])
def test_small_crop_size_scales_with_the_image(size, small):
    assert small_crop_size_for(size) == small


def test_pretrain_transform_drops_options_a_recipe_does_not_take():
    simclr = pretrain_transform(
        "simclr", image_size=16, mean=INFO.mean, std=INFO.std, num_crops=4, crop_min_scale=None
    )
    assert len(simclr.view_transforms) == 2
    assert steps(simclr.view_transforms[0])[0].scale == (0.08, 1.0)  # None keeps the default
    swav = pretrain_transform("multicrop", image_size=16, mean=INFO.mean, std=INFO.std, num_crops=0)
    assert len(swav.view_transforms) == 2


def test_views_of_one_image_differ():
    transform = byol_transform(image_size=16, mean=INFO.mean, std=INFO.std)
    (v1, v2), _ = SyntheticShapes(train=True, transform=transform, num_images=10)[0]
    assert v1.shape == v2.shape == (3, 16, 16) and not torch.equal(v1, v2)
