"""Image corruptions in the spirit of Hendrycks & Dietterich (ICLR 2019, CIFAR-10-C), written in torch.

Why our own: ``imagecorruptions-imaug`` (the maintained fork of ``imagecorruptions``) installs here
and all 19 corruptions run under numpy 2, but it pulls in opencv-python, scikit-image and numba with
llvmlite (about 350 MB installed), works one image at a time and draws its noise from numpy's
*global* random state, which library code must not reseed. These versions are simplified but of the
same kind; each is one formula below, batched over images and deterministic given a
``torch.Generator``. Severity ``s`` in 1..5 picks the ``s``-th value of each parameter tuple (values
chosen in the ranges of CIFAR-10-C; they are not claimed to reproduce its images). Images are float
``[N, 3, H, W]`` in [0, 1]; every function returns the same shape, clipped to [0, 1].
``g`` is the luminance ``0.299 R + 0.587 G + 0.114 B``; ``blur_s`` a Gaussian blur of std ``s`` pixels;
``noise(r)`` a smooth field (uniform noise on an ``r x r`` grid, bilinearly upsampled).

Type 0 (LfF, Nam et al. 2020): snow, frost, fog, brightness, contrast, spatter, elastic, jpeg, pixelate,
saturate. Type 1: gaussian_noise, shot_noise, impulse_noise, speckle_noise, gaussian_blur, defocus_blur,
glass_blur, motion_blur, zoom_blur, original.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

Corruption = Callable[[torch.Tensor, int, torch.Generator], torch.Tensor]

_LUMA = (0.299, 0.587, 0.114)


def _luma(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(_LUMA, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def _gauss_1d(sigma: float) -> torch.Tensor:
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / max(sigma, 1e-3)) ** 2)
    return k / k.sum()


def _conv_same(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Depthwise 2-D convolution of ``x`` [N, C, H, W] with one kernel [kh, kw], reflect padding."""
    kh, kw = kernel.shape
    c = x.shape[1]
    padded = F.pad(x, (kw // 2, kw // 2, kh // 2, kh // 2), mode="replicate")
    weight = kernel.to(x.dtype).expand(c, 1, kh, kw)
    return F.conv2d(padded, weight, groups=c)


def blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with std ``sigma`` pixels."""
    k = _gauss_1d(sigma)
    return _conv_same(_conv_same(x, k.view(1, -1)), k.view(-1, 1))


def smooth_noise(n: int, size: tuple[int, int], grid: int, gen: torch.Generator) -> torch.Tensor:
    """``[n, 1, H, W]`` uniform noise on a ``grid x grid`` lattice, bilinearly upsampled to ``size``."""
    coarse = torch.rand((n, 1, grid, grid), generator=gen)
    return F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)


def _rescale01(t: torch.Tensor) -> torch.Tensor:
    lo = t.amin(dim=(1, 2, 3), keepdim=True)
    hi = t.amax(dim=(1, 2, 3), keepdim=True)
    return (t - lo) / (hi - lo).clamp_min(1e-6)


# ----------------------------------------------------------------------------------------- type 0
def snow(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    """``a x + (1-a) max(x, 1.5 g + 0.5) + motion_blur(flakes)``, flakes = bright N(0,1) > t."""
    t, a, length = ((2.2, 0.9, 1.0), (2.0, 0.8, 1.5), (1.8, 0.75, 2.0), (1.6, 0.7, 2.5), (1.4, 0.65, 3.0))[s - 1]
    n, _, h, w = x.shape
    flakes = (torch.randn((n, 1, h, w), generator=gen) > t).to(x.dtype)
    flakes = _motion(flakes, length, gen) * 2.0
    base = a * x + (1 - a) * torch.maximum(x, 1.5 * _luma(x) + 0.5)
    return (base + flakes).clamp(0, 1)


def frost(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    """``a x + b ice``, ice = light-blue texture from fine plus coarse noise (no frost photographs)."""
    a, b = ((1.0, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75))[s - 1]
    n, _, h, w = x.shape
    fine = blur(torch.rand((n, 1, h, w), generator=gen), 0.7)
    ice = _rescale01(0.6 * fine + 0.4 * smooth_noise(n, (h, w), 4, gen)) ** 2
    tint = torch.tensor((0.85, 0.92, 1.0), dtype=x.dtype).view(1, 3, 1, 1)
    return (a * x + b * ice * tint).clamp(0, 1)


def fog(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    """``(x + c f) max(x) / (max(x) + c)``, f a fractal noise (octaves 2^o with amplitude decay^o)."""
    c, decay = ((0.2, 0.45), (0.5, 0.45), (0.75, 0.5), (1.0, 0.55), (1.5, 0.6))[s - 1]
    n, _, h, w = x.shape
    f = sum(decay**o * smooth_noise(n, (h, w), 2 ** (o + 1), gen) for o in range(4))
    f = _rescale01(f)
    peak = x.amax(dim=(1, 2, 3), keepdim=True)
    return ((x + c * f) * peak / (peak + c)).clamp(0, 1)


def brightness(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    """``x + c`` (CIFAR-10-C adds c to the HSV value channel; here to R, G and B)."""
    c = (0.1, 0.2, 0.3, 0.4, 0.5)[s - 1]
    return (x + c).clamp(0, 1)


def contrast(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    """``(x - m) c + m`` with ``m`` the image's mean."""
    c = (0.75, 0.5, 0.4, 0.3, 0.15)[s - 1]
    m = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - m) * c + m).clamp(0, 1)


