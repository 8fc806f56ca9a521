"""Image metrics (L1, RMSE, PSNR, SSIM) and the VGG16 perceptual loss.

Metrics are computed **per image** on all four RGBA channels mapped to [0, 1]
(``(x + 1) / 2`` from the networks' [-1, 1]), then averaged over images:

* ``l1``: mean |a - b| over the image's pixels and channels, in [0, 1] units
  (the training L1 loss, which works in [-1, 1], is twice this).
* ``rmse``: sqrt(mean (a - b)^2) of the image.
* ``psnr``: 10 log10(1 / mse) dB (data range 1); an exact match (mse below
  1e-10) counts as 100 dB so that averages stay finite.
* ``ssim``: Wang et al. (2004) SSIM with an 11x11 Gaussian window (sigma 1.5),
  K1 = 0.01, K2 = 0.03, data range 1, computed over the "valid" window
  positions (no padding), per channel, averaged over channels and positions:
  the definition of pytorch-msssim's ``ssim(..., size_average=False)`` and of
  torchmetrics' ``structural_similarity_index_measure`` with these settings;
  ``tests/test_train_metrics.py`` checks it against pytorch-msssim when it is
  installed and against stored values.

:class:`Perceptual` is Johnson et al. (2016)'s feature reconstruction loss on
VGG16 ``relu1_2``, ``relu2_2``, ``relu3_3``, which THA1 (section 6) adds to
the L1 loss for the rotator and combiner. It needs VGG16 weights the user
already has on disk (torchvision's ``vgg16-397923af.pth`` layout, keys
``features.N.weight/bias``; nothing is downloaded).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["METRICS", "image_metrics", "ssim", "psnr", "gaussian_window", "Perceptual", "load_vgg16_features"]

METRICS = ("l1", "rmse", "psnr", "ssim")
PSNR_CAP_DB = 100.0


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype=torch.float32, device=None) -> torch.Tensor:
    """Normalised 1-D Gaussian (size,) centred on the middle tap."""
    x = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2
    g = torch.exp(-(x ** 2) / (2 * sigma ** 2))
    return (g / g.sum()).to(dtype)


def _blur(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Separable valid Gaussian filter of (B, C, H, W) per channel."""
    c = x.shape[1]
    k = g.numel()
    x = F.conv2d(x, g.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
    return F.conv2d(x, g.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)


def ssim(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0, win_size: int = 11, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> torch.Tensor:
    """Per-image SSIM (B,) of (B, C, H, W) images with values in [0, data_range].

    Computed in float64 for stability. Raises ValueError for mismatched shapes
    or images smaller than the window."""
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(f"ssim needs two (B, C, H, W) tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if min(a.shape[-2:]) < win_size:
        raise ValueError(f"images of {tuple(a.shape[-2:])} are smaller than the {win_size}x{win_size} window")
    a = a.double()
    b = b.double()
    g = gaussian_window(win_size, sigma, torch.float64, a.device)
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    mu_a, mu_b = _blur(a, g), _blur(b, g)
    saa = _blur(a * a, g) - mu_a ** 2
    sbb = _blur(b * b, g) - mu_b ** 2
    sab = _blur(a * b, g) - mu_a * mu_b
    cs = (2 * sab + c2) / (saa + sbb + c2)
    s = ((2 * mu_a * mu_b + c1) / (mu_a ** 2 + mu_b ** 2 + c1)) * cs
    return s.flatten(1).mean(1).float()


def psnr(mse: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """PSNR in dB from per-image MSE (values in [0, data_range]); capped at 100 dB."""
    return (10 * torch.log10(data_range ** 2 / mse.double().clamp_min(1e-10))).clamp_max(PSNR_CAP_DB).float()


@torch.no_grad()
def image_metrics(output: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image metrics of (B, C, H, W) images in [-1, 1] (clamped first).

    Returns ``{"l1", "rmse", "psnr", "ssim"}``, each (B,) float32 on the input's
    device (module docstring for the definitions)."""
    if output.shape != target.shape:
        raise ValueError(f"output {tuple(output.shape)} and target {tuple(target.shape)} differ in shape")
    a = (output.detach().float().clamp(-1, 1) + 1) / 2
    b = (target.detach().float().clamp(-1, 1) + 1) / 2
    d = (a - b).double()
    mse = d.pow(2).flatten(1).mean(1)
    return {
        "l1": d.abs().flatten(1).mean(1).float(),
        "rmse": mse.sqrt().float(),
        "psnr": psnr(mse),
        "ssim": ssim(a, b),
    }


# ============================================================================= perceptual

# VGG16 ``features`` up to relu3_3: (index in torchvision's Sequential, out channels) of each conv.
_VGG_CONVS = [(0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256), (14, 256, 256)]
_TAPS = {3: "relu1_2", 8: "relu2_2", 15: "relu3_3"}
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def _vgg16_to_relu3_3() -> nn.Sequential:
    layers: list[nn.Module] = []
    convs = {i: (cin, cout) for i, cin, cout in _VGG_CONVS}
    for i in range(16):
        if i in convs:
            layers.append(nn.Conv2d(*convs[i], 3, 1, 1))
        elif i in (4, 9):
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers.append(nn.ReLU(inplace=False))
    return nn.Sequential(*layers)


def load_vgg16_features(path: str | os.PathLike) -> nn.Sequential:
    """VGG16 ``features[0:16]`` (conv1_1 .. relu3_3) with weights from a local file.

    The file is a torch state dict in torchvision's VGG16 layout (keys
    ``features.N.weight`` / ``features.N.bias``; a dict without the
    ``features.`` prefix works too; other keys are ignored). Raises
    ValueError (one line) when the file is missing, unreadable or lacks a
    layer or has a layer of the wrong shape."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such VGG16 weights file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is bad input
        raise ValueError(f"{path}: cannot read VGG16 weights ({type(exc).__name__}: {exc})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a state dict")
    net = _vgg16_to_relu3_3()
    own = {}
    for i, _, _ in _VGG_CONVS:
        for part in ("weight", "bias"):
            key = f"features.{i}.{part}"
            value = state.get(key, state.get(f"{i}.{part}"))
            if value is None:
                raise ValueError(f"{path}: no {key} (expected torchvision's VGG16 state dict layout)")
            expected = getattr(net[i], part).shape
            if tuple(value.shape) != tuple(expected):
                raise ValueError(f"{path}: {key} has shape {tuple(value.shape)}, VGG16 has {tuple(expected)}")
            own[f"{i}.{part}"] = value
    net.load_state_dict(own)
    return net


class Perceptual(nn.Module):
    """Feature reconstruction loss on VGG16 relu1_2, relu2_2, relu3_3 (Johnson et al. 2016).

    ``forward(output, target)``: (B, 4, H, W) RGBA in [-1, 1]. The RGB channels
    are mapped to [0, 1], premultiplied by alpha (a transparent pixel is black
    whatever its colour values) and normalised with the ImageNet mean and std;
    the loss is the sum over the three layers of the mean squared difference of
    the features (a scalar). The VGG weights are frozen (no gradients; the
    module stays in eval mode); gradients flow to ``output``.
    """

    def __init__(self, features: nn.Sequential):
        super().__init__()
        self.features = features.eval()
        for p in self.features.parameters():
            p.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Perceptual:
        return cls(load_vgg16_features(path))

    def train(self, mode: bool = True) -> Perceptual:  # the VGG stays in eval mode
        super().train(mode)
        self.features.eval()
        return self

    def _prep(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float() + 1) / 2
        rgb = x[:, :3] * x[:, 3:4]
        return (rgb - self.mean) / self.std

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in _TAPS:
                out.append(x)
        return out

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        fo = self.taps(self._prep(output))
        with torch.no_grad():
            ft = self.taps(self._prep(target))
        return sum(F.mse_loss(a, b) for a, b in zip(fo, ft))
