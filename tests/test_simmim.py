"""SimMIM: masks with MaskGenerator's statistics, the L1 loss on masked pixels against a hand
computation, the mask token at the right place for a ViT and a ResNet, the decoder's shape."""

import math

import pytest
import torch

from methods import build_method
from methods.simmim import simmim_loss, simmim_masks, upsample
from networks import build_backbone


def test_masks_hide_ceil_ratio_of_the_mask_patches_of_each_image_uniformly():
    """MaskGenerator: ceil(0.6 x 36) = 22 of a 6 x 6 grid per image, every place equally often."""
    torch.manual_seed(0)
    masks = simmim_masks(4000, 6, 0.6)
    assert masks.shape == (4000, 6, 6)
    assert torch.all(masks.flatten(1).sum(dim=1) == math.ceil(0.6 * 36))
    frequency = masks.mean(dim=0)
    assert torch.allclose(frequency, torch.full((6, 6), 22 / 36), atol=0.03)
    # 32 px mask patches of 16 px model patches: each covers 2 x 2 of the encoder's patches
    grid = upsample(masks[:1], 2)
    assert grid.shape == (1, 12, 12) and torch.equal(grid[0, :2, :2], masks[0, 0, 0].expand(2, 2))


def test_the_loss_is_the_l1_error_on_masked_pixels_per_channel():
    images = torch.zeros(1, 3, 2, 2)
    reconstruction = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]]).expand(1, 3, 2, 2)
    mask = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    # masked pixels (0, 0) and (1, 1): errors 1 and 4 in each of 3 channels, over 2 pixels x 3
    expected = (3 * 1 + 3 * 4) / (2 + 1e-5) / 3
    assert simmim_loss(images, reconstruction, mask).item() == pytest.approx(expected)
    # unmasked pixels do not count, however wrong
    reconstruction = reconstruction.clone()
    reconstruction[..., 0, 1] = 100.0
    assert simmim_loss(images, reconstruction, mask).item() == pytest.approx(expected)


@pytest.mark.parametrize("backbone, size", [("vit_tiny", 32), ("resnet18", 32), ("resnet18", 96)])
def test_the_mask_token_replaces_exactly_the_masked_patches(backbone, size):
    """Where nothing is masked the encoder's output is the plain backbone's (the class token's
    output for a ViT is dropped); masking changes the output; the decoder returns an image."""
    torch.manual_seed(0)
    model = build_method("simmim", *build_backbone(backbone, size)).eval()
    images = torch.randn(2, 3, size, size)
    side = size // model.patch
    nothing = torch.zeros(2, side, side)
    plain = model.encode(images, nothing)
    if backbone.startswith("vit"):
        tokens = model.backbone.forward_tokens(images)[:, 1:]
        assert torch.allclose(plain.flatten(2).transpose(1, 2), tokens, atol=1e-5)
    else:
        net = model.backbone
        x = net.maxpool(net.relu(net.bn1(net.conv1(images))))
        assert torch.allclose(plain, net.layer4(net.layer3(net.layer2(net.layer1(x)))))
    patch_mask, pixel_mask = model.masks(images)
    assert pixel_mask.shape == (2, size, size) and patch_mask.shape == (2, side, side)
    assert not torch.allclose(model.encode(images, patch_mask), plain)
    assert model.decoder(plain).shape == images.shape
    assert {model.stride, model.mask_patch_size} == (
        {4, 8} if backbone.startswith("vit") else {8} if size == 32 else {32}
    )


def test_training_reduces_the_masked_reconstruction_error():
    """A few steps on one batch: the loss falls, and the reconstruction keeps visible pixels."""
    torch.manual_seed(0)
    model = build_method("simmim", *build_backbone("resnet18", 16))
    images = torch.randn(4, 3, 16, 16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(10):
        torch.manual_seed(1)  # the same masks each step
        loss = model([images])["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]
    model.eval()
    masked, reconstructed = model.reconstruct(images)
    shown = masked != 0
    assert torch.equal(reconstructed[shown], images[shown])


def test_other_backbones_are_refused_with_what_to_use():
    with pytest.raises(ValueError, match="SimMIM masks a ViT's patch embeddings or a ResNet"):
        build_method("simmim", *build_backbone("small_cnn", 16))
