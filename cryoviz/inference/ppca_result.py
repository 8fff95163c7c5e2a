"""Results of the PPCA-EM variability analysis.

The result and progress types, maps at latent points and the output files.
"""


import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cryoviz.errors import InputError
from cryoviz.io.mrc import atomic_output, write_volume

__all__ = ["PPCAProgress", "PPCAResult", "eval_ppca", "write_ppca"]


@dataclass(frozen=True)
class PPCAResult:
    """Consensus map, variability components and latent coordinates.

    Attributes
    ----------
    mean_map
        ``(d, d, d)`` float32 consensus map ``V0`` on the working grid.
    components
        ``(K, d, d, d)`` float32 orthogonal unit-norm component maps, ordered by
        decreasing variance.
    component_std
        ``(K,)`` float64 prior standard deviation of each coordinate.
    z
        ``(N, K)`` float32 posterior means of the coordinates along
        ``components`` (``V_i ~ mean_map + sum_k z_ik components_k``).
    z_covariance
        ``(N, K, K)`` float32 posterior covariances of the coordinates.
    sigma2
        ``(d // 2 + 1,)`` float64 noise variance per shell of the real (and of
        the imaginary) part of a cropped image's Fourier coefficient (shell 0
        copies shell 1).
    log_likelihoods
        Marginal log-likelihood of every E-step (``n_iterations + 1`` values:
        one per iteration, then the final E-step).
    particle_ids
        ``(N,)`` int64 ids of the particles.
    pixel_size_angstrom
        Voxel size of the working grid, Å.
    resolution_angstrom
        Resolution limit of the E-step (filter resolution), Å.
    n_iterations
        EM iterations run.
    seconds
        Wall time.
    mask_fraction
        Mean of the focus mask on the working grid (the components live inside it),
        ``None`` without a mask.
    """

    mean_map: torch.Tensor
    components: torch.Tensor
    component_std: torch.Tensor
    z: torch.Tensor
    z_covariance: torch.Tensor
    sigma2: torch.Tensor
    log_likelihoods: tuple[float, ...]
    particle_ids: np.ndarray
    pixel_size_angstrom: float
    resolution_angstrom: float
    n_iterations: int
    seconds: float
    mask_fraction: float | None = None

    @property
    def n_components(self) -> int:
        """``K``."""
        return int(self.components.shape[0])

    @property
    def z_variance(self) -> torch.Tensor:
        """``(N, K)`` float32 posterior variances (diagonal of ``z_covariance``)."""
        return torch.diagonal(self.z_covariance, dim1=-2, dim2=-1).contiguous()


@dataclass(frozen=True)
class PPCAProgress:
    """State after one EM iteration; the last one carries the :class:`PPCAResult`.

    Attributes
    ----------
    iteration
        1-based iteration number.
    log_likelihood
        Marginal log-likelihood of this iteration's E-step (under the components
        entering the iteration).
    component_std
        ``K`` prior standard deviations of the coordinates after the M-step
        (norms of the orthogonal components).
    seconds
        Wall time of the iteration.
    result
        The final result on the last iteration, else ``None``.
    """

    iteration: int
    log_likelihood: float
    component_std: tuple[float, ...]
    seconds: float
    result: PPCAResult | None = None


def eval_ppca(result: PPCAResult, z: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Maps ``mean + sum_k z_k components_k`` at latent points.

    Parameters
    ----------
    result
        A variability analysis.
    z
        ``(K,)`` or ``(M, K)`` coordinates (in the units of ``result.z``).

    Returns
    -------
    torch.Tensor
        ``(M, d, d, d)`` float32 maps (``M = 1`` for a single point).
    """
    points = torch.as_tensor(np.asarray(z), dtype=torch.float32)
    if points.ndim == 1:
        points = points[None]
    if points.ndim != 2 or points.shape[1] != result.n_components:
        raise InputError(None, "z", f"(M, {result.n_components}) coordinates",
                         tuple(points.shape))
    maps = torch.einsum("mk,kzyx->mzyx", points, result.components)
    return result.mean_map[None] + maps


def write_ppca(result: PPCAResult, output_dir: str | Path) -> dict:
    """Write the variability analysis (all files atomically).

    * ``volumes/mean.mrc`` and ``volumes/component_<k>.mrc`` (unit-norm maps) with
      the working voxel size;
    * ``latents.npz``: ``mu`` ``(N, K)`` float32 posterior means, ``var``
      ``(N, K)`` float32 posterior variances, ``covariance`` ``(N, K, K)``,
      ``particle_ids`` ``(N,)`` int64;
    * ``z.pkl``: the ``(N, K)`` float32 means as a pickled array (cryoDRGN's
      ``z.pkl`` layout);
    * ``metrics.json``: sizes, component standard deviations, log-likelihood per
      iteration, ``sigma2``.

    Parameters
    ----------
    result
        The analysis.
    output_dir
        Folder (created).

    Returns
    -------
    dict
        The metrics written.
    """
    out = Path(output_dir)
    (out / "volumes").mkdir(parents=True, exist_ok=True)
    apix = result.pixel_size_angstrom
    write_volume(out / "volumes" / "mean.mrc", result.mean_map.numpy(), apix)
    for k in range(result.n_components):
        write_volume(out / "volumes" / f"component_{k}.mrc", result.components[k].numpy(), apix)
    mu = result.z.numpy().astype(np.float32)
    with atomic_output(out / "latents.npz") as tmp, open(tmp, "wb") as handle:
        np.savez(handle, mu=mu, var=result.z_variance.numpy().astype(np.float32),
                 covariance=result.z_covariance.numpy().astype(np.float32),
                 particle_ids=result.particle_ids)
    with atomic_output(out / "z.pkl") as tmp, open(tmp, "wb") as handle:
        pickle.dump(mu, handle)
    metrics = {
        "n_components": result.n_components,
        "n_particles": int(mu.shape[0]),
        "n_iterations": result.n_iterations,
        "box_size": int(result.mean_map.shape[-1]),
        "pixel_size_angstrom": apix,
        "resolution_angstrom": result.resolution_angstrom,
        "seconds": result.seconds,
        "component_std": [float(v) for v in result.component_std],
        "log_likelihood_per_iteration": list(result.log_likelihoods),
        "sigma2_per_shell": [float(v) for v in result.sigma2],
        "mask_fraction": result.mask_fraction,
    }
    with atomic_output(out / "metrics.json") as tmp:
        Path(tmp).write_text(json.dumps(metrics, indent=2))
    return metrics
