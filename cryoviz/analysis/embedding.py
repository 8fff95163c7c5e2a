"""Low-dimensional views of a latent space: PCA (numpy SVD) and UMAP.

All functions take and return numpy arrays; ``z`` is always ``(N, L)``, one
latent vector per particle.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

__all__ = ["PCAResult", "pca", "umap_embedding", "as_latents"]


def as_latents(z, name: str = "z", min_rows: int = 1) -> np.ndarray:
    """``z`` as a finite ``(N, L)`` float64 array, or a ``ValueError`` saying what is wrong.

    A 1-D array is taken as ``N`` one-dimensional latents.
    """
    arr = np.asarray(z, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise ValueError(f"{name} must be an (N, L) array of latent vectors, got shape {arr.shape}")
    if arr.shape[0] < min_rows:
        raise ValueError(f"{name} needs at least {min_rows} rows (particles), got {arr.shape[0]}")
    if arr.shape[1] < 1:
        raise ValueError(f"{name} must have at least one latent dimension, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf")
    return arr


@dataclass(frozen=True)
class PCAResult:
    """Principal components of a set of latents.

    Attributes
    ----------
    components
        ``(C, L)`` unit principal axes, rows ordered by decreasing variance. The
        sign of each axis is fixed so that its largest-magnitude entry is positive.
    explained_variance
        ``(C,)`` variance of the data along each axis (``ddof=1``).
    explained_variance_ratio
        ``(C,)`` fraction of the total variance along each axis (decreasing).
    coords
        ``(N, C)`` the data projected on the axes: ``(z - mean) @ components.T``.
    mean
        ``(L,)`` mean latent.
    """

    components: np.ndarray
    explained_variance: np.ndarray
    explained_variance_ratio: np.ndarray
    coords: np.ndarray
    mean: np.ndarray

    @property
    def n_components(self) -> int:
        return int(self.components.shape[0])

    def transform(self, z) -> np.ndarray:
        """Project ``(M, L)`` latents: returns ``(M, C)`` coordinates."""
        z = as_latents(z)
        if z.shape[1] != self.mean.shape[0]:
            raise ValueError(
                f"expected latents of dimension {self.mean.shape[0]}, got {z.shape[1]}")
        return (z - self.mean) @ self.components.T

    def inverse_transform(self, coords) -> np.ndarray:
        """Latents ``(M, L)`` at PC coordinates ``(M, C')`` (``C' <= C``; missing ones are 0)."""
        c = np.asarray(coords, dtype=np.float64)
        if c.ndim == 1:
            c = c[None]
        if c.ndim != 2 or c.shape[1] > self.n_components:
            raise ValueError(
                f"coords must be (M, C') with C' <= {self.n_components}, got shape {c.shape}")
        return self.mean + c @ self.components[: c.shape[1]]


def pca(z, n_components: int | None = None) -> PCAResult:
    """Principal component analysis by SVD of the centred data.

    Parameters
    ----------
    z
        ``(N, L)`` latents, ``N >= 2``.
    n_components
        Number of components ``C`` to keep (default ``min(N, L)``).

    Returns
    -------
    PCAResult
        Axes ``(C, L)``, explained variance and its ratio ``(C,)`` (decreasing),
        projected coordinates ``(N, C)`` and the mean ``(L,)``.
    """
    z = as_latents(z, min_rows=2)
    n, dim = z.shape
    c_max = min(n, dim)
    if n_components is None:
        n_components = c_max
    n_components = int(n_components)
    if not 1 <= n_components <= c_max:
        raise ValueError(f"n_components must be in [1, {c_max}] for data of shape {z.shape}, "
                         f"got {n_components}")
    mean = z.mean(axis=0)
    x = z - mean
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    # deterministic signs: the largest-magnitude entry of each axis is positive
    big = np.argmax(np.abs(vt), axis=1)
    signs = np.sign(vt[np.arange(vt.shape[0]), big])
    signs[signs == 0] = 1.0
    vt = vt * signs[:, None]
    var = s**2 / (n - 1)
    total = var.sum()
    ratio = var / total if total > 0 else np.zeros_like(var)
    comps = vt[:n_components]
    return PCAResult(
        components=comps,
        explained_variance=var[:n_components],
        explained_variance_ratio=ratio[:n_components],
        coords=x @ comps.T,
        mean=mean,
    )


def umap_embedding(z, n_neighbors: int = 15, min_dist: float = 0.1, seed: int = 0) -> np.ndarray:
    """2-D UMAP embedding of the latents (``umap-learn``, imported on first use).

    Parameters
    ----------
    z
        ``(N, L)`` latents, ``N >= 3``.
    n_neighbors
        Size of the local neighbourhood (clipped to ``N - 1``).
    min_dist
        Minimum distance between embedded points.
    seed
        Random state; with a seed UMAP runs single-threaded and is reproducible.

    Returns
    -------
    np.ndarray
        ``(N, 2)`` float64 embedding.

    Notes
    -----
    The first call in a process JIT-compiles UMAP's numba kernels (about a
    minute on two cores); set ``NUMBA_CACHE_DIR`` to a kept folder to reuse
    the compiled code across processes.
    """
    z = as_latents(z, min_rows=3)
    try:
        import umap  # noqa: PLC0415 - optional, heavy (numba JIT)
    except ImportError as err:
        raise ImportError(
            "umap_embedding needs the umap-learn package: pip install umap-learn"
        ) from err
    n_neighbors = int(min(max(2, n_neighbors), z.shape[0] - 1))
    reducer = umap.UMAP(
        n_components=2, n_neighbors=n_neighbors, min_dist=float(min_dist),
        random_state=int(seed), n_jobs=1,
    )
    with warnings.catch_warnings():
        # "n_jobs value 1 overridden to 1 by setting random_state" and similar chatter
        warnings.filterwarnings("ignore", category=UserWarning, module="umap")
        out = reducer.fit_transform(z)
    return np.asarray(out, dtype=np.float64)
