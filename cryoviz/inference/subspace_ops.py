"""Batched Fourier-grid operations of linear subspace models (3DVA / PPCA-EM).

Shared trilinear gather and scatter of several complex volumes at once, the
per-voxel ``K x K`` Wiener solves of the M-step, the orthogonalisation of the
components, the per-shell noise update and Fourier cropping of maps and images.
See :mod:`cryoviz.inference.ppca` for the model.
"""



import torch

from cryoviz.fourier import (
    centered_fft3,
    centered_ifft3,
    centered_rfft2,
    crop_center,
    crop_half_transform,
    hermitian_mirror,
)
from cryoviz.noise import HalfPlaneShells
from cryoviz.projection import slice_frequencies, trilinear_corners

__all__ = [
    "fourier_crop_volume",
    "crop_images_fourier",
    "slice_corners",
    "extract_many",
    "insert_many",
    "orthogonalise",
    "finish_sigma2",
    "solve_components",
]


def fourier_crop_volume(volume: torch.Tensor, box_size: int) -> torch.Tensor:
    """Fourier-crop a real ``(D, D, D)`` map to ``(d, d, d)`` (pixel size ``* D / d``).

    Voxel values keep their scale (the transform is multiplied by ``(d / D)^3``).
    """
    full = int(volume.shape[-1])
    if box_size == full:
        return volume.clone()
    ft = centered_fft3(volume.to(torch.float64))
    ft = crop_center(ft, box_size, ndim=3) * (box_size / full) ** 3
    if box_size % 2 == 0:
        # the cropped Nyquist planes are not Hermitian pairs: drop them
        ft[0] = 0
        ft[:, 0] = 0
        ft[:, :, 0] = 0
    return centered_ifft3(ft).real.to(volume.dtype)


def crop_images_fourier(images: torch.Tensor, box_size: int) -> torch.Tensor:
    """Cropped centred half transforms ``(B, d, d // 2 + 1)`` of ``(B, D, D)`` images.

    Scaled by ``(d / D)^2`` so that they are the transforms of the Fourier-downsampled
    images (real-space values kept).
    """
    full = int(images.shape[-1])
    ft = centered_rfft2(images)
    if box_size == full:
        return ft
    ft = crop_half_transform(ft, box_size) * (box_size / full) ** 2
    ft[:, 0, :] = 0  # Nyquist row of the cropped box has no Hermitian partner
    ft[:, :, -1] = 0
    return ft


