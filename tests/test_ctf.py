"""Tests for cryoviz.ctf against an independent numpy evaluation of RELION's CTF."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cryoviz.ctf import CTFParams, compute_ctf_2d, electron_wavelength_angstrom


def relion_wavelength(voltage_kv: float) -> float:
    volts = voltage_kv * 1e3
    return 12.2639 / math.sqrt(volts + 0.97845e-6 * volts**2)


def relion_ctf(sx, sy, du, dv, angle_deg, kv, cs_mm, w, phase_deg=0.0, bfac=0.0):
    """RELION ``CTF::getCTF`` (ctf.h) written out with numpy; s in 1/Å.

    defocus_average = -(U + V) / 2, defocus_deviation = -(U - V) / 2,
    deltaf = defocus_average + defocus_deviation cos(2 (azimuth - angle)) (RELION's
    getDeltaF, negative for underfocus), argument = K1 deltaf s^2 + K2 s^4 - K5 - K3
    with K1 = pi lambda, K2 = pi/2 Cs lambda^3, K3 = atan(w / sqrt(1 - w^2)),
    K5 = phase shift; CTF = -sin(argument) exp(-B s^2 / 4).
    """
    lam = relion_wavelength(kv)
    avg = -(du + dv) * 0.5
    dev = -(du - dv) * 0.5
    azimuth = np.arctan2(sy, sx)
    deltaf = avg + dev * np.cos(2.0 * (azimuth - np.deg2rad(angle_deg)))
    u2 = sx**2 + sy**2
    k1 = math.pi / 2 * 2 * lam
    k2 = math.pi / 2 * (cs_mm * 1e7) * lam**3
    k3 = math.atan(w / math.sqrt(1 - w * w))
    k5 = math.radians(phase_deg)
    argument = k1 * deltaf * u2 + k2 * u2**2 - k5 - k3
    return -np.sin(argument) * np.exp(-bfac / 4.0 * u2)


PARAMS = [
    # du, dv, angle, kV, Cs, w, phase, B
    (15000.0, 15000.0, 0.0, 300.0, 2.7, 0.1, 0.0, 0.0),
    (20000.0, 14000.0, 30.0, 300.0, 2.7, 0.07, 0.0, 0.0),
    (12000.0, 9000.0, 30.0, 200.0, 2.0, 0.1, 90.0, 0.0),
    (25000.0, 21000.0, -62.0, 300.0, 0.01, 0.15, 0.0, 80.0),
    (8000.0, 11000.0, 130.0, 120.0, 1.4, 0.0, 45.0, 20.0),
]


def _params(rows):
    cols = list(zip(*rows, strict=True))
    names = ["defocus_u_angstrom", "defocus_v_angstrom", "astigmatism_angle_deg", "voltage_kv",
             "cs_mm", "amplitude_contrast", "phase_shift_deg", "bfactor_a2"]
    return CTFParams.from_arrays(**{n: np.array(c) for n, c in zip(names, cols, strict=True)})


@pytest.mark.parametrize("box", [24, 25])
@pytest.mark.parametrize("rfft", [True, False])
def test_ctf_matches_relion_definition(box, rfft):
    apix = 1.3
    ctf = _params(PARAMS)
    values = compute_ctf_2d(ctf, box, apix, rfft=rfft, dtype=torch.float64)
    width = box // 2 + 1 if rfft else box
    assert values.shape == (len(PARAMS), box, width)
    iy = np.arange(box) - box // 2
    ix = np.arange(width) if rfft else np.arange(box) - box // 2
    sy, sx = np.meshgrid(iy / (box * apix), ix / (box * apix), indexing="ij")
    for i, p in enumerate(PARAMS):
        expect = relion_ctf(sx, sy, *p)
        np.testing.assert_allclose(values[i].numpy(), expect, atol=1e-10, rtol=0)
    # float32 output on request, same values
    v32 = compute_ctf_2d(ctf, box, apix, rfft=rfft)
    assert v32.dtype == torch.float32
    assert torch.allclose(v32.double(), values, atol=1e-6)


def test_ctf_at_specific_points_astigmatic_phase_plate():
    """Spot values at hand-picked (kx, ky) samples, incl. off-axis and negative ky."""
    box, apix = 32, 1.0
    p = (18000.0, 13000.0, 30.0, 300.0, 2.7, 0.1, 90.0, 40.0)
    values = compute_ctf_2d(_params([p]), box, apix, rfft=True, dtype=torch.float64)[0]
    for jx, jy in [(1, 0), (0, 1), (3, 5), (5, -3), (7, 2), (2, -9), (16, -16), (11, 15)]:
        sx, sy = jx / (box * apix), jy / (box * apix)
        got = float(values[jy + box // 2, jx])
        assert got == pytest.approx(float(relion_ctf(sx, sy, *p)), abs=1e-10)


def test_ctf_at_zero_frequency_is_amplitude_contrast():
    ctf = CTFParams.from_arrays(
        defocus_u_angstrom=[10000.0, 25000.0], defocus_v_angstrom=[9000.0, 20000.0],
        astigmatism_angle_deg=[10.0, 70.0], voltage_kv=300.0, cs_mm=2.7,
        amplitude_contrast=[0.07, 0.2], bfactor_a2=[0.0, 100.0],
    )
    values = compute_ctf_2d(ctf, 16, 1.5, dtype=torch.float64)
    assert values[:, 8, 0].tolist() == pytest.approx([0.07, 0.2], abs=1e-12)
    # RELION sign: positive through the first lobe at low frequency
    assert (values[:, 8, 1] > 0.07).all()


def test_first_zero_unastigmatic_no_cs():
    defocus, box, j0 = 15000.0, 64, 20
    lam = relion_wavelength(300.0)
    s0 = 1.0 / math.sqrt(lam * defocus)
    apix = j0 / (box * s0)  # sample j0 on the kx axis sits exactly on s0
    ctf = CTFParams.from_arrays(
        defocus_u_angstrom=defocus, defocus_v_angstrom=defocus, astigmatism_angle_deg=0.0,
        voltage_kv=300.0, cs_mm=0.0, amplitude_contrast=0.0,
    )
    row = compute_ctf_2d(ctf, box, apix, dtype=torch.float64)[0, box // 2]
    assert abs(float(row[j0])) < 1e-9
    assert (row[1:j0] > 0).all()
    assert (row[j0 + 1: j0 + 4] < 0).all()
    assert float(row[0]) == 0.0


def test_astigmatism_zeros_follow_du_along_angle_and_dv_across():
    """Angle 45 deg: the U axis is the (1, 1) diagonal, V the (-1, 1) diagonal."""
    box, lam = 64, relion_wavelength(300.0)
    du, ju, jv = 20000.0, 10, 13
    dv = du * (ju / jv) ** 2
    s_u = 1.0 / math.sqrt(lam * du)
    apix = ju * math.sqrt(2) / (box * s_u)  # diagonal sample (ju, ju) on the U zero
    ctf = CTFParams.from_arrays(
        defocus_u_angstrom=du, defocus_v_angstrom=dv, astigmatism_angle_deg=45.0,
        voltage_kv=300.0, cs_mm=0.0, amplitude_contrast=0.0,
    )
    full = compute_ctf_2d(ctf, box, apix, rfft=False, dtype=torch.float64)[0]
    c = box // 2
    along_u = torch.stack([full[c + j, c + j] for j in range(box // 2)])
    along_v = torch.stack([full[c + j, c - j] for j in range(box // 2)])
    assert abs(float(along_u[ju])) < 1e-9
    assert abs(float(along_v[jv])) < 1e-9
    assert (along_u[1:ju] > 0).all() and float(along_u[ju + 1]) < 0
    assert (along_v[1:jv] > 0).all() and float(along_v[jv + 1]) < 0
    # swapping the angle by 90 deg swaps the roles
    ctf90 = CTFParams.from_arrays(
        defocus_u_angstrom=du, defocus_v_angstrom=dv, astigmatism_angle_deg=135.0,
        voltage_kv=300.0, cs_mm=0.0, amplitude_contrast=0.0,
    )
    full90 = compute_ctf_2d(ctf90, box, apix, rfft=False, dtype=torch.float64)[0]
    assert abs(float(full90[c + ju, c - ju])) < 1e-9
    assert abs(float(full90[c + jv, c + jv])) < 1e-9


def test_electron_wavelength():
    assert electron_wavelength_angstrom(300.0) == pytest.approx(0.01969, abs=5e-6)
    assert electron_wavelength_angstrom(300.0) == pytest.approx(0.0197, abs=1e-4)  # published
    assert electron_wavelength_angstrom(200.0) == pytest.approx(0.02508, abs=5e-6)
    assert electron_wavelength_angstrom(120.0) == pytest.approx(relion_wavelength(120.0))
    t = electron_wavelength_angstrom(torch.tensor([200.0, 300.0], dtype=torch.float64))
    assert isinstance(t, torch.Tensor)
    assert t.tolist() == pytest.approx([relion_wavelength(200.0), relion_wavelength(300.0)])


def test_from_arrays_broadcasting_defaults_and_errors():
    ctf = CTFParams.from_arrays(
        defocus_u_angstrom=[1e4, 2e4, 3e4], defocus_v_angstrom=np.array([0.9e4, 1.9e4, 2.9e4]),
        astigmatism_angle_deg=5.0, voltage_kv=300, cs_mm=np.float32(2.7),
        amplitude_contrast=0.1,
    )
    assert len(ctf) == 3
    for name, expect in [("voltage_kv", 300.0), ("cs_mm", 2.7), ("astigmatism_angle_deg", 5.0),
                         ("phase_shift_deg", 0.0), ("bfactor_a2", 0.0)]:
        t = getattr(ctf, name)
        assert t.shape == (3,) and t.dtype == torch.float64
        assert t.tolist() == pytest.approx([expect] * 3, rel=1e-6)
    assert ctf.defocus_v_angstrom.tolist() == [9000.0, 19000.0, 29000.0]
    # broadcast fields are independent copies
    ctf.voltage_kv[0] = 200.0
    assert ctf.voltage_kv[1] == 300.0
    arrays = ctf.as_numpy()
    assert set(arrays) >= {"defocus_u_angstrom", "bfactor_a2"}
    assert arrays["defocus_u_angstrom"].dtype == np.float64
    with pytest.raises(ValueError):
        CTFParams.from_arrays(
            defocus_u_angstrom=[1e4, 2e4, 3e4], defocus_v_angstrom=[1e4, 2e4],
            astigmatism_angle_deg=0, voltage_kv=300, cs_mm=2.7, amplitude_contrast=0.1,
        )
    with pytest.raises(TypeError):
        CTFParams.from_arrays(
            defocus_u_angstrom=1e4, defocus_v_angstrom=1e4, astigmatism_angle_deg=0,
            voltage_kv=300, cs_mm=2.7, amplitude_contrast=0.1, defocus_w=3.0,
        )


def test_subset_selects_particles_and_their_ctfs():
    ctf = _params(PARAMS)
    full = compute_ctf_2d(ctf, 16, 1.2, dtype=torch.float64)
    for index, rows in [
        (np.array([3, 0]), [3, 0]),
        (torch.tensor([1, 4]), [1, 4]),
        (slice(1, 3), [1, 2]),
        (np.array([True, False, True, False, False]), [0, 2]),
        (torch.tensor([False, True, False, False, True]), [1, 4]),
    ]:
        sub = ctf.subset(index)
        assert len(sub) == len(rows)
        assert sub.defocus_u_angstrom.tolist() == [PARAMS[r][0] for r in rows]
        assert sub.phase_shift_deg.tolist() == [PARAMS[r][6] for r in rows]
        assert torch.allclose(compute_ctf_2d(sub, 16, 1.2, dtype=torch.float64), full[rows])
    # per-particle pixel size broadcasts along the batch
    apix = torch.tensor([1.0, 1.5, 2.0, 2.5, 3.0], dtype=torch.float64)
    per = compute_ctf_2d(ctf, 16, apix, dtype=torch.float64)
    one = compute_ctf_2d(ctf.subset(slice(2, 3)), 16, 2.0, dtype=torch.float64)
    assert torch.allclose(per[2:3], one)
