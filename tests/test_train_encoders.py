"""Image encoders: the circular mask, real-space and Hartley inputs, the latent table, the
joint pose + latent CNN."""

from __future__ import annotations

import pytest
import torch

from cryoviz.fourier import centered_fft2
from cryoviz.inference.amortized_encoder import PoseEncoder
from cryoviz.train.encoders import (
    JointPoseLatentEncoder,
    LatentTable,
    MLPEncoder,
    circular_mask,
)


def _hartley(images: torch.Tensor) -> torch.Tensor:
    ft = centered_fft2(images) / images.shape[-1]
    return ft.real - ft.imag


def test_circular_mask_is_a_disc_around_the_centre():
    mask = circular_mask(16)
    assert mask.shape == (16, 16) and bool(mask[8, 8]) and bool(mask[8, 0])
    assert not bool(mask[0, 0]) and not bool(mask[0, 1])
    assert int(mask.sum()) == int(circular_mask(16, 8.0).sum())
    assert int(circular_mask(16, 2.0).sum()) == 13  # |k|^2 <= 4 on the integer grid


def test_hartley_input_is_the_real_encoder_on_the_transformed_image():
    """The unitary centred Hartley transform is its own inverse (even box): a Hartley
    encoder fed H(x) computes exactly what the real-space encoder with the same
    weights computes on x (the two discs are the same index set)."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(5, 16, 16, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(_hartley(_hartley(images)), images)
    real = MLPEncoder(16, 3, width=12, depth=2).double()
    hartley = MLPEncoder(16, 3, width=12, depth=2, input_domain="hartley").double()
    hartley.load_state_dict(real.state_dict())
    for enc in (real, hartley):
        enc.input_scale.fill_(2.0)
    mu_r, logvar_r = real(images)
    mu_h, logvar_h = hartley(_hartley(images))
    torch.testing.assert_close(mu_h, mu_r)
    torch.testing.assert_close(logvar_h, logvar_r)
    assert not torch.allclose(hartley(images)[0], mu_r)  # a different input otherwise


def test_input_scale_and_deterministic_encoder():
    enc = MLPEncoder(16, 2, width=8, depth=1, variational=False)
    images = torch.randn(4, 16, 16)
    mu, logvar = enc(images)
    assert mu.shape == (4, 2) and logvar is None
    enc.input_scale.fill_(3.0)
    torch.testing.assert_close(enc(3.0 * images)[0], mu)
    with pytest.raises(ValueError, match="input_domain"):
        MLPEncoder(16, 2, input_domain="fourier")


def test_latent_table_returns_its_rows():
    table = LatentTable(10, 3, seed=1)
    index = torch.tensor([4, 0, 4])
    mu, logvar = table(None, index)
    assert logvar is None
    torch.testing.assert_close(mu, table.table[index])


def test_joint_encoder_reads_poses_and_latent_from_one_trunk():
    joint = JointPoseLatentEncoder(16, 4.0, latent_dim=3, channels=4, hidden=32, seed=5,
                                   heads=2)
    images = torch.randn(6, 16, 16, generator=torch.Generator().manual_seed(1))
    joint.input_scale.fill_(2.0)  # the one buffer the trainer sets
    assert float(joint.poses.input_scale) == 2.0 and joint.heads == 2
    rotations, shifts, mu, logvar = joint.joint(images)
    assert rotations.shape == (6, 2, 3, 3) and shifts.shape == (6, 2, 2)
    assert mu.shape == logvar.shape == (6, 3)
    torch.testing.assert_close(joint.hypotheses(images), (rotations, shifts))
    torch.testing.assert_close(joint(images), (mu, logvar))
    assert float(shifts.detach().abs().max()) <= 4.0
    eye = torch.linalg.det(rotations)
    torch.testing.assert_close(eye, torch.ones_like(eye))
    # its pose part is the pose encoder of the same seed, weight for weight
    alone = PoseEncoder(16, 4.0, 4, 32, seed=5, heads=2)
    for name, value in alone.state_dict().items():
        if name != "input_scale":
            assert torch.equal(joint.poses.state_dict()[name], value), name
    # the latent depends on the shared features: a changed trunk changes it
    with torch.no_grad():
        joint.poses.features[0].weight.mul_(1.5)
    assert not torch.allclose(joint(images)[0], mu)
    with pytest.raises(ValueError, match="latent_dim"):
        JointPoseLatentEncoder(16, 4.0, latent_dim=0)