def slice_corners(rotations: torch.Tensor, box: int, size: int, max_frequency: float | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Trilinear corners of the half-plane slice samples of ``rotations``, computed once.

    The same coordinates as :func:`cryoviz.projection.extract_slices` /
    :func:`cryoviz.projection.insert_slices`, shared by several volumes.

    Returns
    -------
    index, weight, keep
        ``(M, 8)`` flat voxel indices and weights of the kept samples and the
        ``(B * H * W,)`` mask of kept samples (``None``: all kept).
    """
    k = slice_frequencies(box, rfft=True, device=rotations.device, dtype=torch.float64)
    q = torch.einsum("bij,hwi->bhwj", rotations.to(torch.float64), k)
    coords = (q * size + size // 2).reshape(-1, 3)
    keep = None
    if max_frequency is not None:
        keep = torch.linalg.vector_norm(coords - size // 2, dim=-1) / size <= max_frequency
        coords = coords[keep]
    index, weight = trilinear_corners(coords, size)
    return index, weight, keep


def extract_many(volumes: torch.Tensor, index: torch.Tensor, weight: torch.Tensor,
                  shape: tuple[int, int, int]) -> torch.Tensor:
    """Slices ``(C, B, H, W)`` of ``C`` complex ``(Dp, Dp, Dp)`` volumes (all samples kept)."""
    n_vol = volumes.shape[0]
    flat = torch.view_as_real(volumes.reshape(n_vol, -1)).permute(1, 0, 2).reshape(-1, 2 * n_vol)
    values = (flat[index.reshape(-1)].reshape(*index.shape, -1) * weight[..., None]).sum(dim=1)
    values = values.reshape(-1, n_vol, 2).permute(1, 0, 2).contiguous()
    return torch.view_as_complex(values).reshape(n_vol, *shape)


def insert_many(values: torch.Tensor, index: torch.Tensor, weight: torch.Tensor,
                 keep: torch.Tensor | None, out: torch.Tensor) -> None:
    """Add ``C`` complex slices ``(C, B, H, W)`` into ``out`` ``(C, Dp, Dp, Dp)`` (adjoint)."""
    n_vol = values.shape[0]
    vals = torch.view_as_real(values.reshape(n_vol, -1)).permute(1, 0, 2).reshape(-1, 2 * n_vol)
    if keep is not None:
        vals = vals[keep]
    contrib = (weight[..., None] * vals[:, None, :]).reshape(-1, 2 * n_vol)
    acc = torch.zeros((out[0].numel(), 2 * n_vol), dtype=torch.float64, device=out.device)
    acc.index_add_(0, index.reshape(-1), contrib)
    out += torch.view_as_complex(acc.reshape(-1, n_vol, 2).permute(1, 0, 2).contiguous()
                                 ).reshape(out.shape)


def orthogonalise(components: torch.Tensor, second_moment: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthogonal components ordered by variance, and the map of old to new coordinates.

    Parameters
    ----------
    components
        ``(K, M)`` components (rows), float64.
    second_moment
        ``(K, K)`` mean ``E[z z^T]`` of the coordinates.

    Returns
    -------
    new_components, transform
        ``(K, M)`` components with orthogonal rows of decreasing norm and the
        ``(K, K)`` matrix ``T`` with ``z_new = T z`` (``U^T z = U_new^T z_new``).
    """
    q, r = torch.linalg.qr(components.T)  # (M, K), (K, K)
    cov = r @ second_moment @ r.T
    cov = 0.5 * (cov + cov.T)
    evals, evecs = torch.linalg.eigh(cov)
    order = torch.argsort(evals, descending=True)
    evals = evals[order].clamp(min=1e-30)
    evecs = evecs[:, order]
    new = (q @ evecs * evals.sqrt()).T  # (K, M)
    # deterministic signs: largest-magnitude entry positive
    peak = new.abs().argmax(dim=1)
    sign = torch.sign(new[torch.arange(new.shape[0]), peak])
    sign[sign == 0] = 1.0
    new = new * sign[:, None]
    transform = (sign / evals.sqrt())[:, None] * (evecs.T @ r)
    return new, transform


def finish_sigma2(power: torch.Tensor, layout: HalfPlaneShells, n: int) -> torch.Tensor:
    """Per-shell noise variance from summed residual power; unused shells copy neighbours."""
    sigma2 = power / (2.0 * n * layout.count.clamp(min=1e-30))
    used = layout.count > 0
    values = sigma2[used]
    first = int(torch.nonzero(used).flatten()[0])
    last = int(torch.nonzero(used).flatten()[-1])
    sigma2[:first] = values[0]
    sigma2[last + 1:] = values[-1]
    return sigma2.clamp(min=1e-30 * float(values.max()))


def solve_components(rhs: torch.Tensor, weights: torch.Tensor, pairs: list[tuple[int, int]],
                      k_comp: int, inside: torch.Tensor, ridge: float, d: int,
                      grid_corr: torch.Tensor) -> torch.Tensor:
    """Per-voxel ``K x K`` solves on the padded grid, back to ``(K, d, d, d)`` real maps."""
    rhs = rhs + torch.conj(hermitian_mirror(rhs))
    # unpack the weight volumes (two per complex accumulator)
    packed = weights
    weights = torch.cat([packed.real, packed.imag])[
        [j // 2 + (len(packed) if j % 2 else 0) for j in range(len(pairs))]]
    weights = weights + hermitian_mirror(weights)
    padded = rhs.shape[-1]
    matrix = torch.zeros((padded, padded, padded, k_comp, k_comp), dtype=torch.float64,
                         device=rhs.device)
    for j, (a, b) in enumerate(pairs):
        matrix[..., a, b] = weights[j]
        matrix[..., b, a] = weights[j]
    diag = torch.diagonal(matrix, dim1=-2, dim2=-1)[inside]
    lam = ridge * float(diag.mean().clamp(min=1e-30))
    matrix = matrix + lam * torch.eye(k_comp, dtype=torch.float64, device=rhs.device)
    b = rhs.permute(1, 2, 3, 0)[inside]  # (M, K)
    sol = torch.linalg.solve(matrix[inside].to(torch.complex128), b[..., None])[..., 0]
    full = torch.zeros((padded, padded, padded, k_comp), dtype=torch.complex128,
                       device=rhs.device)
    full[inside] = sol
    maps = centered_ifft3(full.permute(3, 0, 1, 2)).real
    maps = crop_center(maps, d, ndim=3) / grid_corr
    return maps
