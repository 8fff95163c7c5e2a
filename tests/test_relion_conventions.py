"""RELION angles, origins and defocus angle, checked on an asymmetric phantom.

The expectations are derived by hand from RELION's documented conventions
(written out here, not taken from cryoviz): the Euler matrix A of
``Euler_angles2matrix(rot, tilt, psi)`` maps map coordinates to image
coordinates; ``rlnOriginXAngst`` is the translation that re-centres the
particle (the particle sits at ``-origin`` in the image); the defocus at
azimuth ``alpha`` is ``(U+V)/2 + (U-V)/2 cos(2 (alpha - rlnDefocusAngle))``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

from cryoviz.ctf import compute_ctf_2d, electron_wavelength_angstrom
from cryoviz.fourier import centered_irfft2, phase_shift
from cryoviz.gaussian_projection import project_gaussians_fourier
from cryoviz.gaussians import GaussianMixture
from cryoviz.io.mrc import write_stack
from cryoviz.io.particles import load_particles
from cryoviz.io.star import write_star_blocks

BOX = 48
APIX = 2.0


def relion_matrix(rot: float, tilt: float, psi: float) -> np.ndarray:
    """RELION's Euler_angles2matrix, element by element (degrees in)."""
    a, b, g = np.deg2rad([rot, tilt, psi])
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    return np.array([
        [cg * cc - sg * sa, cg * cs + sg * ca, -cg * sb],
        [-sg * cc - cg * sa, -sg * cs + cg * ca, sg * sb],
        [sc, ss, cb],
    ])


def write_relion_star(path, stack_name: str, rows: list[dict]) -> None:
    optics = pd.DataFrame({
        "rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"],
        "rlnVoltage": [300.0], "rlnSphericalAberration": [2.7],
        "rlnAmplitudeContrast": [0.1], "rlnImagePixelSize": [APIX],
        "rlnImageSize": [BOX], "rlnImageDimensionality": [2],
    })
    particles = pd.DataFrame([
        {"rlnImageName": f"{i + 1:06d}@{stack_name}", "rlnOpticsGroup": 1, **row}
        for i, row in enumerate(rows)
    ])
    write_star_blocks(path, {"optics": optics, "particles": particles})


@pytest.fixture()
def star_with_angles(tmp_path):
    angles = [(0.0, 0.0, 0.0), (0.0, 90.0, 0.0), (90.0, 0.0, 0.0), (30.0, 60.0, -40.0),
              (-120.0, 135.0, 75.0)]
    origins = [(0.0, 0.0), (4.0, 0.0), (0.0, -6.0), (2.0, 2.0), (-3.0, 5.0)]
    write_stack(tmp_path / "p.mrcs", np.zeros((len(angles), BOX, BOX), np.float32), APIX)
    rows = [
        {"rlnAngleRot": r, "rlnAngleTilt": t, "rlnAnglePsi": p,
         "rlnOriginXAngst": ox, "rlnOriginYAngst": oy,
         "rlnDefocusU": 20000.0, "rlnDefocusV": 10000.0, "rlnDefocusAngle": 30.0}
        for (r, t, p), (ox, oy) in zip(angles, origins, strict=True)
    ]
    write_relion_star(tmp_path / "p.star", "p.mrcs", rows)
    return tmp_path / "p.star", angles, origins


def centroid_xy(image: torch.Tensor) -> np.ndarray:
    """Centre of mass (x, y) in Å relative to the box centre, of the positive part."""
    img = image.clamp(min=0).double()
    ax = (torch.arange(BOX, dtype=torch.float64) - BOX // 2) * APIX
    total = img.sum()
    return np.array([(img.sum(0) * ax).sum() / total, (img.sum(1) * ax).sum() / total])


def test_euler_angles_and_origins_place_a_blob_the_relion_way(star_with_angles):
    path, angles, origins = star_with_angles
    particles = load_particles(path)
    position = np.array([10.0, -6.0, 14.0])  # Å, an off-axis point in the map frame
    blob = GaussianMixture(
        centres_angstrom=torch.as_tensor(position[None, :], dtype=torch.float64),
        amplitudes=torch.tensor([1.0], dtype=torch.float64),
        sigmas_angstrom=torch.tensor([3.0], dtype=torch.float64),
    )
    rotations = torch.as_tensor(particles.rotations)
    ft = project_gaussians_fourier(blob, rotations, BOX, APIX, dtype=torch.float64)
    shifts_px = torch.as_tensor(particles.shifts_angstrom) / APIX
    images = centered_irfft2(phase_shift(ft, shifts_px, BOX), BOX)
    for k, ((rot, tilt, psi), origin) in enumerate(zip(angles, origins, strict=True)):
        expected = (relion_matrix(rot, tilt, psi) @ position)[:2] - np.array(origin)
        # 0.2 Å tolerance: a sign or transpose error moves the blob by many Å
        np.testing.assert_allclose(centroid_xy(images[k]), expected, atol=0.2)


def test_tilt_90_sends_map_z_to_minus_image_x(star_with_angles):
    """Independent special case: A(0, 90, 0) = [[0,0,-1],[0,1,0],[1,0,0]]."""
    path, _, _ = star_with_angles
    rotations = load_particles(path).rotations
    np.testing.assert_allclose(rotations[1], [[0, 0, -1], [0, 1, 0], [1, 0, 0]], atol=1e-12)


def test_defocus_angle_sets_the_u_axis(star_with_angles):
    path, _, _ = star_with_angles
    ctf = load_particles(path).ctf.subset(slice(0, 1))
    box = 256
    values = compute_ctf_2d(ctf, box, APIX, rfft=False, dtype=torch.float64)[0]
    lam = electron_wavelength_angstrom(300.0)
    for azimuth_deg, defocus in ((30.0, 20000.0), (120.0, 10000.0)):
        # first zero of -(sqrt(1-w^2) sin g - w cos g): tan(g) = w / sqrt(1 - w^2)
        # with g ~ -pi lambda defocus s^2 (Cs negligible at low s): solve numerically
        s = np.linspace(0.001, 0.2, 40000)
        gamma = 2 * math.pi * (-0.5 * defocus * lam * s**2 + 0.25 * 2.7e7 * lam**3 * s**4)
        expected_curve = -(math.sqrt(1 - 0.01) * np.sin(gamma) - 0.1 * np.cos(gamma))
        first_zero = s[np.flatnonzero(np.diff(np.sign(expected_curve)))[0]]
        a = math.radians(azimuth_deg)
        radius_px = np.arange(1, 40)
        kx = radius_px * math.cos(a)
        ky = radius_px * math.sin(a)
        line = [values[int(round(y)) + box // 2, int(round(x)) + box // 2].item()
                for x, y in zip(kx, ky, strict=True)]
        measured_zero = radius_px[np.flatnonzero(np.diff(np.sign(line)))[0]] / (box * APIX)
        assert abs(measured_zero - first_zero) < 1.5 / (box * APIX)
