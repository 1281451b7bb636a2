"""Built-in ``synthetic`` data set: 10 procedurally drawn shapes, generated in memory in seconds.

The class of a 32x32 RGB image is a shape drawn at a random position, scale (~35-70 % of the
side), rotation and aspect. Whole batches are rasterised at once: pixel centres are mapped into
each shape's unit frame (inverse translation, rotation, scale), where a signed distance gives an
anti-aliased coverage. Colours are random (with a minimum fg/bg contrast, in luminance too, so
shapes survive grayscale), backgrounds get a gradient and a smooth colour texture, and all pixels
get noise. Colour and brightness, which SSL augmentations remove, so dominate pixel statistics
while the class lives only in the shape: a linear probe on raw pixels stays near chance, a small
CNN learns the task easily. Train and test use independent random streams of the same seed.
"""

import numpy as np
import torch
from PIL import Image

CLASSES: tuple[str, ...] = (
    "disk", "square", "triangle", "ring", "plus",
    "star", "stripes", "hollow_square", "l_shape", "ellipse",
)  # fmt: skip
_SPLITS = {"train": 0, "test": 1}
_CACHE: dict[tuple[str, int, int, int], tuple[np.ndarray, np.ndarray]] = {}
_CHUNK = 500
_LUMA = np.array([0.299, 0.587, 0.114])
# outward normal of a star edge from the tip (1.1, 0) to the notch at radius 0.45, angle pi/5
_STAR_NORMAL = np.array([0.45 * np.sin(np.pi / 5), 1.1 - 0.45 * np.cos(np.pi / 5)])
_STAR_NORMAL /= np.linalg.norm(_STAR_NORMAL)
_TRI_NORMALS = np.stack([np.cos(a := np.pi / 2 + 2 * np.pi / 3 * np.arange(3)), np.sin(a)])


def _box(u: np.ndarray, v: np.ndarray, a: float, b: float, cu: float = 0.0, cv: float = 0.0):
    """Signed distance to an axis-aligned box of half-sides (a, b) centred at (cu, cv)."""
    qu, qv = np.abs(u - cu) - a, np.abs(v - cv) - b
    outside = np.hypot(np.maximum(qu, 0), np.maximum(qv, 0))
    return outside + np.minimum(np.maximum(qu, qv), 0)


