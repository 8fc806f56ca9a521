"""Apply trained networks to a user's image (``mmdsynth infer``).

The pipeline is THA1's (section 6): the face morpher changes the expression
(``left_eye, right_eye, mouth``), then, when a combiner checkpoint is given,
the two-algorithm face rotator and the combiner turn the head
(``head_x, head_y, neck_z``). A combiner checkpoint carries the rotator it was
trained with; ``rotator`` replaces it.

THA1's input rules (its README and section 4), checked by :func:`load_input_image`:

* a PNG (or any Pillow-readable file) of exactly the networks' size (256 x 256);
* with an alpha channel (RGBA, LA, or a palette / RGB image with a transparent colour);
* a transparent background: at least half of the border pixels (the outer
  4-pixel frame) fully transparent (alpha 0), and not every pixel opaque;
* the character's head inside the centre box (THA1 framing: rows and columns 64..191
  hold the head; checked as: some non-transparent pixel there).

Pixels with alpha 0 get RGB 0, as in the training data (DESIGN.md "Images").
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from mmdsynth.train.checkpoint import CheckpointError, load_checkpoint
from mmdsynth.train.data import to_float, to_uint8
from mmdsynth.train.trainer import network_from_checkpoint

__all__ = ["InputImageError", "load_input_image", "Poser", "parse_pose"]


class InputImageError(ValueError):
    """The input image breaks one of THA1's input rules (one-line message)."""


def load_input_image(path: str | os.PathLike, size: int = 256) -> np.ndarray:
    """Read and check a user image; returns (size, size, 4) uint8 RGBA, straight
    alpha, RGB zeroed where alpha is 0. Raises :class:`InputImageError`."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise InputImageError(f"{path}: no such image file")
    try:
        with Image.open(path) as im:
            im.load()
            mode, info = im.mode, dict(im.info)
            w, h = im.size
            if (w, h) != (size, size):
                raise InputImageError(f"{path}: the image is {w}x{h}; the networks take {size}x{size} RGBA images "
                                      f"(THA1: the head in the middle {size // 2}x{size // 2} box, a transparent background)")
            has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in info
            if not has_alpha:
                raise InputImageError(f"{path}: the image has no alpha channel (mode {mode}); THA1 needs RGBA "
                                      "with a transparent background (alpha 0 wherever the character is not)")
            rgba = np.asarray(im.convert("RGBA"), dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError) as exc:
        raise InputImageError(f"{path}: not a readable image ({exc})") from None
    alpha = rgba[..., 3]
    if alpha.min() > 0:
        raise InputImageError(f"{path}: no pixel is transparent; THA1 needs a transparent background "
                              "(alpha 0 wherever the character is not)")
    border = np.concatenate([alpha[:4].ravel(), alpha[-4:].ravel(), alpha[4:-4, :4].ravel(), alpha[4:-4, -4:].ravel()])
    if (border == 0).mean() < 0.5:
        raise InputImageError(f"{path}: only {(border == 0).mean():.0%} of the border is transparent; THA1 needs "
                              "a transparent background around the character (alpha 0)")
    q = size // 4
    if alpha[q:size - q, q:size - q].max() == 0:
        raise InputImageError(f"{path}: the centre box (rows and columns {q}..{size - q - 1}) is empty; THA1 needs "
                              "the character's head there")
    rgba[alpha == 0] = 0
    return rgba


def parse_pose(text: str, names: list[str], ranges: list[tuple[float, float]]) -> dict[str, float]:
    """Parse ``"left_eye=1,mouth=0.5,head_y=-0.3"`` against the networks'
    parameter names and [low, high] ranges; unnamed parameters are 0.
    Raises ValueError naming the bad item (see
    :func:`mmdsynth.mmd.schema.parse_pose_text`)."""
    from mmdsynth.mmd.schema import parse_pose_text

    return {n: 0.0 for n in names} | parse_pose_text(text, list(names), list(ranges))


class Poser:
    """Trained networks chained as in THA1: morpher, then rotator + combiner.

    Args:
        morpher: a morpher checkpoint path.
        combiner: a combiner checkpoint path (None: expression only).
        rotator: a rotator checkpoint replacing the one stored in the combiner checkpoint.
        device: ``"cpu"``, ``"cuda"``...

    :meth:`__call__` takes an (S, S, 4) uint8 RGBA image and a pose dict and
    returns the (S, S, 4) uint8 RGBA result. Raises :class:`CheckpointError`
    for a missing or wrong checkpoint, ValueError for a pose value the loaded
    networks cannot apply (a head rotation without a combiner).
    """

    def __init__(self, morpher: str | os.PathLike, combiner: str | os.PathLike | None = None,
                 rotator: str | os.PathLike | None = None, device: str = "cpu"):
        self.device = torch.device(device)
        m = load_checkpoint(morpher)
        if m["network"] != "morpher":
            raise CheckpointError(f"{morpher}: a {m['network']} checkpoint; the first checkpoint must be a morpher")
        self.morpher = network_from_checkpoint(m, self.device)
        self.morpher_pose = list(m["pose_names"])
        self.names = list(m["parameter_names"])
        self.ranges = [tuple(r) for r in m["parameter_ranges"]]
        self.size = int(m["model_config"]["image_size"])
        self.rotator = self.combiner = None
        self.rotator_pose: list[str] = []
        if combiner is None and rotator is not None:
            raise CheckpointError("--rotator needs --combiner (THA1 blends the rotator's two outputs with the combiner)")
        if combiner is not None:
            c = load_checkpoint(combiner)
            if c["network"] != "combiner":
                raise CheckpointError(f"{combiner}: a {c['network']} checkpoint, not a combiner")
            self.combiner = network_from_checkpoint(c, self.device)
            if rotator is not None:
                r = load_checkpoint(rotator)
                if r["network"] != "rotator":
                    raise CheckpointError(f"{rotator}: a {r['network']} checkpoint, not a rotator")
            elif "rotator" in c:
                r = c["rotator"]
            else:
                raise CheckpointError(f"{combiner}: holds no rotator; give --rotator")
            self.rotator = network_from_checkpoint(r, self.device)
            self.rotator_pose = list(r["pose_names"])
            for net in (self.rotator, self.combiner):
                if net.cfg.image_size != self.size:
                    raise CheckpointError("the morpher and the rotator/combiner take different image sizes")

    @torch.no_grad()
    def __call__(self, image: np.ndarray, pose: dict[str, float]) -> np.ndarray:
        rotation = [pose.get(n, 0.0) for n in self.rotator_pose]
        if self.combiner is None:
            extra = [n for n, v in pose.items() if v != 0 and n not in self.morpher_pose]
            if extra:
                raise ValueError(f"{', '.join(extra)} {'needs' if len(extra) == 1 else 'need'} the rotator: "
                                 "give --combiner (a combiner checkpoint)")
        x = to_float(torch.from_numpy(np.ascontiguousarray(image))[None], self.device)
        p = torch.tensor([[pose.get(n, 0.0) for n in self.morpher_pose]], dtype=torch.float32, device=self.device)
        x = self.morpher(x, p)["image"]
        if self.combiner is not None:
            r = torch.tensor([rotation], dtype=torch.float32, device=self.device)
            ro = self.rotator(x, r)
            x = self.combiner(ro["direct"], ro["flow_image"], r)["image"]
        return to_uint8(x)[0].numpy()
