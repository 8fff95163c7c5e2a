"""DeformationVolume (3DFlex-style canonical map + displacement field): warp, projection,
regularisers, consensus initialisation."""

from __future__ import annotations

import math

import pytest
import torch

from cryoviz.errors import InputError
from cryoviz.imaging import apply_shift_and_ctf, render_images
from cryoviz.train.recipes import get_recipe
from cryoviz.volumes import DeformationVolume, VoxelVolume
from cryoviz.volumes.deformation import consensus_map, rigidity_penalty, smoothness_penalty
from tests._phantoms import Blobs, blob_volume, random_blobs, random_rotations

BOX = 20
APIX = 5.0


def _blobs() -> Blobs:
    return random_blobs(BOX, 5, seed=3, sigma_range=(1.5, 2.5))


def _model(initial: torch.Tensor, control_points: int = 5) -> DeformationVolume:
    return DeformationVolume(BOX, APIX, latent_dim=2, initial=initial,
                             control_points=control_points, width=8, depth=1)


def _constant_field(model: DeformationVolume, u_xyz: tuple[float, float, float]) -> None:
    """Make the generator output the displacement ``u_xyz`` (pixels) everywhere, for any z."""
    g = model.control_points
    head = model.generator[-1]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor(u_xyz, dtype=torch.float32)[:, None]
                        .expand(3, g**3).reshape(-1) / model.displacement_scale_px)