def _sdf(name: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Signed distance (unit frame, negative inside) to shape `name`; all span about [-1, 1]."""
    rho = np.hypot(u, v)
    if name == "disk":
        return rho - 1.0
    if name == "square":
        return _box(u, v, 0.85, 0.85)
    if name == "triangle":  # equilateral, circumradius 1.15: the farthest of three edge lines
        return (u[..., None] * _TRI_NORMALS[0] + v[..., None] * _TRI_NORMALS[1]).max(-1) - 0.575
    if name == "ring":
        return np.abs(rho - 0.72) - 0.28
    if name == "plus":
        return np.minimum(_box(u, v, 1.0, 0.24), _box(u, v, 0.24, 1.0))
    if name == "star":  # fold the angle onto half a point: one straight edge tip -> notch
        psi = np.abs(np.mod(np.arctan2(v, u) + np.pi / 5, 2 * np.pi / 5) - np.pi / 5)
        return (rho * np.cos(psi) - 1.1) * _STAR_NORMAL[0] + rho * np.sin(psi) * _STAR_NORMAL[1]
    if name == "stripes":  # three bars inside a square
        return np.maximum(_box(u, v, 0.95, 0.95), np.abs(v - 0.66 * np.round(v / 0.66)) - 0.18)
    if name == "hollow_square":
        return np.maximum(_box(u, v, 0.9, 0.9), -_box(u, v, 0.5, 0.5))
    if name == "l_shape":
        return np.minimum(_box(u, v, 0.27, 0.95, -0.6, 0.0), _box(u, v, 0.9, 0.27, 0.05, 0.68))
    if name == "ellipse":  # approximate distance: scaled implicit function, fine for anti-aliasing
        return (np.hypot(u, v / 0.42) - 1.0) * 0.42
    raise ValueError(f"unknown shape {name!r}")


def _smooth_noise(rng: np.random.Generator, n: int, size: int, cells: int = 5) -> np.ndarray:
    """Low-frequency colour texture [n, size, size, 3]: a coarse random grid, bilinearly resized."""
    pos = np.linspace(0, cells - 1, size)
    hat = np.maximum(0, 1 - np.abs(pos[:, None] - np.arange(cells)))  # linear interpolation weights
    grid = rng.standard_normal((n, cells, cells, 3))
    return np.einsum("hi,nijc,wj->nhwc", hat, grid, hat, optimize=True).astype(np.float32)


def _render(rng: np.random.Generator, labels: np.ndarray, s: int) -> np.ndarray:
    """Draw one image per label as uint8 [n, s, s, 3]."""
    n = len(labels)

    def draw(low, high, shape=()):  # per-image parameters, broadcastable over [n, s, s, ...]
        return rng.uniform(low, high, (n, 1, 1, *shape)).astype(np.float32)

    radius, aspect, theta = draw(0.2, 0.36) * s, draw(0.92, 1.08), draw(0, 2 * np.pi)
    # centres keep most of the shape inside the image
    cx, cy = (draw(-1, 1) * (s / 2 - 0.8 * radius) + s / 2 for _ in range(2))
    ys, xs = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5
    dx, dy, cos, sin = xs - cx, ys - cy, np.cos(theta), np.sin(theta)
    u, v = (cos * dx + sin * dy) / (radius * aspect), (cos * dy - sin * dx) / (radius / aspect)
    dist = np.empty((n, s, s), dtype=np.float32)
    for k, name in enumerate(CLASSES):
        dist[labels == k] = _sdf(name, u[labels == k], v[labels == k])
    # unit-frame distance -> pixels -> one-pixel-wide anti-aliased edge
    alpha = np.clip(0.5 - dist * radius * np.minimum(aspect, 1 / aspect), 0, 1)[..., None]

    # foreground: the first of 16 candidate colours that contrasts with the background enough
    bg = rng.uniform(0, 1, (n, 3))
    candidates = rng.uniform(0, 1, (n, 16, 3))
    contrast = np.abs((candidates - bg[:, None]) @ _LUMA)
    ok = (np.linalg.norm(candidates - bg[:, None], axis=-1) > 0.45) & (contrast > 0.2)
    fg = candidates[np.arange(n), np.where(ok.any(1), ok.argmax(1), contrast.argmax(1))]
    bg2 = np.clip(bg + rng.normal(0, 0.25, (n, 3)), 0, 1)  # far end of the background gradient
    bg, fg, bg2 = (c[:, None, None].astype(np.float32) for c in (bg, fg, bg2))
    phi = draw(0, 2 * np.pi)
    ramp = ((np.cos(phi) * (xs - s / 2) + np.sin(phi) * (ys - s / 2)) / s + 0.5)[..., None]
    back = bg + ramp * (bg2 - bg) + draw(0, 0.12, (1,)) * _smooth_noise(rng, n, s)
    front = fg + draw(0, 0.05, (1,)) * _smooth_noise(rng, n, s)
    img = back + alpha * (front - back)
    img += draw(0.01, 0.06, (1,)) * rng.standard_normal(img.shape, dtype=np.float32)
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def make_synthetic(
    num_images: int, seed: int = 0, split: str = "train", image_size: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """Generate a class-balanced set of shape images.

    Args:
        num_images: how many images; a multiple of 10, so every class gets exactly a tenth.
        seed: data seed; the same (seed, split, image_size) always gives identical arrays.
        split: "train" or "test": independent random streams of the same seed.
        image_size: side of the square images in pixels.

    Returns:
        Images as uint8 [N, H, W, 3] (HWC) and labels as int64 [N], in random class order.
    """
    if num_images <= 0 or num_images % len(CLASSES):
        raise ValueError(f"num_images must be a positive multiple of 10, got {num_images}")
    if split not in _SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    rng = np.random.default_rng([seed, _SPLITS[split]])  # [seed, split]: independent streams
    labels = rng.permutation(np.arange(num_images, dtype=np.int64) % len(CLASSES))
    images = np.empty((num_images, image_size, image_size, 3), dtype=np.uint8)
    # small chunks keep temporaries in reused heap memory: fresh 100 MB arrays cost page faults
    for start in range(0, num_images, _CHUNK):
        images[start : start + _CHUNK] = _render(rng, labels[start : start + _CHUNK], image_size)
    return images, labels


class SyntheticShapes(torch.utils.data.Dataset):
    """The synthetic shapes as a torchvision-CIFAR10-like data set of (image, int label) pairs.

    Args:
        train: the train split (default 10,000 images) or the test split (default 2,000).
        transform: applied to the PIL image, as in torchvision data sets.
        seed: data seed.
        num_images: override the split's default size (a multiple of 10).
    """

    def __init__(
        self, train: bool = True, transform=None, seed: int = 0, num_images: int | None = None
    ) -> None:
        split = "train" if train else "test"
        num_images = num_images or (10_000 if train else 2_000)
        key = (split, seed, num_images, 32)
        if key not in _CACHE:  # generating costs ~a second; repeated construction costs nothing
            _CACHE[key] = make_synthetic(num_images, seed=seed, split=split)
        self.data, labels = _CACHE[key]
        self.targets: list[int] = labels.tolist()
        self.classes: list[str] = list(CLASSES)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        img = Image.fromarray(self.data[index])
        return (self.transform(img) if self.transform else img), self.targets[index]