def spatter(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    """``x (1 - a m) + a m mud``, m = blobs where blurred noise exceeds a threshold."""
    t, a = ((0.68, 0.6), (0.64, 0.65), (0.6, 0.7), (0.57, 0.75), (0.54, 0.8))[s - 1]
    n, _, h, w = x.shape
    field = _rescale01(blur(torch.rand((n, 1, h, w), generator=gen), 1.5))
    m = ((field - t) / 0.05).clamp(0, 1)
    mud = torch.tensor((0.25, 0.16, 0.08), dtype=x.dtype).view(1, 3, 1, 1)
    return (x * (1 - a * m) + a * m * mud).clamp(0, 1)


def elastic(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    """``x(p + alpha d(p))``, d a Gaussian-smoothed random field of unit std per image (bilinear)."""
    alpha, sigma = ((0.6, 2.0), (0.9, 2.0), (1.2, 1.8), (1.5, 1.6), (2.0, 1.5))[s - 1]
    n, _, h, w = x.shape
    d = blur(torch.rand((n, 2, h, w), generator=gen) * 2 - 1, sigma)
    d = d / d.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6) * alpha
    ys, xs = torch.meshgrid(torch.arange(h, dtype=x.dtype), torch.arange(w, dtype=x.dtype), indexing="ij")
    gx = (xs + d[:, 0]) / max(w - 1, 1) * 2 - 1
    gy = (ys + d[:, 1]) / max(h - 1, 1) * 2 - 1
    grid = torch.stack([gx, gy], dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=True).clamp(0, 1)


def jpeg(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    """Encode and decode as JPEG with quality q (Pillow; deterministic)."""
    from PIL import Image

    q = (80, 65, 58, 50, 40)[s - 1]
    arrays = (x.permute(0, 2, 3, 1).mul(255).round().clamp(0, 255).to(torch.uint8)).numpy()
    out = np.empty_like(arrays)
    for i, img in enumerate(arrays):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=q)
        buf.seek(0)
        out[i] = np.asarray(Image.open(buf).convert("RGB"))
    return torch.from_numpy(out).permute(0, 3, 1, 2).to(x.dtype).div(255)


def pixelate(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    """Box-downsample to ``c`` of the size, then nearest-upsample back."""
    c = (0.9, 0.8, 0.7, 0.6, 0.5)[s - 1]
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(max(1, round(h * c)), max(1, round(w * c))), mode="area")
    return F.interpolate(small, size=(h, w), mode="nearest")


def saturate(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    """``g + k (x - g)``: k < 1 washes colours out, k > 1 saturates them."""
    k = (0.3, 0.1, 2.0, 3.0, 5.0)[s - 1]
    g = _luma(x)
    return (g + k * (x - g)).clamp(0, 1)


# ----------------------------------------------------------------------------------------- type 1
def gaussian_noise(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    """``x + N(0, sigma^2)``."""
    sigma = (0.04, 0.06, 0.08, 0.09, 0.10)[s - 1]
    return (x + sigma * torch.randn(x.shape, generator=gen, dtype=x.dtype)).clamp(0, 1)


def shot_noise(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    """``Poisson(lam x) / lam``."""
    lam = (500.0, 250.0, 100.0, 75.0, 50.0)[s - 1]
    return (torch.poisson(x * lam, generator=gen) / lam).clamp(0, 1)


def impulse_noise(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    """Salt and pepper: each value becomes 0 or 1 (equally likely) with probability p."""
    p = (0.01, 0.02, 0.03, 0.05, 0.07)[s - 1]
    u = torch.rand(x.shape, generator=gen, dtype=x.dtype)
    out = torch.where(u < p / 2, torch.zeros_like(x), x)
    return torch.where((u >= p / 2) & (u < p), torch.ones_like(x), out)


def speckle_noise(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    """``x + x N(0, sigma^2)``."""
    sigma = (0.06, 0.1, 0.12, 0.16, 0.2)[s - 1]
    return (x + x * sigma * torch.randn(x.shape, generator=gen, dtype=x.dtype)).clamp(0, 1)


def gaussian_blur(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    """``blur_sigma(x)``."""
    sigma = (0.4, 0.6, 0.7, 0.8, 1.0)[s - 1]
    return blur(x, sigma).clamp(0, 1)


def defocus_blur(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    """Convolution with an anti-aliased disk of radius r, ``w(p) = clip(r + 0.5 - |p|, 0, 1)``, normalised."""
    r = (1.0, 1.25, 1.5, 2.0, 2.5)[s - 1]
    k = math.ceil(r)
    t = torch.arange(-k, k + 1, dtype=torch.float32)
    dist = torch.sqrt(t.view(-1, 1) ** 2 + t.view(1, -1) ** 2)
    disk = (r + 0.5 - dist).clamp(0, 1)
    return _conv_same(x, disk / disk.sum()).clamp(0, 1)


def glass_blur(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    """``blur(shuffle^k(blur(x)))``, shuffle = each pixel takes a random neighbour within delta."""
    sigma, delta, iterations = ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2))[s - 1]
    n, c, h, w = x.shape
    out = blur(x, sigma)
    rows = torch.arange(h).view(1, h, 1)
    cols = torch.arange(w).view(1, 1, w)
    for _ in range(iterations):
        dy = torch.randint(-delta, delta + 1, (n, h, w), generator=gen)
        dx = torch.randint(-delta, delta + 1, (n, h, w), generator=gen)
        src = ((rows + dy).clamp(0, h - 1) * w + (cols + dx).clamp(0, w - 1)).view(n, 1, h * w).expand(n, c, h * w)
        out = out.reshape(n, c, h * w).gather(2, src).view(n, c, h, w)
    return blur(out, sigma).clamp(0, 1)


def _motion(x: torch.Tensor, sigma: float, gen: torch.Generator) -> torch.Tensor:
    """Blur each image along a line through the centre at a random angle, Gaussian weights of std ``sigma``."""
    n, c, h, w = x.shape
    radius = max(1, math.ceil(2 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    theta = (torch.rand(n, generator=gen, dtype=x.dtype) * 2 - 1) * math.pi / 4  # +-45 degrees
    # Rasterise the line: for each tap t, the pixel offset (t cos, t sin) rounded; weight exp(-t^2/2 s^2).
    size = 2 * radius + 1
    kernels = torch.zeros((n, size, size), dtype=x.dtype)
    oy = torch.round(t.view(1, -1) * torch.sin(theta).view(-1, 1)).long() + radius
    ox = torch.round(t.view(1, -1) * torch.cos(theta).view(-1, 1)).long() + radius
    weights = torch.exp(-0.5 * (t / sigma) ** 2).expand(n, -1)
    kernels.view(n, -1).scatter_add_(1, oy * size + ox, weights.contiguous())
    kernels = kernels / kernels.sum(dim=(1, 2), keepdim=True)
    padded = F.pad(x, (radius, radius, radius, radius), mode="replicate").reshape(1, n * c, h + 2 * radius, -1)
    weight = kernels.repeat_interleave(c, dim=0).unsqueeze(1)
    return F.conv2d(padded, weight, groups=n * c).view(n, c, h, w)


def motion_blur(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    """Line blur at a random angle in [-45, 45] degrees, Gaussian tap weights of std sigma."""
    sigma = (1.0, 1.5, 2.0, 2.5, 3.0)[s - 1]
    return _motion(x, sigma, gen).clamp(0, 1)


def zoom_blur(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    """Mean of ``x`` and its centre zooms by factors 1.01, 1.02, ... < z_max."""
    z_max = (1.06, 1.11, 1.16, 1.21, 1.26)[s - 1]
    h, w = x.shape[-2:]
    out = x.clone()
    factors = np.arange(1.01, z_max, 0.01)
    for z in factors:
        zh, zw = math.ceil(h * z), math.ceil(w * z)
        big = F.interpolate(x, size=(zh, zw), mode="bilinear", align_corners=False)
        top, left = (zh - h) // 2, (zw - w) // 2
        out += big[..., top : top + h, left : left + w]
    return (out / (len(factors) + 1)).clamp(0, 1)


def original(x: torch.Tensor, s: int, gen: torch.Generator) -> torch.Tensor:
    """``x`` unchanged (the tenth 'corruption' of LfF's type 1)."""
    return x.clone()


CORRUPTIONS: dict[int, tuple[tuple[str, Corruption], ...]] = {
    0: (
        ("snow", snow),
        ("frost", frost),
        ("fog", fog),
        ("brightness", brightness),
        ("contrast", contrast),
        ("spatter", spatter),
        ("elastic", elastic),
        ("jpeg", jpeg),
        ("pixelate", pixelate),
        ("saturate", saturate),
    ),
    1: (
        ("gaussian_noise", gaussian_noise),
        ("shot_noise", shot_noise),
        ("impulse_noise", impulse_noise),
        ("speckle_noise", speckle_noise),
        ("gaussian_blur", gaussian_blur),
        ("defocus_blur", defocus_blur),
        ("glass_blur", glass_blur),
        ("motion_blur", motion_blur),
        ("zoom_blur", zoom_blur),
        ("original", original),
    ),
}
