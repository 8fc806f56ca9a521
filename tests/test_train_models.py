"""THA1 networks: shapes, the combination rules, appearance flow, sizes."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from mmdsynth.train.models import (  # noqa: E402
    Combiner,
    FaceMorpher,
    ModelConfig,
    TwoAlgoFaceRotator,
    build_network,
    count_parameters,
    model_config,
)

TINY = model_config("tiny")


def _inputs(b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 4, 256, 256, generator=g) * 2 - 1, torch.rand(b, 3, generator=g)


def test_morpher_output_is_the_alpha_blend():
    torch.manual_seed(0)
    net = FaceMorpher(TINY).eval()
    x, p = _inputs()
    with torch.no_grad():
        out = net(x, p)
    assert out["image"].shape == out["alpha"].shape == out["change"].shape == (2, 4, 256, 256)
    a, c = out["alpha"], out["change"]
    assert a.min() >= 0 and a.max() <= 1 and c.min() >= -1 and c.max() <= 1
    assert torch.allclose(out["image"], a * x + (1 - a) * c, atol=1e-6)
    # alpha -> 1 keeps the input pixel (the THA1 convention)
    with torch.no_grad():
        net.alpha.bias.fill_(50.0)
        assert torch.allclose(net(x, p)["image"], x, atol=1e-5)
        net.alpha.bias.fill_(-50.0)
        kept = net(x, p)
        assert torch.allclose(kept["image"], kept["change"], atol=1e-5)


def test_pose_changes_the_output():
    torch.manual_seed(0)
    net = FaceMorpher(TINY).eval()
    x, p = _inputs(1)
    with torch.no_grad():
        assert not torch.allclose(net(x, p)["image"], net(x, 1 - p)["image"])


def test_rotator_two_outputs_and_appearance_flow():
    torch.manual_seed(0)
    net = TwoAlgoFaceRotator(TINY).eval()
    x, p = _inputs()
    with torch.no_grad():
        out = net(x, p)
        assert out["flow"].shape == out["grid"].shape == (2, 256, 256, 2)
        assert torch.allclose(out["direct"], out["alpha"] * x + (1 - out["alpha"]) * out["change"], atol=1e-6)
        # the flow head starts at zero: the identity warp
        assert torch.allclose(out["flow_image"], x, atol=1e-4)
        # a constant offset of 2/256 in normalised x samples the next pixel to the right
        net.flow.bias.copy_(torch.tensor([2 / 256, 0.0]))
        shifted = net(x, p)["flow_image"]
    assert torch.allclose(shifted[..., :-1], x[..., 1:], atol=1e-4)
    assert torch.allclose(shifted[..., -1], x[..., -1], atol=1e-4)  # border padding


def test_combiner_blend_and_retouch():
    torch.manual_seed(0)
    net = Combiner(TINY).eval()
    d, p = _inputs(2, 1)
    f, _ = _inputs(2, 2)
    with torch.no_grad():
        out = net(d, f, p)
    a1, a2 = out["combine_alpha"], out["retouch_alpha"]
    assert torch.allclose(out["combined"], a1 * d + (1 - a1) * f, atol=1e-6)
    assert torch.allclose(out["image"], a2 * out["combined"] + (1 - a2) * out["change"], atol=1e-6)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    x, p = _inputs(1)
    for name in ("morpher", "rotator", "combiner"):
        net = build_network(name, TINY)
        out = net(x, x, p) if name == "combiner" else net(x, p)
        loss = sum(v.float().mean() for k, v in out.items() if k not in ("grid",))
        loss.backward()
        missing = [n for n, q in net.named_parameters() if q.grad is None]
        assert not missing, (name, missing)


def test_bad_shapes_and_configs():
    net = FaceMorpher(TINY)
    with pytest.raises(ValueError, match="image must be"):
        net(torch.zeros(1, 3, 256, 256), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="pose must be"):
        net(torch.zeros(1, 4, 256, 256), torch.zeros(1, 6))
    with pytest.raises(ValueError, match="power of two"):
        ModelConfig(image_size=256, bottleneck_size=48)
    with pytest.raises(ValueError, match="unknown model key"):
        model_config("tiny", width=3)
    with pytest.raises(ValueError, match="unknown model preset"):
        model_config("huge")
    with pytest.raises(ValueError, match="unknown network"):
        build_network("poser", TINY)


def test_sizes():
    tha1 = model_config("tha1")
    assert (tha1.channels, tha1.bottleneck_size, tha1.blocks, tha1.levels) == (64, 32, 6, 3)
    # the paper's trunk: three downsamplings to 32x32x512, six residual blocks of 512 channels
    morpher = FaceMorpher(tha1)
    assert 33e6 < count_parameters(morpher) < 35e6
    convs = [m for m in morpher.body if isinstance(m, nn.Sequential)]
    assert convs[3][0].out_channels == 512
    assert count_parameters(FaceMorpher(TINY)) < 200_000
    small = model_config("tiny", image_size=64)
    out = FaceMorpher(small)(torch.zeros(1, 4, 64, 64), torch.zeros(1, 3))
    assert out["image"].shape == (1, 4, 64, 64)
