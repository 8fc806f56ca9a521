"""THA1 networks (Khungurn 2019, section 6 and Appendix A), written for mmdsynth.

All three networks take and return float32 images (B, 4, H, W) in [-1, 1]
(straight-alpha RGBA, :mod:`mmdsynth.train.data`) and a pose (B, P) that is
broadcast to P constant image channels and concatenated with the input
(Pumarola et al. 2018, "GANimation", which THA1's face morpher follows).

Building blocks (Appendix A; "IN" is instance normalisation with a learned
affine, every convolution is initialised with He's normal initialisation):

* ``Conv7Block``: 7x7 convolution (stride 1, padding 3) -> IN -> ReLU.
* ``Down``: 4x4 convolution, stride 2, padding 1, channels x2 -> IN -> ReLU.
* ``ResBlock``: x + IN(conv3x3(ReLU(IN(conv3x3(x))))).
* ``Up``: 4x4 transposed convolution, stride 2, padding 1, channels / 2 -> IN -> ReLU.

The **encoder-decoder** trunk: ``Conv7Block(in -> C)`` at H x W, then ``Down``
blocks until the image is ``bottleneck_size`` pixels wide (256 -> 32 is three:
C, 2C, 4C, 8C channels), ``blocks`` ``ResBlock`` at the bottleneck, and as many
``Up`` blocks back to H x W with C channels. THA1 uses C = 64, bottleneck 32,
6 residual blocks (:data:`PRESETS` ``"tha1"``).

Combination rule (THA1 and its code; GANimation writes the same blend with the
mask on the other term): with ``alpha = sigmoid(conv7(features))`` (B, 4, H, W)
in [0, 1] and ``change = tanh(conv7(features))`` in [-1, 1],

    output = alpha * input + (1 - alpha) * change

so ``alpha = 1`` keeps the input pixel and ``alpha = 0`` replaces it by the
change image; the mask has one value per channel (4 channels, alpha included).

Networks (their ``forward`` returns a dict of tensors):

* :class:`FaceMorpher` (section 6.1): trunk on ``[image, pose]``;
  ``{"image": output, "alpha", "change"}``.
* :class:`TwoAlgoFaceRotator` (section 6.2): the same trunk with two outputs:
  "direct" generation (Pumarola et al.: change image + alpha, blended as above)
  and "appearance flow" (Zhou et al. 2016): a 2-channel offset field added to
  the identity sampling grid, the input resampled with ``grid_sample``
  (bilinear, ``padding_mode="border"``, ``align_corners=False``; offsets in
  the normalised [-1, 1] coordinates of ``grid_sample``). ``{"direct",
  "flow_image", "alpha", "change", "flow" (B, H, W, 2), "grid" (B, H, W, 2)}``.
  Deviation: the flow head starts at zero (weights and bias), so an untrained
  rotator's flow output is the identity warp.
* :class:`Combiner` (section 6.2): a U-Net on ``[direct, flow_image, pose]``
  producing two alpha masks and a change image:
  ``combined = a1 * direct + (1 - a1) * flow_image`` then
  ``image = a2 * combined + (1 - a2) * change``;
  ``{"image", "combined", "combine_alpha", "retouch_alpha", "change"}``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ModelConfig",
    "PRESETS",
    "model_config",
    "FaceMorpher",
    "TwoAlgoFaceRotator",
    "Combiner",
    "NETWORKS",
    "build_network",
    "count_parameters",
]


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of a THA1 network.

    * ``image_size``: input height = width in pixels (a power of two times ``bottleneck_size``).
    * ``image_channels``: 4 (RGBA).
    * ``pose_size``: pose values fed to the network (3 for each THA1 network).
    * ``channels``: C, the channels of the first (full-resolution) layer; doubled by every ``Down``.
    * ``bottleneck_size``: width of the bottleneck feature map.
    * ``blocks``: residual blocks at the bottleneck.
    """

    image_size: int = 256
    image_channels: int = 4
    pose_size: int = 3
    channels: int = 64
    bottleneck_size: int = 32
    blocks: int = 6

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (0 if f.name == "blocks" else 1):
                raise ValueError(f"model {f.name} must be a positive integer, got {v!r}")
        size = self.image_size
        while size > self.bottleneck_size and size % 2 == 0:
            size //= 2
        if size != self.bottleneck_size:
            raise ValueError(f"image_size {self.image_size} must be bottleneck_size {self.bottleneck_size} "
                             "times a power of two")

    @property
    def levels(self) -> int:
        """Number of ``Down`` (and ``Up``) blocks."""
        return (self.image_size // self.bottleneck_size).bit_length() - 1

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


#: Named sizes. ``tha1``: the paper's networks (C=64, 32x32 bottleneck, 6 residual
#: blocks; about 30M parameters each). ``tiny``: for tests and smoke runs on a CPU.
PRESETS: dict[str, ModelConfig] = {
    "tha1": ModelConfig(),
    "tiny": ModelConfig(channels=8, bottleneck_size=32, blocks=1),
}


def model_config(preset: str = "tha1", **overrides: Any) -> ModelConfig:
    """A preset's :class:`ModelConfig` with keys replaced. Raises ValueError for
    an unknown preset, key or a bad value."""
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r} (known: {', '.join(PRESETS)})")
    known = {f.name for f in fields(ModelConfig)}
    bad = sorted(set(overrides) - known)
    if bad:
        raise ValueError(f"unknown model key(s) {', '.join(bad)} (known: {', '.join(sorted(known))})")
    return replace(PRESETS[preset], **overrides)


