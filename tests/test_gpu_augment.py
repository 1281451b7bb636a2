"""--gpu_augment: BatchViews draws each recipe's views for a whole uint8 batch with kornia, with
the sizes, the per-image randomness and the statistics of the PIL views."""

import json
import os

import pytest
import torch
from PIL import Image
from test_reliability import assert_same_weights, run, stop_at_call, weights

import main
from transformations import PRETRAIN_TRANSFORMS, BatchViews, MultiView, View, pretrain_transform
from utils.data import InMemory
from utils.synthetic import SyntheticShapes, make_synthetic

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def uint8_batch(n: int, image_size: int = 32) -> torch.Tensor:
    images, _ = make_synthetic(10, image_size=image_size)
    return torch.from_numpy(images).permute(0, 3, 1, 2).repeat(n // 10 + 1, 1, 1, 1)[:n]


@pytest.mark.parametrize("recipe", sorted(PRETRAIN_TRANSFORMS))
def test_batch_views_have_the_sizes_of_the_pil_views(recipe):
    views = pretrain_transform(recipe, image_size=32, mean=MEAN, std=STD)
    pil_views = views(Image.fromarray(make_synthetic(10)[0][0]))
    batch_views = BatchViews(views)(uint8_batch(6))
    assert [v.shape for v in batch_views] == [(6, *v.shape) for v in pil_views]
    assert all(v.dtype == torch.float32 for v in batch_views)


def test_a_view_without_colour_changes_is_the_normalised_image_or_its_mirror():
    view = View(image_size=16, mean=MEAN, std=STD, crop_scale=(1, 1), jitter_prob=0, gray_prob=0)
    images = uint8_batch(64, image_size=16)
    torch.manual_seed(0)
    out = BatchViews(MultiView([view]))(images)[0]
    mean, std = torch.tensor(MEAN)[:, None, None], torch.tensor(STD)[:, None, None]
    normalised = (images.float() / 255 - mean) / std
    same = (out - normalised).abs().amax((1, 2, 3)) < 1e-4
    mirrored = (out - normalised.flip(-1)).abs().amax((1, 2, 3)) < 1e-4
    assert (same | mirrored).all()
    assert 10 < same.sum() < 54  # flipped with p = 1/2


def test_each_image_of_a_batch_gets_its_own_view():
    images = uint8_batch(1).repeat(32, 1, 1, 1)
    views = BatchViews(pretrain_transform("simclr", image_size=32, mean=MEAN, std=STD))(images)
    flat = views[0].flatten(1)
    assert torch.cdist(flat, flat).fill_diagonal_(1.0).min() > 0
    assert not torch.equal(views[0], views[1])


@pytest.mark.parametrize(("recipe", "view"), [("simclr", 0), ("byol", 1)])
def test_batch_views_follow_the_distribution_of_the_pil_views(recipe, view):
    """Over 600 views of one image: mean colour, its spread, contrast and the grayscale share
    (p=0.2) agree with the PIL pipeline's (BYOL's second view also solarises with p=0.2)."""
    n = 600
    views = pretrain_transform(recipe, image_size=32, mean=MEAN, std=STD)
    image = uint8_batch(1)
    torch.manual_seed(0)
    fast = BatchViews(views)(image.repeat(n, 1, 1, 1))[view]
    pil = Image.fromarray(image[0].permute(1, 2, 0).numpy())
    slow = torch.stack([views.view_transforms[view](pil) for _ in range(n)])
    means_fast, means_slow = fast.mean((2, 3)), slow.mean((2, 3))
    assert torch.allclose(means_fast.mean(0), means_slow.mean(0), atol=0.15)
    assert torch.allclose(means_fast.std(0), means_slow.std(0), rtol=0.15)
    assert torch.allclose(fast.std((2, 3)).mean(0), slow.std((2, 3)).mean(0), rtol=0.15)
    for v in (fast, slow):
        pixels = v * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None]
        gray = ((pixels[:, 0] - pixels[:, 1]).abs().amax((1, 2)) < 1e-3).float().mean()
        assert abs(gray - 0.2) < 0.05


def test_raw_in_memory_items_are_the_uint8_images():
    dataset = SyntheticShapes(train=False, num_images=20)
    raw = InMemory(dataset, raw=True)
    image, label = raw[3]
    assert image.dtype == torch.uint8 and image.shape == (3, 32, 32)
    assert torch.equal(image.permute(1, 2, 0), torch.from_numpy(dataset.data[3]))
    assert label == dataset.targets[3]


def test_main_pretrains_with_views_drawn_by_batch(run_dirs):
    args = main.get_args_parser().parse_args(
        [
            *run_dirs,
            *("--dataset_name", "synthetic", "--backbone", "small_cnn", "--image_size", "16"),
            *("--device", "cpu", "--num_workers", "0", "--limit", "96", "--batch_size", "32"),
            *("--model_name", "swav", "--num_crops", "2", "--num_epochs", "1", "--gpu_augment"),
            *("--run_name", "gpu_augment"),
        ]
    )
    main.main(args)
    with open(os.path.join(args.logs_dir, "gpu_augment", "summary.json")) as f:
        summary = json.load(f)
    assert summary["steps"] == 3
    assert 0 < summary["loss"] < 100


def test_a_stopped_and_resumed_run_draws_the_views_of_a_straight_run(run_dirs, monkeypatch):
    """The views come from the process's random state, which checkpoints keep."""
    straight = weights(run(run_dirs, "straight", "--gpu_augment")["ckpt_dir"])
    stop_at_call(monkeypatch, 3)  # mid-epoch
    with pytest.raises(SystemExit):
        run(run_dirs, "stopped", "--gpu_augment")
    monkeypatch.undo()
    resumed = run(run_dirs, "stopped", "--gpu_augment", "--resume", "auto")
    assert_same_weights(weights(resumed["ckpt_dir"]), straight)


def test_views_above_64_px_are_blurred_as_the_recipe_says():
    """At ImageNet-like sizes the views blur (p=1 here, sigma drawn from 0.1-2): less
    pixel-to-pixel variation than the image itself, with nothing else random but the flip."""
    plain = View(image_size=96, mean=MEAN, std=STD, crop_scale=(1, 1), jitter_prob=0, gray_prob=0)
    blurring = View(**{**plain.options, "blur_prob": 1.0})
    images = torch.nn.functional.interpolate(uint8_batch(16).float(), size=96).to(torch.uint8)
    torch.manual_seed(0)
    same, blurred = BatchViews(MultiView([plain, blurring]))(images)
    assert same.shape == blurred.shape == (16, 3, 96, 96)
    variation = lambda x: (x[..., 1:] - x[..., :-1]).abs().mean()  # noqa: E731
    assert variation(blurred) < 0.9 * variation(same)


@pytest.mark.parametrize(
    "method, flags, expected",
    [("mae", [], "bicubic"), ("simclr", [], "bicubic"), ("ijepa", [], "bilinear"),
     ("mae", ["--interpolation", "bilinear"], "bilinear")],
)  # fmt: skip
def test_images_are_squared_with_the_views_resampling(method, flags, expected, monkeypatch):
    """--gpu_augment squares images of several sizes with the resampling of the views' crops,
    wherever it comes from: a flag, the method's view_options or its recipe's default (MAE's)."""
    seen = {}
    monkeypatch.setattr(main, "in_memory", lambda dataset, *a, **kw: seen.update(kw) or dataset)
    argv = ["--model_name", method, "--dataset_name", "synthetic", "--gpu_augment", *flags]
    main.training_set(main.get_args_parser().parse_args(argv))
    assert seen["raw"] and seen["interpolation"] == expected
