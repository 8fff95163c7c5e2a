"""A loaded run and what the docks compute from it (no Qt, no napari).

Everything here goes through :mod:`cryoviz.api`; the docks only display it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np

from cryoviz import api

__all__ = ["RunSession", "LatentPath", "true_labels"]


def true_labels(particles: api.ParticleSet) -> np.ndarray | None:
    """Simulated state labels ``(N,)`` from ``truth/truth.npz`` beside the particle file.

    ``None`` when the particles were not simulated by cryoviz (no such file, or
    a different particle count).
    """
    if particles.source_path is None:
        return None
    truth = Path(particles.source_path).parent / "truth" / "truth.npz"
    if not truth.is_file():
        return None
    with np.load(truth) as npz:
        if "labels" not in npz:
            return None
        labels = np.asarray(npz["labels"])
    if labels.shape[0] <= int(np.max(particles.particle_ids, initial=-1)):
        return None
    return labels[particles.particle_ids]


@dataclass(frozen=True)
class LatentPath:
    """A path through latent space.

    Attributes
    ----------
    z
        ``(n, L)`` latents along the path.
    kind
        ``'pc'``, ``'straight'`` or ``'knn'``.
    particle_indices
        ``(m,)`` particles the path visits (kNN paths), else None.
    """

    z: np.ndarray
    kind: str
    particle_indices: np.ndarray | None = None


class RunSession:
    """A trained run with lazily computed embeddings and per-particle columns.

    Parameters
    ----------
    run_dir
        The run folder (``config.toml``, checkpoints, ``latents.npz``).
    """

    def __init__(self, run_dir: str | PathLike) -> None:
        self.path = Path(run_dir)
        self.run = api.load_run(self.path)
        self._particles: api.ParticleSet | None = None
        self._pca: api.PCAResult | None = None
        self._umap: np.ndarray | None = None
        self._columns: dict[str, np.ndarray] | None = None
        self._posterior = None
        self._decoders: dict[int, api.LatticeDecoder] = {}
        # bfloat16 networks where the hardware runs them natively (faster clicks)
        self._decode_precision = "bf16" if self.fast_decode_available else "fp32"
        poses = self.path / "poses.npz"
        if poses.is_file():
            self._posterior = api.read_pose_posterior(poses)

    # -- basic facts ---------------------------------------------------------------------
    @property
    def latent_dim(self) -> int:
        """Length of ``z`` (0 for homogeneous runs)."""
        return self.run.latent_dim

    @property
    def z(self) -> np.ndarray:
        """``(N, L)`` latent means (an :class:`InputError` for runs without latents)."""
        return api.run_latents(self.run)

    @property
    def n_particles(self) -> int:
        """Number of particles the run was trained on."""
        return int(self.run.config["data"]["n_particles"])

    @property
    def posterior(self) -> api.PosePosterior | None:
        """The run's pose posterior (``poses.npz``), or None."""
        return self._posterior

    @property
    def particles(self) -> api.ParticleSet:
        """The run's particle set (poses from ``poses.npz`` when present)."""
        if self._particles is None:
            self._particles = api.run_particles(self.run)
        return self._particles

    def voxel_size(self, box_size: int | None = None) -> float:
        """Voxel size in Å of maps decoded at ``box_size``."""
        return float(api.voxel_size(self.run, box_size))

    def loss_log(self) -> list[dict]:
        """The per-epoch records of ``log.jsonl``."""
        log = self.path / "log.jsonl"
        if not log.is_file():
            return []
        return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]

    # -- volumes -------------------------------------------------------------------------
    @property
    def fast_decode_available(self) -> bool:
        """Whether the run's device multiplies bfloat16 natively (:func:`api.bf16_is_fast`)."""
        param = next(iter(self.run.volume.parameters()), None)
        return api.bf16_is_fast("cpu" if param is None else param.device)

    @property
    def decode_precision(self) -> str:
        """``'bf16'`` or ``'fp32'``: the precision of the clicked maps' network.

        Defaults to ``'bf16'`` where :attr:`fast_decode_available` (maps within a
        few 1e-3 of the float32 ones, relative L2), else ``'fp32'``. Paths and
        exported maps are always decoded in float32.
        """
        return self._decode_precision

    @decode_precision.setter
    def decode_precision(self, precision: str) -> None:
        if precision not in ("fp32", "bf16"):
            raise api.InputError(None, "decode precision", "'fp32' or 'bf16'", got=precision)
        if precision != self._decode_precision:
            self._decode_precision = precision
            self._decoders = {}

    def decoder(self, box_size: int | None = None) -> api.LatticeDecoder:
        """The run's :class:`~cryoviz.api.LatticeDecoder` at ``box_size`` (made once per box)."""
        box = self.run.box_size if box_size is None else int(box_size)
        decoders = self._decoders
        if box not in decoders:
            decoders[box] = api.LatticeDecoder(self.run.volume, box,
                                               precision=self._decode_precision)
        return decoders[box]

    def decode(self, z: np.ndarray | None, box_size: int | None = None) -> np.ndarray:
        """Maps ``(M, d, d, d)`` float32 at latents ``(M, L)`` (``None``: homogeneous)."""
        if self.latent_dim == 0:
            return api.eval_volumes(self.run, z, box_size=box_size).numpy()
        zs = np.asarray(z, dtype=np.float32).reshape(-1, self.latent_dim)
        dec = self.decoder(box_size)
        return np.stack([dec(zi).numpy() for zi in zs])

    def decode_progressive(self, z: np.ndarray | None, box_size: int | None = None,
                           preview_fraction: float = 0.5):
        """Yield ``(stage, map)``: a low-pass ``'preview'`` map first, then the ``'full'`` one.

        ``z`` is one latent ``(L,)`` (``None``: homogeneous); maps are ``(d, d, d)``
        float32 (see :meth:`cryoviz.api.LatticeDecoder.progressive`).
        """
        for stage, volume in self.decoder(box_size).progressive(z, preview_fraction):
            yield stage, volume.numpy()

    def representative_volume(self, box_size: int | None = None) -> np.ndarray:
        """One map ``(d, d, d)``: the homogeneous map or the one at the median latent."""
        if self.latent_dim == 0 or self.run.mu is None:
            z = None if self.latent_dim == 0 else np.zeros((1, self.latent_dim))
        else:
            z = np.median(self.z, axis=0, keepdims=True)
        return self.decode(z, box_size)[0]

    # -- embeddings ----------------------------------------------------------------------
    def pca(self) -> api.PCAResult:
        """PCA of the latents (cached)."""
        if self._pca is None:
            self._pca = api.pca(self.z)
        return self._pca

    @property
    def has_umap(self) -> bool:
        """Whether the UMAP embedding is computed already."""
        return self._umap is not None

    def embedding(self, kind: str = "pca") -> np.ndarray:
        """``(N, C)`` coordinates: all principal components, or the 2-D UMAP."""
        if kind == "pca":
            return self.pca().coords
        if kind == "umap":
            if self._umap is None:
                self._umap = api.umap_embedding(self.z)
            return self._umap
        raise api.InputError(None, "embedding", "'pca' or 'umap'", got=kind)

    def embed_path(self, path: LatentPath, kind: str, axes: tuple[int, int]) -> np.ndarray:
        """``(n, 2)`` coordinates of a path on the scatter ``kind`` / ``axes``.

        PCA projects the path's latents; UMAP (no inverse) uses the embedding of
        the visited particles, or of the particle nearest to each path point.
        """
        if kind == "pca":
            p = self.pca()
            coords = (path.z - p.mean) @ p.components.T
            return coords[:, list(axes)]
        emb = self.embedding(kind)
        if path.particle_indices is not None and len(path.particle_indices) == len(path.z):
            idx = path.particle_indices
        else:
            d2 = ((path.z[:, None, :] - self.z[None, :, :]) ** 2).sum(-1)
            idx = np.argmin(d2, axis=1)
        return emb[idx][:, list(axes)]

    # -- per-particle columns ------------------------------------------------------------
    def columns(self, n_clusters: int = 4) -> dict[str, np.ndarray]:
        """Per-particle ``(N,)`` columns for colouring the scatter.

        ``cluster`` (k-means on z), ``defocus_angstrom``, ``view_theta_deg`` /
        ``view_phi_deg`` (viewing direction), ``latent_spread`` (mean posterior
        std of z from the encoder), ``angular_spread_deg`` (pose posterior, when
        present) and ``true_label`` (simulated data).
        """
        if self._columns is not None:
            return self._columns
        cols: dict[str, np.ndarray] = {}
        z = self.z
        k = int(min(n_clusters, max(1, len(z) - 1)))
        cols["cluster"] = api.kmeans(z, k, seed=0).labels.astype(np.float64)
        particles = None
        try:
            particles = self.particles
        except (api.InputError, FileNotFoundError, OSError):
            particles = None
        if particles is not None and len(particles) == len(z):
            if particles.ctf is not None:
                cols["defocus_angstrom"] = (
                    0.5 * (particles.ctf.defocus_u_angstrom + particles.ctf.defocus_v_angstrom)
                ).numpy().astype(np.float64)
            if particles.rotations is not None:
                d = api.viewing_directions(particles.rotations)
                cols["view_theta_deg"] = np.degrees(np.arccos(np.clip(d[:, 2], -1, 1)))
                cols["view_phi_deg"] = np.degrees(np.arctan2(d[:, 1], d[:, 0]))
            labels = true_labels(particles)
            if labels is not None:
                cols["true_label"] = labels.astype(np.float64)
        if self.run.logvar is not None:
            cols["latent_spread"] = np.exp(0.5 * self.run.logvar).mean(axis=1).astype(
                np.float64)
        if self._posterior is not None and len(self._posterior) == len(z):
            cols["angular_spread_deg"] = np.asarray(self._posterior.angular_spread_deg,
                                                    dtype=np.float64)
        self._columns = cols
        return cols

    # -- paths ---------------------------------------------------------------------------
    def pc_path(self, component: int, n_points: int) -> LatentPath:
        """Latents along principal component ``component`` (0-based)."""
        return LatentPath(api.pc_traversal(self.pca(), component, n_points), "pc")

    def straight_path(self, start: int, end: int, n_points: int) -> LatentPath:
        """Latents on the segment between particles ``start`` and ``end``."""
        z = self.z
        return LatentPath(api.straight_path(z[start], z[end], n_points), "straight")

    def knn_path(self, start: int, end: int, n_points: int, k: int = 10) -> LatentPath:
        """The kNN-graph path between two particles, resampled to ``n_points``."""
        z = self.z
        visited = np.asarray(api.knn_graph_path(z, start, end, k=k))
        points = z[visited]
        if len(points) == n_points:
            return LatentPath(points, "knn", visited)
        if len(points) < 2:
            points = np.vstack([points, points])
        return LatentPath(api.resample_path(points, n_points), "knn")

    def volume_series(self, path: LatentPath, box_size: int | None = None) -> np.ndarray:
        """``(n, d, d, d)`` maps along a path."""
        return api.volume_series(lambda z: self.decode(z, box_size), path.z)

    # -- selections ----------------------------------------------------------------------
    def select_polygon(self, polygon: np.ndarray, embedding_2d: np.ndarray) -> np.ndarray:
        """Positions of the particles inside ``polygon`` ``(V, 2)`` on ``embedding_2d``."""
        return api.select_particles(self.particles, polygon=np.asarray(polygon),
                                    embedding=np.asarray(embedding_2d))

    def export(self, indices: np.ndarray, output_prefix: str | PathLike,
               formats: tuple[str, ...] = ("star", "cs", "pkl")) -> dict[str, Path]:
        """Write the selected particles as STAR / ``.cs`` / index pickle."""
        return api.export_selection(self.particles, indices, output_prefix, formats=formats)

    def inspect(self, index: int) -> api.ParticleInspection:
        """The particle inspector's computations for one particle."""
        return api.inspect_particles(self.run, [int(index)], particles=self.particles)
