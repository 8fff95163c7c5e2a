"""Per-image maximum-likelihood refinement of angle and defocus, and CTF-corrected averages.

Given a canonical image ``T`` and per-shell noise variances ``sigma2(s)``, the
log-likelihood of image transform ``X_i`` for in-plane angle ``a`` and mean
defocus ``f`` (astigmatism set to zero in the search) is, up to a constant,

    log L_i(a, f) = sum_k w(k) [2 C_f(k) Re(X_i(k)* T_a(k)) - C_f(k)^2 |T_a(k)|^2] / sigma2(s_k)

over the half-plane coefficients ``k`` inside Nyquist (shell 0 left out;
``w = 1/2`` on the columns holding each Hermitian pair twice), with ``T_a`` the
transform of ``T`` turned by ``a`` and ``C_f`` the CTF. It is evaluated on a
grid of angles x defoci as one matrix product per batch; the best grid point
is refined by a parabola through its neighbours along each axis (circular in
the angle). The reported variances are the grid posterior's spread about the
estimate plus the parabola's (Laplace) variance, i.e. the uncertainty of the
estimate under the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cryoviz.ctf import compute_ctf_2d
from cryoviz.fourier import centered_irfft2, centered_rfft2, frequency_grid_2d, shell_index_2d
from cryoviz.inference.vaegan.model import Microscope, rotate_images

__all__ = ["SearchResult", "half_plane_weights", "search_angle_defocus",
           "ctf_corrected_average", "canonical_to_frame",
           "AverageAccumulator"]


@dataclass(frozen=True)
class SearchResult:
    """Refined estimates of ``B`` images (numpy float64, ``(B,)`` each)."""

    angle_deg: np.ndarray
    angle_std_deg: np.ndarray
    defocus_angstrom: np.ndarray
    defocus_std_angstrom: np.ndarray
    log_likelihood: np.ndarray


def half_plane_weights(box_size: int, device=None) -> torch.Tensor:
    """``(D, D // 2 + 1)`` weights: 1 inside Nyquist, 1/2 on self-mirrored columns, 0 else.

    Shell 0 (the image mean) gets weight 0.
    """
    ky, kx = frequency_grid_2d(box_size, rfft=True, device=device, dtype=torch.float64)
    inside = (torch.sqrt(ky**2 + kx**2) < 0.5) & (shell_index_2d(box_size, device=device) > 0)
    w = inside.to(torch.float32)
    w[:, 0] *= 0.5
    if box_size % 2 == 0:
        w[:, -1] *= 0.5
    return w


def _parabola(left: torch.Tensor, mid: torch.Tensor, right: torch.Tensor):
    """Vertex offset (in grid steps, within +-1/2) and curvature ``-d2`` of a 3-point parabola."""
    curvature = (left - 2.0 * mid + right)
    offset = torch.where(curvature < 0, 0.5 * (left - right) / curvature.clamp(max=-1e-12),
                         torch.zeros_like(mid)).clamp(-0.5, 0.5)
    return offset, (-curvature).clamp_min(1e-12)


def _spread(p: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Variance of offsets ``d`` under weights ``p`` (rows), about their mean."""
    mean = (p * d).sum(1)
    return ((p * d**2).sum(1) - mean**2).clamp_min(0.0)


@torch.no_grad()
def search_angle_defocus(
    images: torch.Tensor,
    canonical: torch.Tensor,
    noise_var: torch.Tensor,
    microscope: Microscope,
    pixel_size_angstrom: float,
    defocus_grid_angstrom: torch.Tensor,
    n_angles: int = 72,
    batch_size: int = 64,
) -> SearchResult:
    """Maximum-likelihood in-plane angle and mean defocus of each image (see module notes).

    Parameters
    ----------
    images
        ``(N, D, D)`` real images.
    canonical
        ``(D, D)`` canonical image.
    noise_var
        ``(D // 2 + 1,)`` noise variance ``E |N(k)|^2`` per shell.
    microscope
        Voltage, Cs, amplitude contrast.
    pixel_size_angstrom
        Pixel size (Å).
    defocus_grid_angstrom
        ``(F,)`` evenly spaced defoci to search (Å).
    n_angles
        Angles ``360 / n_angles`` degrees apart.
    batch_size
        Images per matrix product.

    Returns
    -------
    SearchResult
    """
    box = canonical.shape[-1]
    device = canonical.device
    canonical = canonical.to(torch.float32)
    weights = half_plane_weights(box, device)
    keep = weights > 0
    shells = shell_index_2d(box, device=device)[keep]
    w = (weights[keep] / noise_var.to(device)[shells]).to(torch.float32)
    step_deg = 360.0 / n_angles
    angles = torch.arange(n_angles, dtype=torch.float64, device=device) * step_deg
    rad = torch.deg2rad(angles)
    cos_sin = torch.stack([torch.cos(rad), torch.sin(rad)], -1).to(canonical.dtype)
    templates = centered_rfft2(rotate_images(canonical[None], cos_sin))[:, keep]  # (A, K)
    grid = defocus_grid_angstrom.to(device=device, dtype=torch.float64)
    zero = torch.zeros_like(grid)
    ctf = compute_ctf_2d(microscope.ctf(grid, grid, zero), box, pixel_size_angstrom,
                         device=device)[:, keep]  # (F, K)
    energy = ((templates.abs() ** 2) * w) @ (ctf**2).T  # (A, F)
    step_f = float(grid[1] - grid[0]) if grid.numel() > 1 else 1.0
    out = {k: [] for k in ("angle", "angle_std", "defocus", "defocus_std", "loglik")}
    for start in range(0, images.shape[0], batch_size):
        x = centered_rfft2(images[start:start + batch_size].to(device, torch.float32))[:, keep]
        cross = (x.conj()[:, None, :] * templates[None]).real * w  # (B, A, K)
        score = 2.0 * (cross @ ctf.T) - energy[None]  # (B, A, F)
        b, a, f = score.shape
        flat = score.reshape(b, -1).double()
        best = flat.argmax(dim=1)
        ia, jf = best // f, best % f
        rows = torch.arange(b, device=device)
        mid = flat[rows, best]
        s3 = score.double()
        left_a = s3[rows, (ia - 1) % a, jf]
        right_a = s3[rows, (ia + 1) % a, jf]
        off_a, curv_a = _parabola(left_a, mid, right_a)
        jl, jr = (jf - 1).clamp(min=0), (jf + 1).clamp(max=f - 1)
        interior = (jf > 0) & (jf < f - 1)
        off_f, curv_f = _parabola(s3[rows, ia, jl], mid, s3[rows, ia, jr])
        off_f = torch.where(interior, off_f, torch.zeros_like(off_f))
        angle = (angles[ia] + off_a * step_deg) % 360.0
        defocus = grid[jf] + off_f * step_f
        post = torch.softmax(flat, dim=1).reshape(b, a, f)
        p_angle, p_def = post.sum(dim=2), post.sum(dim=1)
        d_angle = torch.remainder(angles[None] - angle[:, None] + 180.0, 360.0) - 180.0
        d_def = grid[None] - defocus[:, None]
        var_angle = _spread(p_angle, d_angle) + step_deg**2 / curv_a
        var_def = _spread(p_def, d_def) + step_f**2 / curv_f
        out["angle"].append(angle)
        out["angle_std"].append(var_angle.sqrt())
        out["defocus"].append(defocus)
        out["defocus_std"].append(var_def.sqrt())
        out["loglik"].append(torch.logsumexp(flat, dim=1))
    cat = {k: torch.cat(v).cpu().numpy().astype(np.float64) for k, v in out.items()}
    return SearchResult(angle_deg=cat["angle"], angle_std_deg=cat["angle_std"],
                        defocus_angstrom=cat["defocus"],
                        defocus_std_angstrom=cat["defocus_std"], log_likelihood=cat["loglik"])


def canonical_to_frame(images: torch.Tensor, angle_deg: torch.Tensor) -> torch.Tensor:
    """Turn ``(B, D, D)`` images by ``-angle_deg`` (back to the canonical frame)."""
    rad = torch.deg2rad(angle_deg.to(torch.float64))
    cos_sin = torch.stack([torch.cos(rad), -torch.sin(rad)], -1).to(images.dtype)
    return rotate_images(images, cos_sin)


class AverageAccumulator:
    """Running sums of an aligned, CTF-corrected (Wiener) average in the canonical frame.

    Image ``i`` is turned back by ``-angle_i`` (so that image = average turned by
    ``angle_i``, convolved with the CTF); its CTF then has astigmatism angle
    ``astig_i - angle_i``. The average is
    ``sum_i C_i Y_i / (sum_i C_i^2 + N * wiener_constant)``, per Fourier coefficient.

    Parameters
    ----------
    box_size
        ``D``.
    microscope, pixel_size_angstrom
        CTF constants and pixel size (Å).
    """

    def __init__(self, box_size: int, microscope: Microscope,
                 pixel_size_angstrom: float) -> None:
        self.box = int(box_size)
        self.microscope = microscope
        self.apix = float(pixel_size_angstrom)
        self.num = torch.zeros(box_size, box_size // 2 + 1, dtype=torch.complex128)
        self.den = torch.zeros(box_size, box_size // 2 + 1, dtype=torch.float64)
        self.count = 0

    @torch.no_grad()
    def add(self, images: torch.Tensor, angle_deg: torch.Tensor,
            defocus_u_angstrom: torch.Tensor, defocus_v_angstrom: torch.Tensor,
            astigmatism_angle_deg: torch.Tensor) -> None:
        """Add ``(B, D, D)`` images with their ``(B,)`` parameters."""
        angle = torch.as_tensor(angle_deg, dtype=torch.float64)
        back = canonical_to_frame(images.float().cpu(), angle).double()
        ctf = self.microscope.ctf(
            torch.as_tensor(defocus_u_angstrom, dtype=torch.float64),
            torch.as_tensor(defocus_v_angstrom, dtype=torch.float64),
            torch.as_tensor(astigmatism_angle_deg, dtype=torch.float64) - angle)
        c = compute_ctf_2d(ctf, self.box, self.apix, dtype=torch.float64)
        self.num += (centered_rfft2(back) * c).sum(0)
        self.den += (c**2).sum(0)
        self.count += int(images.shape[0])

    def result(self, wiener_constant: float | torch.Tensor = 0.0) -> torch.Tensor:
        """``(D, D)`` float64 average; ``wiener_constant`` scalar or per shell ``(D // 2 + 1,)``."""
        eps = torch.as_tensor(wiener_constant, dtype=torch.float64)
        if eps.ndim == 1:
            eps = eps[shell_index_2d(self.box).clamp(max=eps.numel() - 1)]
        den = self.den + self.count * eps
        out = torch.where(den > 0, self.num / den.clamp_min(1e-30), torch.zeros_like(self.num))
        return centered_irfft2(out, self.box)


def ctf_corrected_average(
    images: torch.Tensor,
    angle_deg: torch.Tensor,
    defocus_u_angstrom: torch.Tensor,
    defocus_v_angstrom: torch.Tensor,
    astigmatism_angle_deg: torch.Tensor,
    microscope: Microscope,
    pixel_size_angstrom: float,
    wiener_constant: float | torch.Tensor = 0.0,
    batch_size: int = 256,
) -> torch.Tensor:
    """Aligned, CTF-corrected average of ``(N, D, D)`` images (see :class:`AverageAccumulator`).

    Parameters
    ----------
    images
        ``(N, D, D)`` real images.
    angle_deg, defocus_u_angstrom, defocus_v_angstrom, astigmatism_angle_deg
        ``(N,)`` per-image parameters.
    microscope, pixel_size_angstrom
        CTF constants and pixel size (Å).
    wiener_constant
        Scalar or per shell: noise-to-signal ratio added to the mean ``C^2``.
    batch_size
        Images per batch.

    Returns
    -------
    torch.Tensor
        ``(D, D)`` average image (float64).
    """
    acc = AverageAccumulator(images.shape[-1], microscope, pixel_size_angstrom)
    for start in range(0, images.shape[0], batch_size):
        sel = slice(start, start + batch_size)
        acc.add(images[sel], angle_deg[sel], defocus_u_angstrom[sel], defocus_v_angstrom[sel],
                astigmatism_angle_deg[sel])
    return acc.result(wiener_constant)
