"""LatticeDecoder: the same maps as ``volume.volume``, and an exact low-pass preview."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryoviz.errors import InputError
from cryoviz.fourier import centered_fft3, centered_ifft3
from cryoviz.train.evaluate import LatticeDecoder
from cryoviz.volumes import ImplicitVolume, VoxelVolume


def _model(domain: str, box: int) -> ImplicitVolume:
    model = ImplicitVolume(box, 3.0, latent_dim=3, width=16, depth=1, pe_dim=8, domain=domain)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # move away from the initial weights so that all outputs matter
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    return model.eval()


@pytest.mark.parametrize("domain", ["hartley", "fourier"])
@pytest.mark.parametrize(("model_box", "box"), [(16, 16), (15, 15), (16, 24), (16, 12)])
def test_maps_equal_the_models_own_volume(domain, model_box, box):
    model = _model(domain, model_box)
    z = torch.tensor([0.3, -1.2, 0.7])
    with torch.no_grad():
        expected = model.volume(z, box)
    decoder = LatticeDecoder(model, box, chunk_points=37)  # several uneven chunks
    got = decoder(z.numpy())
    assert got.shape == (box,) * 3 and got.dtype == torch.float32
    scale = float(expected.abs().max())
    assert scale > 0
    torch.testing.assert_close(got, expected.float(), rtol=0, atol=1e-5 * scale)


@pytest.mark.parametrize("domain", ["hartley", "fourier"])
def test_preview_is_the_full_map_low_passed_and_costs_no_extra_work(domain):
    box = 16
    model = _model(domain, box)
    decoder = LatticeDecoder(model, box)
    z = np.array([0.5, 0.1, -0.4], dtype=np.float32)
    model.points_evaluated = 0
    decoder(z)
    full_cost = model.points_evaluated
    model.points_evaluated = 0
    stages = list(decoder.progressive(z, preview_fraction=0.5))
    assert [s for s, _ in stages] == ["preview", "full"]
    assert model.points_evaluated == full_cost  # the preview's values are reused
    preview, full = stages[0][1], stages[1][1]
    # the same values up to float32 rounding: how a matrix product blocks its rows (and
    # so the order of its sums) may depend on the row count, and the preview's two
    # calls cut the points elsewhere than one call does (on the AMX Xeon of 2026-12-08
    # about 1 in 8 voxels differed in the last bits, in some runs)
    whole = decoder(z)
    torch.testing.assert_close(full, whole, rtol=0, atol=1e-6 * float(whole.abs().max()))
    # the sharp ball |q| < 0.25 (model cycles / pixel) applied to the full map
    axis = (torch.arange(box) - box // 2) / box
    gz, gy, gx = torch.meshgrid(axis, axis, axis, indexing="ij")
    ball = (gx ** 2 + gy ** 2 + gz ** 2).sqrt() < 0.25
    lowpassed = centered_ifft3(centered_fft3(full.double()) * ball).real.float()
    scale = float(full.abs().max())
    torch.testing.assert_close(preview, lowpassed, rtol=0, atol=1e-5 * scale)
    assert float((preview - full).abs().max()) > 1e-3 * scale  # it is not the full map
    # about an eighth of the network reads
    assert 0.08 < decoder.preview_points(0.5) / decoder.n_points < 0.2
    assert [s for s, _ in decoder.progressive(z, preview_fraction=1.0)] == ["full"]


def test_other_models_fall_back_to_their_volume():
    initial = torch.randn(8, 8, 8, generator=torch.Generator().manual_seed(0))
    model = VoxelVolume(8, 2.0, initial=initial).eval()
    decoder = LatticeDecoder(model, 8)
    with torch.no_grad():
        expected = model.volume(None, 8).float()
    torch.testing.assert_close(decoder(None), expected)
    stages = list(decoder.progressive(None))
    assert [s for s, _ in stages] == ["full"] and decoder.n_points == 0


def test_bad_latent_is_a_clear_error():
    decoder = LatticeDecoder(_model("hartley", 8), 8)
    with pytest.raises(InputError, match="length 3"):
        decoder(np.zeros(5))
    with pytest.raises(InputError, match="z"):
        decoder(None)
    with pytest.raises(InputError, match="preview_fraction"):
        next(decoder.progressive(np.zeros(3), preview_fraction=-1.0))


def test_a_suspended_preview_leaves_autograd_on():
    """Grad mode is thread-local: a consumer between the two stages (a napari
    worker thread reused for training) must not run under inference mode."""
    decoder = LatticeDecoder(_model("hartley", 12), 12)
    stages = decoder.progressive(np.zeros(3, dtype=np.float32), preview_fraction=0.5)
    assert next(stages)[0] == "preview"
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    assert next(stages)[0] == "full"
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()


@pytest.mark.parametrize("domain", ["hartley", "fourier"])
def test_bf16_network_gives_nearly_the_float32_map(domain):
    """bfloat16 autocast runs the MLP only: the map is the float32 one to a few 1e-3."""
    model = ImplicitVolume(24, 3.0, latent_dim=3, width=64, depth=3, pe_dim=32, domain=domain,
                           pe_sigma=0.04)
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    model.eval()
    z = np.array([0.5, 0.1, -0.4], dtype=np.float32)
    exact = LatticeDecoder(model, 24)(z)
    fast = LatticeDecoder(model, 24, precision="bf16")
    assert fast.network_dtype == torch.bfloat16
    got = fast(z)
    rel = float((got - exact).norm() / exact.norm())
    assert 0.0 < rel < 0.01, rel  # measured 2026-12-04: 0.0026 (hartley), 0.0034 (fourier)
    stages = dict(fast.progressive(z, 0.5))
    torch.testing.assert_close(stages["full"], got, rtol=0, atol=0)
    with pytest.raises(InputError, match="precision"):
        LatticeDecoder(model, 24, precision="fp16")  # CUDA only


@pytest.mark.parametrize("domain", ["hartley", "fourier"])
@pytest.mark.parametrize("latent_dim", [0, 3])
def test_cached_first_layer_gives_the_uncached_map(domain, latent_dim):
    model = ImplicitVolume(12, 3.0, latent_dim=latent_dim, width=16, depth=2, pe_dim=8,
                           domain=domain)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    model.eval()
    z = np.array([0.4, -0.9, 0.2], dtype=np.float32) if latent_dim else None
    cached = LatticeDecoder(model, 12, chunk_points=50)
    plain = LatticeDecoder(model, 12, chunk_points=50, cache_bytes=0)
    assert cached.cached and not plain.cached
    reads = 2 if domain == "hartley" else 1
    assert cached._first.shape == (cached.n_points, reads, 16)
    # one byte short of the cache's size: no cache
    assert not LatticeDecoder(model, 12, cache_bytes=cached._first.numel() * 4 - 1).cached
    model.points_evaluated = 0
    got = cached(z)
    assert model.points_evaluated == reads * cached.n_points  # the reads are still counted
    expected = plain(z)
    scale = float(expected.abs().max())
    assert scale > 0
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5 * scale)
    stages = dict(cached.progressive(z, 0.5))  # other chunk boundaries: rounding only
    torch.testing.assert_close(stages["full"], got, rtol=0, atol=1e-6 * scale)
    torch.testing.assert_close(stages["preview"], dict(plain.progressive(z, 0.5))["preview"],
                               rtol=0, atol=1e-5 * scale)