def _control_positions(model: DeformationVolume) -> torch.Tensor:
    """``(G, G, G, 3)`` xyz positions (px from the centre) of the control points."""
    d, g = model.box_size, model.control_points
    a = torch.linspace(-(d // 2), d - 1 - d // 2, g, dtype=torch.float64)
    cz, cy, cx = torch.meshgrid(a, a, a, indexing="ij")
    return torch.stack([cx, cy, cz], dim=-1)


def _field(positions: torch.Tensor, matrix: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """``(1, 3, G, G, G)`` displacement of the map ``x -> A x + t``: ``u = (A - I) x + t``."""
    u = positions @ matrix.T - positions + shift
    return u.permute(3, 0, 1, 2)[None]


def test_zero_displacement_is_the_canonical_map():
    truth = blob_volume(_blobs(), BOX).float()
    model = _model(truth)
    _constant_field(model, (0.0, 0.0, 0.0))
    z = torch.randn(2)
    with torch.no_grad():
        deformed = model.volume(z)
        assert torch.equal(model.volume(None), truth)
    assert torch.allclose(deformed, truth, atol=1e-5 * float(truth.abs().max()))


def test_constant_displacement_shifts_the_map():
    """V(x) = V_c(x + u): a constant u moves every blob by -u (integer and half pixels)."""
    blobs = _blobs()
    model = _model(blob_volume(blobs, BOX).float())
    for u in ((2.0, -1.0, 1.0), (0.5, 0.0, -1.5)):
        _constant_field(model, u)
        moved = Blobs(blobs.centers - torch.tensor(u, dtype=torch.float64), blobs.sigmas,
                      blobs.amplitudes)
        expected = blob_volume(moved, BOX).float()
        with torch.no_grad():
            got = model.volume(torch.zeros(2))
        err = float((got - expected).norm() / expected.norm())
        # integer shifts are exact; half-pixel ones carry the trilinear interpolation error
        limit = 1e-5 if all(float(v).is_integer() for v in u) else 0.05
        assert err < limit, (u, err)


def test_slices_match_voxel_fourier_slices():
    """Zero deformation: the real-space projection agrees with gridding-corrected slicing."""
    truth = blob_volume(_blobs(), BOX).float()
    rotations = random_rotations(6, seed=4).float()
    with torch.no_grad():
        ours = _model(truth).slices(rotations, None, BOX, APIX)
        ref = VoxelVolume(BOX, APIX, initial=truth).slices(rotations, None, BOX, APIX)
    corr = float((ours.conj() * ref).real.sum() / (ours.norm() * ref.norm()))
    assert corr > 0.999, corr
    assert float((ours - ref).norm() / ref.norm()) < 0.05


def test_constant_displacement_projects_as_an_image_shift():
    """A particle-frame displacement u appears as the lab image shift -(R u)_xy."""
    truth = blob_volume(_blobs(), BOX).float()
    model = _model(truth)
    rotations = random_rotations(5, seed=6).float()
    u = torch.tensor([1.0, -2.0, 1.5])
    _constant_field(model, tuple(u.tolist()))
    with torch.no_grad():
        deformed = model.slices(rotations, torch.zeros(5, 2), BOX, APIX)
        canonical = model.slices(rotations, None, BOX, APIX)
    lab_shift_px = -(rotations @ u)[:, :2]
    expected = apply_shift_and_ctf(canonical, APIX, lab_shift_px * APIX)
    rel = float((deformed - expected).norm() / expected.norm())
    assert rel < 0.1, rel
    # and the shift is not a no-op: the unshifted slices are far off
    assert float((deformed - canonical).norm() / canonical.norm()) > 3 * rel


def test_rigidity_zero_for_rigid_motion_positive_for_shear():
    model = _model(torch.zeros(BOX, BOX, BOX), control_points=6)
    pos = _control_positions(model)
    a = math.radians(40.0)
    rot = torch.tensor([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0],
                        [0.0, 0.0, 1.0]], dtype=torch.float64)
    rigid = _field(pos, rot, torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
    assert float(rigidity_penalty(rigid, model.spacing_px)) < 1e-12
    shear_matrix = torch.eye(3, dtype=torch.float64)
    shear_matrix[0, 1] = 0.3
    shear = _field(pos, shear_matrix, torch.zeros(3, dtype=torch.float64))
    weak = shear_matrix.clone()
    weak[0, 1] = 0.1
    big = float(rigidity_penalty(shear, model.spacing_px))
    small = float(rigidity_penalty(_field(pos, weak, torch.zeros(3, dtype=torch.float64)),
                                   model.spacing_px))
    assert big > small > 1e-3, (big, small)
    # J = I + 0.3 e_x e_y^T: ||J^T J - I||_F^2 = 2 * 0.3^2 + 0.3^4 in every cell
    assert big == pytest.approx(2 * 0.3**2 + 0.3**4, rel=1e-9)


def test_smoothness_zero_for_affine_larger_for_noise():
    model = _model(torch.zeros(BOX, BOX, BOX), control_points=6)
    g = model.control_points
    pos = _control_positions(model)
    constant = torch.full((1, 3, g, g, g), 1.7, dtype=torch.float64)
    affine = _field(pos, torch.tensor([[1.1, 0.2, 0.0], [0.0, 0.9, 0.1], [0.05, 0.0, 1.0]],
                                      dtype=torch.float64), torch.ones(3, dtype=torch.float64))
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 3, g, g, g, generator=gen, dtype=torch.float64)
    smooth = torch.sin(pos[..., 0] / 4.0)[None, None].expand(1, 3, g, g, g)
    assert float(smoothness_penalty(constant)) < 1e-20
    assert float(smoothness_penalty(affine)) < 1e-20
    assert float(smoothness_penalty(noise)) > 10 * float(smoothness_penalty(smooth)) > 0


def test_regularization_loss_weights_and_gradients():
    model = DeformationVolume(BOX, APIX, latent_dim=2, control_points=4, width=8, depth=1,
                              smoothness_weight=0.5, rigidity_weight=2.0)
    z = torch.randn(3, 2, requires_grad=True)
    terms = model.regularization(z)
    loss = model.regularization_loss(z)
    assert float(loss.detach()) == pytest.approx(0.5 * float(terms["smoothness"])
                                        + 2.0 * float(terms["rigidity"]), rel=1e-6)
    assert float(loss) > 0
    loss.backward()
    assert float(z.grad.abs().sum()) > 0
    assert float(model.generator[-1].weight.grad.abs().sum()) > 0
    assert float(model.regularization_loss(None)) == 0.0


def test_slices_differentiable_in_map_generator_and_z():
    model = _model(blob_volume(_blobs(), BOX).float())
    z = torch.randn(4, 2, requires_grad=True)
    out = model.slices(random_rotations(4, seed=1).float(), z, BOX, APIX)
    assert out.shape == (4, BOX, BOX // 2 + 1) and out.is_complex()
    (out.abs() ** 2).sum().backward()
    for grad in (model.map.grad, model.generator[-1].weight.grad, z.grad):
        assert grad is not None and float(grad.abs().sum()) > 0


def test_consensus_map_recovers_a_homogeneous_map():
    truth = blob_volume(_blobs(), BOX).float()
    rotations = random_rotations(300, seed=2).float()
    images = render_images(truth, rotations, APIX)
    images = images + 0.3 * float(images.std()) * torch.randn(
        images.shape, generator=torch.Generator().manual_seed(1))
    got = consensus_map(lambda index: images[torch.as_tensor(index)], 300, rotations, APIX,
                        batch_size=128)
    a, b = got - got.mean(), truth - truth.mean()
    corr = float((a * b).sum() / (a.norm() * b.norm()))
    assert corr > 0.95, corr


def test_bad_settings():
    with pytest.raises(ValueError, match="latent_dim"):
        DeformationVolume(BOX, APIX, latent_dim=0)
    with pytest.raises(ValueError, match="control_points"):
        DeformationVolume(BOX, APIX, latent_dim=2, control_points=2)
    with pytest.raises(ValueError, match="initial map"):
        DeformationVolume(BOX, APIX, latent_dim=2, initial=torch.zeros(4, 4, 4))
    with pytest.raises(ValueError, match="box"):
        _model(torch.zeros(BOX, BOX, BOX)).slices(torch.eye(3)[None], None, BOX + 2, APIX)
    with pytest.raises(InputError, match="canonical_init"):
        get_recipe("3dflex", canonical_init="random")
    with pytest.raises(InputError, match="control_points"):
        get_recipe("3dflex", control_points=2)
    with pytest.raises(InputError, match="zdim"):
        get_recipe("3dflex", zdim=0)
