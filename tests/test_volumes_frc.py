"""E2GMM's FRC loss: per-shell FRC against a full-plane computation, loss bounds."""

from __future__ import annotations

import pytest
import torch

from cryoviz.fourier import centered_fft2, centered_rfft2
from cryoviz.volumes.frc import frc_loss, frc_per_shell, shell_matrix


def test_frc_loss_properties():
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(4, 16, 16, generator=gen, dtype=torch.float64)
    ft = centered_rfft2(images)
    assert float(frc_loss(ft, ft)) == pytest.approx(0.0, abs=1e-12)
    assert float(frc_loss(3.0 * ft, ft)) == pytest.approx(0.0, abs=1e-12)
    assert float(frc_loss(-ft, ft)) == pytest.approx(2.0, abs=1e-12)
    other_images = torch.randn(4, 16, 16, generator=gen, dtype=torch.float64)
    other = centered_rfft2(other_images)
    # the half-plane FRC equals the full-plane one
    full_a, full_b = centered_fft2(images), centered_fft2(other_images)
    k = torch.arange(16, dtype=torch.float64) - 8
    shell = torch.round(torch.sqrt(k[:, None] ** 2 + k[None, :] ** 2)).long()
    expected = []
    for s in range(1, 9):
        sel = shell == s
        a, b = full_a[:, sel], full_b[:, sel]
        expected.append((a * b.conj()).real.sum(1)
                        / torch.sqrt((a.abs() ** 2).sum(1) * (b.abs() ** 2).sum(1)))
    expected = torch.stack(expected, dim=1)
    got = frc_per_shell(ft, other, max_shell=8)
    assert torch.allclose(got, expected, atol=1e-10)
    assert frc_per_shell(ft, other, max_shell=4).shape == (4, 4)


def test_shell_matrix_counts_every_full_plane_sample_once():
    weights = shell_matrix(16, 8, 0, "cpu", torch.float64)
    k = torch.arange(16, dtype=torch.float64) - 8
    shell = torch.round(torch.sqrt(k[:, None] ** 2 + k[None, :] ** 2)).long()
    expected = torch.stack([(shell == s).sum() for s in range(9)]).double()
    # the rfft half plane counted with its mirrors is the full plane (its kx = +8
    # column, counted once, stands for the full grid's kx = -8)
    torch.testing.assert_close(weights.sum(0), expected)
    with pytest.raises(ValueError, match="min_shell"):
        frc_per_shell(torch.zeros(1, 16, 9, dtype=torch.complex128),
                      torch.zeros(1, 16, 9, dtype=torch.complex128), max_shell=2, min_shell=3)