# ============================================================================= blocks


def _he(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _norm(c: int) -> nn.Module:
    return nn.InstanceNorm2d(c, affine=True)


def conv7(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 7, 1, 3)


class Conv7Block(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(conv7(cin, cout), _norm(cout), nn.ReLU(inplace=True))


class Down(nn.Sequential):
    def __init__(self, cin: int):
        super().__init__(nn.Conv2d(cin, 2 * cin, 4, 2, 1), _norm(2 * cin), nn.ReLU(inplace=True))


class Up(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(nn.ConvTranspose2d(cin, cout, 4, 2, 1), _norm(cout), nn.ReLU(inplace=True))


class ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, 1, 1), _norm(c), nn.ReLU(inplace=True),
                                  nn.Conv2d(c, c, 3, 1, 1), _norm(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class EncoderDecoder(nn.Sequential):
    """The Pumarola et al. trunk: (B, cin, S, S) -> (B, C, S, S) features (module docstring)."""

    def __init__(self, cin: int, cfg: ModelConfig):
        c = cfg.channels
        layers: list[nn.Module] = [Conv7Block(cin, c)]
        for _ in range(cfg.levels):
            layers.append(Down(c))
            c *= 2
        layers += [ResBlock(c) for _ in range(cfg.blocks)]
        for _ in range(cfg.levels):
            layers.append(Up(c, c // 2))
            c //= 2
        super().__init__(*layers)


class UNet(nn.Module):
    """Encoder-decoder with skip connections: (B, cin, S, S) -> (B, C, S, S).

    Encoder features e0 (C, S), e1 (2C, S/2)... down to the bottleneck
    (residual blocks); each decoder step upsamples (``Up``, channels halved) and
    concatenates the encoder features of that resolution; a final 3x3
    convolution -> IN -> ReLU maps the last concatenation (2C) to C channels."""

    def __init__(self, cin: int, cfg: ModelConfig):
        super().__init__()
        c = cfg.channels
        self.first = Conv7Block(cin, c)
        self.downs = nn.ModuleList()
        for _ in range(cfg.levels):
            self.downs.append(Down(c))
            c *= 2
        self.bottleneck = nn.Sequential(*[ResBlock(c) for _ in range(cfg.blocks)])
        self.ups = nn.ModuleList()
        cin_up = c
        for _ in range(cfg.levels):
            self.ups.append(Up(cin_up, c // 2))
            cin_up = c  # c // 2 upsampled + c // 2 skip
            c //= 2
        self.last = nn.Sequential(nn.Conv2d(cin_up, cfg.channels, 3, 1, 1), _norm(cfg.channels), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.first(x)]
        for down in self.downs:
            skips.append(down(skips[-1]))
        y = self.bottleneck(skips.pop())
        for up in self.ups:
            y = torch.cat([up(y), skips.pop()], dim=1)
        return self.last(y)


def _with_pose(image: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
    """Concatenate ``pose`` (B, P) as P constant channels to ``image`` (B, C, H, W)."""
    b, _, h, w = image.shape
    if pose.dim() != 2 or pose.shape[0] != b:
        raise ValueError(f"pose must be (B, P) with B = {b}, got {tuple(pose.shape)}")
    return torch.cat([image, pose.to(image.dtype)[:, :, None, None].expand(b, pose.shape[1], h, w)], dim=1)


def _check(image: torch.Tensor, cfg: ModelConfig, pose: torch.Tensor, name: str = "image") -> None:
    if image.dim() != 4 or image.shape[1] != cfg.image_channels or image.shape[2:] != (cfg.image_size, cfg.image_size):
        raise ValueError(f"{name} must be (B, {cfg.image_channels}, {cfg.image_size}, {cfg.image_size}), "
                         f"got {tuple(image.shape)}")
    if pose.dim() != 2 or pose.shape[1] != cfg.pose_size:
        raise ValueError(f"pose must be (B, {cfg.pose_size}), got {tuple(pose.shape)}")


# ============================================================================= networks


class FaceMorpher(nn.Module):
    """THA1 face morpher (section 6.1): closes the eyes and opens the mouth.

    ``forward(image (B, 4, S, S) in [-1, 1], pose (B, 3) = (left_eye, right_eye, mouth))``
    returns ``{"image": alpha * image + (1 - alpha) * change, "alpha" (B, 4, S, S)
    in [0, 1], "change" (B, 4, S, S) in [-1, 1]}``. Raises ValueError on bad shapes.
    """

    def __init__(self, cfg: ModelConfig = ModelConfig()):
        super().__init__()
        self.cfg = cfg
        self.body = EncoderDecoder(cfg.image_channels + cfg.pose_size, cfg)
        self.alpha = conv7(cfg.channels, cfg.image_channels)
        self.change = conv7(cfg.channels, cfg.image_channels)
        _he(self)

    def forward(self, image: torch.Tensor, pose: torch.Tensor) -> dict[str, torch.Tensor]:
        _check(image, self.cfg, pose)
        y = self.body(_with_pose(image, pose))
        alpha = torch.sigmoid(self.alpha(y))
        change = torch.tanh(self.change(y))
        return {"image": alpha * image + (1 - alpha) * change, "alpha": alpha, "change": change}


class TwoAlgoFaceRotator(nn.Module):
    """THA1 two-algorithm face rotator (section 6.2): rotates the face two ways.

    ``forward(image (B, 4, S, S) in [-1, 1], pose (B, 3) = (head_x, head_y, neck_z))``
    returns ``{"direct": alpha * image + (1 - alpha) * change,
    "flow_image": grid_sample(image, identity + flow), "alpha", "change",
    "flow" (B, S, S, 2) offsets in normalised coordinates, "grid" (B, S, S, 2)}``
    (module docstring). Raises ValueError on bad shapes.
    """

    def __init__(self, cfg: ModelConfig = ModelConfig()):
        super().__init__()
        self.cfg = cfg
        self.body = EncoderDecoder(cfg.image_channels + cfg.pose_size, cfg)
        self.alpha = conv7(cfg.channels, cfg.image_channels)
        self.change = conv7(cfg.channels, cfg.image_channels)
        self.flow = conv7(cfg.channels, 2)
        _he(self)
        nn.init.zeros_(self.flow.weight)
        nn.init.zeros_(self.flow.bias)

    def forward(self, image: torch.Tensor, pose: torch.Tensor) -> dict[str, torch.Tensor]:
        _check(image, self.cfg, pose)
        y = self.body(_with_pose(image, pose))
        alpha = torch.sigmoid(self.alpha(y))
        change = torch.tanh(self.change(y))
        direct = alpha * image + (1 - alpha) * change
        b = image.shape[0]
        flow = self.flow(y).permute(0, 2, 3, 1)
        theta = torch.eye(2, 3, dtype=flow.dtype, device=flow.device).expand(b, 2, 3)
        base = F.affine_grid(theta, list(image.shape), align_corners=False)
        grid = base + flow
        flow_image = F.grid_sample(image, grid.to(image.dtype), mode="bilinear", padding_mode="border",
                                   align_corners=False)
        return {"direct": direct, "flow_image": flow_image, "alpha": alpha, "change": change, "flow": flow,
                "grid": grid}


class Combiner(nn.Module):
    """THA1 combiner (section 6.2): blends the rotator's two outputs and retouches.

    ``forward(direct, flow_image (B, 4, S, S) in [-1, 1], pose (B, 3))`` returns
    ``{"image": a2 * combined + (1 - a2) * change, "combined": a1 * direct +
    (1 - a1) * flow_image, "combine_alpha": a1, "retouch_alpha": a2,
    "change"}``. Raises ValueError on bad shapes.
    """

    def __init__(self, cfg: ModelConfig = ModelConfig()):
        super().__init__()
        self.cfg = cfg
        self.body = UNet(2 * cfg.image_channels + cfg.pose_size, cfg)
        self.combine_alpha = conv7(cfg.channels, cfg.image_channels)
        self.retouch_alpha = conv7(cfg.channels, cfg.image_channels)
        self.change = conv7(cfg.channels, cfg.image_channels)
        _he(self)

    def forward(self, direct: torch.Tensor, flow_image: torch.Tensor, pose: torch.Tensor) -> dict[str, torch.Tensor]:
        _check(direct, self.cfg, pose, "direct")
        _check(flow_image, self.cfg, pose, "flow_image")
        y = self.body(_with_pose(torch.cat([direct, flow_image], dim=1), pose))
        a1 = torch.sigmoid(self.combine_alpha(y))
        combined = a1 * direct + (1 - a1) * flow_image
        a2 = torch.sigmoid(self.retouch_alpha(y))
        change = torch.tanh(self.change(y))
        return {"image": a2 * combined + (1 - a2) * change, "combined": combined, "combine_alpha": a1,
                "retouch_alpha": a2, "change": change}


NETWORKS: dict[str, type[nn.Module]] = {"morpher": FaceMorpher, "rotator": TwoAlgoFaceRotator, "combiner": Combiner}


def build_network(name: str, cfg: ModelConfig) -> nn.Module:
    """A freshly initialised network by name (``morpher``, ``rotator``, ``combiner``).
    Raises ValueError for an unknown name."""
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r} (known: {', '.join(NETWORKS)})")
    return NETWORKS[name](cfg)


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
