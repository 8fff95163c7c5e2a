"""Tests for cryoviz.volumes: voxel and implicit volume models."""

from __future__ import annotations

import pytest
import torch

from cryoviz.fourier import centered_fft3
from cryoviz.geometry import random_rotations
from cryoviz.imaging import forward_fourier, volume_to_fourier
from cryoviz.volumes import ImplicitVolume, VoxelVolume, resample_volume
from cryoviz.volumes.implicit import canonical_sign


def _blob(box: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    k = torch.arange(box, dtype=torch.float32) - box // 2
    gz, gy, gx = torch.meshgrid(k, k, k, indexing="ij")
    vol = torch.zeros(box, box, box)
    for _ in range(4):
        c = (torch.rand(3, generator=gen) - 0.5) * box / 3
        vol += torch.exp(-((gx - c[0]) ** 2 + (gy - c[1]) ** 2 + (gz - c[2]) ** 2) / 6.0)
    return vol


def test_voxel_slices_equal_forward_fourier():
    box = 16
    vol = _blob(box)
    model = VoxelVolume(box, 3.0, initial=vol)
    rot = random_rotations(5, generator=torch.Generator().manual_seed(1))
    got = model.slices(rot, None, box, 3.0)
    want = forward_fourier(volume_to_fourier(vol), rot, box, 3.0)
    assert got.shape == (5, box, box // 2 + 1)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(model.volume(None), vol)


def test_voxel_gradient_flows():
    box = 12
    model = VoxelVolume(box, 2.0)
    rot = random_rotations(3, generator=torch.Generator().manual_seed(2))
    model.slices(rot, None, box, 2.0).abs().pow(2).sum().backward()
    assert model.map.grad is not None


def test_resample_volume_keeps_values():
    vol = _blob(16).double()
    up = resample_volume(vol, 32)
    back = resample_volume(up, 16)
    # equal up to the unpaired Nyquist plane of the even box
    torch.testing.assert_close(back, vol, atol=1e-3 * float(vol.max()), rtol=0)
    assert abs(float(up.max()) - float(vol.max())) < 0.1 * float(vol.max())


def test_canonical_sign():
    q = torch.tensor([[0.1, 0.0, 0.0], [-0.1, 0.0, 0.0], [0.0, -0.1, 0.0], [0.3, -0.1, 0.2],
                      [0.3, 0.1, -0.2], [0.0, 0.0, 0.0]])
    assert canonical_sign(q).tolist() == [1.0, -1.0, -1.0, 1.0, -1.0, 1.0]
    # q and -q always have opposite signs (except 0)
    r = torch.randn(100, 3)
    assert torch.all(canonical_sign(r) == -canonical_sign(-r))


@pytest.mark.parametrize("domain", ["hartley", "fourier"])
@pytest.mark.parametrize("box", [12, 13])
def test_implicit_half_space_equals_full(domain, box):
    torch.manual_seed(0)
    model = ImplicitVolume(box, 4.0, latent_dim=2, width=32, depth=2, pe_dim=16,
                           domain=domain).double()
    z = torch.tensor([0.3, -0.5], dtype=torch.float64)
    model.points_evaluated = 0
    half = model.lattice_transform(z)
    calls_half = model.points_evaluated
    model.points_evaluated = 0
    full = model.lattice_transform(z, half_space=False).detach()
    half = half.detach()
    calls_full = model.points_evaluated
    torch.testing.assert_close(half, full)
    assert calls_half < 0.6 * calls_full
    # Hermitian: the map is real
    vol_complex = torch.fft.fftshift(torch.fft.ifftn(torch.fft.ifftshift(full)))
    assert float(vol_complex.imag.abs().max()) < 1e-10 * float(vol_complex.real.abs().max())
    # beyond Nyquist: zero
    k = (torch.arange(box) - box // 2) / box
    gz, gy, gx = torch.meshgrid(k, k, k, indexing="ij")
    outside = (gx**2 + gy**2 + gz**2).sqrt() > 0.5
    assert float(full[outside].abs().max()) == 0.0


@pytest.mark.parametrize("domain", ["hartley", "fourier"])
def test_implicit_slices_match_volume_slices(domain):
    """Slices of the network equal central slices of its own lattice (on-lattice rotations)."""
    box = 12
    model = ImplicitVolume(box, 4.0, latent_dim=1, width=32, depth=1, pe_dim=16,
                           domain=domain).double()
    z = torch.tensor([[0.2]], dtype=torch.float64)
    # rotation by 90 degrees about z maps lattice points onto lattice points
    rot = torch.tensor([[[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]],
                       dtype=torch.float64)
    sl = model.slices(rot, z, box, 4.0)
    lattice = model.lattice_transform(z[0], half_space=False)
    from cryoviz.projection import extract_slices
    want = extract_slices(lattice, rot, box, rfft=True)
    torch.testing.assert_close(sl, want)
    # and the homogeneous part: the volume's transform is the lattice
    vol = model.volume(z[0])
    torch.testing.assert_close(centered_fft3(vol.to(torch.complex128)), lattice)


@pytest.mark.parametrize("domain", ["hartley", "fourier"])
def test_implicit_masked_slices_read_the_network_only_where_drawn(domain):
    """With a pixel mask the slices equal the full slices where it is true (inside
    Nyquist), are zero elsewhere, and the network is read only at those points;
    the gradient with respect to ``z`` is that of the full slices' masked sum."""
    box = 12
    model = ImplicitVolume(box, 4.0, latent_dim=2, width=16, depth=1, pe_dim=8,
                           domain=domain).double()
    gen = torch.Generator().manual_seed(5)
    rot = random_rotations(3, generator=gen)
    mask = torch.rand(3, box, box // 2 + 1, generator=gen) < 0.4
    ky = torch.fft.fftshift(torch.fft.fftfreq(box, dtype=torch.float64))[:, None]
    kx = torch.fft.rfftfreq(box, dtype=torch.float64)[None, :]
    drawn = mask & ((kx**2 + ky**2).sqrt() < 0.5)
    z_full = torch.randn(3, 2, dtype=torch.float64, generator=gen, requires_grad=True)
    z_part = z_full.detach().clone().requires_grad_(True)
    full = model.slices(rot, z_full, box, 4.0)
    before = model.points_evaluated
    part = model.slices(rot, z_part, box, 4.0, mask)
    reads = 2 if domain == "hartley" else 1
    assert model.points_evaluated - before == reads * int(drawn.sum()) > 0
    torch.testing.assert_close(part[drawn], full[drawn])
    assert float(part.detach()[~drawn].abs().max()) == 0.0
    assert float(full.detach()[drawn].abs().min()) > 0
    (full.abs() ** 2 * drawn).sum().backward()
    (part.abs() ** 2).sum().backward()
    torch.testing.assert_close(z_part.grad, z_full.grad)


@pytest.mark.parametrize("masked", [False, True])
def test_implicit_slices_in_pieces_equal_one_piece(monkeypatch, masked):
    """On the CPU the network is read on pieces of the batch (``CPU_PIECE_FLOATS``):
    the slices and the gradients are those of one piece."""
    import cryoviz.volumes.implicit as implicit  # noqa: PLC0415

    box = 12
    model = ImplicitVolume(box, 4.0, latent_dim=2, width=16, depth=1, pe_dim=8,
                           domain="fourier").double()
    gen = torch.Generator().manual_seed(2)
    rot = random_rotations(5, generator=gen)
    z = torch.randn(5, 2, dtype=torch.float64, generator=gen)
    mask = (torch.rand(5, box, box // 2 + 1, generator=gen) < 0.5) if masked else None
    results = []
    for floats in (2**40, 16 * 64):  # one piece; pieces of 64 points (one image unmasked)
        monkeypatch.setattr(implicit, "CPU_PIECE_FLOATS", floats)
        model.zero_grad()
        zz = z.clone().requires_grad_(True)
        before = model.points_evaluated
        out = model.slices(rot, zz, box, 4.0, mask)
        (out.abs() ** 2).sum().backward()
        results.append((out.detach(), zz.grad, model.mlp.inp.weight.grad.clone(),
                        model.points_evaluated - before))
    (one, z_one, w_one, n_one), (pieces, z_pieces, w_pieces, n_pieces) = results
    torch.testing.assert_close(pieces, one)
    torch.testing.assert_close(z_pieces, z_one)
    torch.testing.assert_close(w_pieces, w_one)
    assert n_pieces == n_one > 0


def test_implicit_volume_rendered_in_pieces_equals_one_piece(monkeypatch):
    """The default render reads the network in pieces of ``CPU_PIECE_FLOATS``
    activations on the CPU (here 100 points of width 16): the same map as one piece."""
    import cryoviz.volumes.implicit as implicit  # noqa: PLC0415

    monkeypatch.setattr(implicit, "CPU_PIECE_FLOATS", 16 * 100)
    model = ImplicitVolume(12, 4.0, latent_dim=1, width=16, depth=1, pe_dim=8,
                           domain="fourier").double()
    z = torch.tensor([0.3], dtype=torch.float64)
    before = model.points_evaluated
    pieces = model.volume(z)
    points = model.points_evaluated - before
    one = ImplicitVolume(12, 4.0, latent_dim=1, width=16, depth=1, pe_dim=8,
                         domain="fourier", chunk_points=10**6).double()
    one.load_state_dict(model.state_dict())
    torch.testing.assert_close(pieces, one.volume(z))
    assert points > 100  # several pieces were read


def test_implicit_gradient_flows_and_uses_z():
    box = 12
    model = ImplicitVolume(box, 4.0, latent_dim=3, width=32, depth=2, pe_dim=8)
    rot = random_rotations(4, generator=torch.Generator().manual_seed(3))
    z = torch.randn(4, 3, requires_grad=True)
    out = model.slices(rot, z, box, 4.0)
    assert out.shape == (4, box, box // 2 + 1) and out.is_complex()
    out.abs().pow(2).sum().backward()
    assert z.grad is not None and float(z.grad.abs().sum()) > 0
    assert all(p.grad is not None for p in model.mlp.parameters())


def test_implicit_other_box_same_extent():
    model = ImplicitVolume(12, 4.0, width=16, depth=1, pe_dim=8, domain="fourier").double()
    small = model.volume(None)
    big = model.volume(None, box_size=24)
    torch.testing.assert_close(resample_volume(big, 12), small)


@pytest.mark.parametrize("domain", ["hartley", "fourier"])
def test_implicit_values_from_cached_first_layer_equal_evaluate(domain):
    model = ImplicitVolume(16, 2.0, latent_dim=2, width=24, depth=2, pe_dim=8, domain=domain)
    gen = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))
    q = 0.45 * (2 * torch.rand(300, 3, generator=gen) - 1)
    q = q[torch.linalg.vector_norm(q, dim=-1) < 0.5]
    q[0] = 0.0  # F(0) is real
    z = torch.tensor([0.7, -0.3])
    with torch.no_grad():
        expected = model.evaluate(q[None], z[None])[0]
        first = model.first_layer_at(q)
        kept = first.clone()
        got = model.values_from_first_layer(first, q, z)
    assert first.shape == (len(q), 2 if domain == "hartley" else 1, 24)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    assert float(got[0].imag) == 0.0
    torch.testing.assert_close(first, kept, rtol=0, atol=0)  # the cache is not written to
    # the no-autograd branch of the network (in place) is the autograd one's arithmetic
    graded = model.values_from_first_layer(first, q, z)
    assert graded.requires_grad
    torch.testing.assert_close(graded.detach(), got, rtol=0, atol=0)
    with pytest.raises(ValueError, match="needs z"):
        model.values_from_first_layer(first, q, None)
