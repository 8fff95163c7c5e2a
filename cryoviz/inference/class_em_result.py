"""Results of 3-D classification by exact EM: result and progress types, output files."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cryoviz.io.mrc import atomic_output, write_volume
from cryoviz.metrics.fsc import FSCCurve

__all__ = ["ClassEMProgress", "ClassEMResult", "write_class_em"]


@dataclass(frozen=True)
class ClassEMResult:
    """Class maps, posteriors and noise model at the end of 3-D classification.

    Attributes
    ----------
    maps
        ``(K, D, D, D)`` float32 Wiener-filtered class maps (all particles).
    half_maps
        ``(K, 2, D, D, D)`` float32 class maps of the two half sets.
    posteriors
        ``(N, K)`` float32 class posteriors ``gamma_ik`` of the last E-step
        (rows sum to 1), in the order of the particle set.
    class_fractions
        ``(K,)`` float64 class priors ``pi_k = mean_i gamma_ik``.
    sigma2
        ``(D // 2 + 1,)`` float64 noise variance per shell of the real (and of
        the imaginary) part of an image's Fourier coefficient (unnormalised
        FFT units; shell 0 copies shell 1).
    half_fsc
        ``K`` half-map FSC curves, one per class.
    log_likelihoods
        Marginal log-likelihood of every iteration's E-step.
    particle_ids
        ``(N,)`` int64 ids of the particles (rows of the original file).
    pixel_size_angstrom
        Voxel size in Å.
    n_iterations
        EM iterations run.
    initialisation
        How the class maps were started, in words.
    seconds
        Wall time.
    mask_fraction
        Mean of the focus mask of a focused classification, ``None`` without one;
        the maps are then those of the subtracted images (the region inside the
        mask; :func:`cryoviz.inference.class_em.iter_class_em`).
    """

    maps: torch.Tensor
    half_maps: torch.Tensor
    posteriors: torch.Tensor
    class_fractions: torch.Tensor
    sigma2: torch.Tensor
    half_fsc: tuple[FSCCurve, ...]
    log_likelihoods: tuple[float, ...]
    particle_ids: np.ndarray
    pixel_size_angstrom: float
    n_iterations: int
    initialisation: str
    seconds: float
    mask_fraction: float | None = None

    @property
    def n_classes(self) -> int:
        """``K``."""
        return int(self.maps.shape[0])

    @property
    def best_class(self) -> np.ndarray:
        """``(N,)`` int64 class of largest posterior."""
        return self.posteriors.argmax(dim=1).numpy().astype(np.int64)

    @property
    def max_posterior(self) -> np.ndarray:
        """``(N,)`` float32 largest posterior of each particle."""
        return self.posteriors.max(dim=1).values.numpy()

    @property
    def resolution_angstrom(self) -> tuple[float, ...]:
        """Gold-standard resolution (half-map FSC = 0.143) of each class, Å."""
        return tuple(c.resolution_angstrom(self.pixel_size_angstrom, 0.143)
                     for c in self.half_fsc)


@dataclass(frozen=True)
class ClassEMProgress:
    """State after one EM iteration; the last one carries the :class:`ClassEMResult`.

    Attributes
    ----------
    iteration
        1-based iteration number.
    log_likelihood
        Marginal log-likelihood ``sum_i log sum_k pi_k p(X_i | k)`` under the
        model entering this iteration (the E-step's).
    class_fractions
        ``K`` class priors after this iteration's M-step.
    changed_fraction
        Fraction of particles whose best class differs from the previous
        iteration's (the first iteration compares with the random initial
        subsets, or reports 1.0 when started from ``initial_maps``).
    resolution_angstrom
        ``K`` half-map 0.143 resolutions of the new class maps, Å.
    e_step_resolution_angstrom
        Resolution limit of this iteration's E-step, Å.
    result
        The final result on the last iteration, else ``None``.
    """

    iteration: int
    log_likelihood: float
    class_fractions: tuple[float, ...]
    changed_fraction: float
    resolution_angstrom: tuple[float, ...]
    e_step_resolution_angstrom: float
    result: ClassEMResult | None = None


def write_class_em(result: ClassEMResult, output_dir: str | Path,
                   extra_metrics: dict | None = None) -> dict:
    """Write the classification: class maps, assignments and metrics.

    Files (all written atomically):

    * ``volumes/class_<k>.mrc`` (``k = 0 .. K - 1``) with the voxel size;
    * ``classes.npz``: ``posteriors`` ``(N, K)`` float32, ``best_class`` ``(N,)``,
      ``max_posterior`` ``(N,)``, ``particle_ids`` ``(N,)``;
    * ``metrics.json``: class fractions, per-class particle counts and
      resolutions, log-likelihood per iteration, ``sigma2`` and the half-map
      FSC curves.

    Parameters
    ----------
    result
        The classification.
    output_dir
        Folder (created).
    extra_metrics
        Fields added to ``metrics.json`` (e.g. the recipe and its settings).

    Returns
    -------
    dict
        The metrics written.
    """
    out = Path(output_dir)
    (out / "volumes").mkdir(parents=True, exist_ok=True)
    apix = result.pixel_size_angstrom
    for k in range(result.n_classes):
        write_volume(out / "volumes" / f"class_{k}.mrc", result.maps[k].numpy(), apix)
    best = result.best_class
    with atomic_output(out / "classes.npz") as tmp, open(tmp, "wb") as handle:
        np.savez(handle, posteriors=result.posteriors.numpy().astype(np.float32),
                 best_class=best, max_posterior=result.max_posterior,
                 particle_ids=result.particle_ids)
    metrics = {
        "n_classes": result.n_classes,
        "n_particles": int(result.posteriors.shape[0]),
        "n_iterations": result.n_iterations,
        "pixel_size_angstrom": apix,
        "box_size": int(result.maps.shape[-1]),
        "initialisation": result.initialisation,
        "mask_fraction": result.mask_fraction,
        "seconds": result.seconds,
        "class_fractions": [float(f) for f in result.class_fractions],
        "class_counts": [int(np.sum(best == k)) for k in range(result.n_classes)],
        "resolution_half_maps_0143_angstrom": list(result.resolution_angstrom),
        "log_likelihood_per_iteration": list(result.log_likelihoods),
        "sigma2_per_shell": [float(v) for v in result.sigma2],
        "half_map_fsc": [c.to_dict() for c in result.half_fsc],
        **(extra_metrics or {}),
    }
    with atomic_output(out / "metrics.json") as tmp:
        Path(tmp).write_text(json.dumps(metrics, indent=2))
    return metrics
