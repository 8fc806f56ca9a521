"""Metrics (L1, RMSE, PSNR, SSIM) against known values and pytorch-msssim; the VGG16 perceptual loss."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from mmdsynth.train.metrics import Perceptual, image_metrics, load_vgg16_features, ssim  # noqa: E402


def test_identical_images():
    x = torch.rand(3, 4, 32, 32) * 2 - 1
    m = image_metrics(x, x)
    assert torch.all(m["l1"] == 0) and torch.all(m["rmse"] == 0)
    assert torch.all(m["psnr"] == 100.0)  # the cap for an exact match
    assert torch.allclose(m["ssim"], torch.ones(3))


def test_constant_images_known_values():
    # [-1, 1] values -0.5 and 0.5 are 0.25 and 0.75 in [0, 1]
    a = torch.full((1, 4, 16, 16), -0.5)
    b = torch.full((1, 4, 16, 16), 0.5)
    m = image_metrics(a, b)
    assert m["l1"].item() == pytest.approx(0.5)
    assert m["rmse"].item() == pytest.approx(0.5)
    assert m["psnr"].item() == pytest.approx(10 * math.log10(1 / 0.25))
    # constant images: no variance, SSIM is the luminance term alone
    c1 = 0.01 ** 2
    assert m["ssim"].item() == pytest.approx((2 * 0.25 * 0.75 + c1) / (0.25 ** 2 + 0.75 ** 2 + c1), abs=1e-6)


def test_stored_values_on_fixed_tensors():
    g = torch.Generator().manual_seed(1234)
    a = torch.rand(2, 4, 32, 32, generator=g) * 2 - 1
    b = (a + 0.2 * torch.randn(2, 4, 32, 32, generator=g)).clamp(-1, 1)
    m = image_metrics(b, a)
    expected = {
        "l1": [0.0756344, 0.07668],
        "rmse": [0.0955423, 0.0967394],
        "psnr": [20.3960819, 20.2879314],
        "ssim": [0.9437966, 0.9413136],
    }
    for key, values in expected.items():
        assert m[key].tolist() == pytest.approx(values, abs=2e-5), key


def test_ssim_matches_pytorch_msssim():
    ref = pytest.importorskip("pytorch_msssim")
    g = torch.Generator().manual_seed(7)
    for shape in [(2, 4, 64, 64), (1, 3, 40, 57), (3, 1, 11, 11)]:
        a = torch.rand(shape, generator=g)
        b = (a + 0.15 * torch.randn(shape, generator=g)).clamp(0, 1)
        ours = ssim(a, b)
        theirs = ref.ssim(a, b, data_range=1.0, size_average=False)
        assert torch.allclose(ours, theirs.float(), atol=1e-5), shape


def test_ssim_rejects_bad_input():
    with pytest.raises(ValueError, match="smaller than"):
        ssim(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match="one shape"):
        ssim(torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 17))
    with pytest.raises(ValueError, match="differ in shape"):
        image_metrics(torch.rand(1, 4, 16, 16), torch.rand(2, 4, 16, 16))


def _fake_vgg16(path, drop=None):
    """A random state dict in torchvision's VGG16 layout (features only)."""
    g = torch.Generator().manual_seed(0)
    state = {}
    for i, cin, cout in [(0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256),
                         (14, 256, 256), (17, 256, 512)]:
        state[f"features.{i}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * (2 / (9 * cin)) ** 0.5
        state[f"features.{i}.bias"] = torch.zeros(cout)
    state["classifier.0.weight"] = torch.zeros(2, 2)
    if drop:
        del state[drop]
    torch.save(state, path)
    return path


def test_perceptual_loss_from_local_weights(tmp_path):
    loss_fn = Perceptual.from_file(_fake_vgg16(tmp_path / "vgg16.pth"))
    x = torch.rand(2, 4, 32, 32) * 2 - 1
    y = torch.rand(2, 4, 32, 32) * 2 - 1
    assert loss_fn(x, x).item() == 0
    out = x.clone().requires_grad_(True)
    loss = loss_fn(out, y)
    assert loss.item() > 0
    loss.backward()
    assert out.grad is not None and out.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss_fn.parameters())
    # transparent pixels are black whatever their colour
    a = x.clone()
    a[:, 3] = -1
    b = a.clone()
    b[:, :3] = torch.rand(2, 3, 32, 32)
    assert loss_fn(a, b).item() == 0


def test_perceptual_weights_errors(tmp_path):
    with pytest.raises(ValueError, match="no such"):
        load_vgg16_features(tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="features.14.weight"):
        load_vgg16_features(_fake_vgg16(tmp_path / "bad.pth", drop="features.14.weight"))
    (tmp_path / "junk.pth").write_bytes(b"not a state dict")
    with pytest.raises(ValueError, match="cannot read"):
        load_vgg16_features(tmp_path / "junk.pth")
