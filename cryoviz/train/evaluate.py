"""Load a training run and render its volumes at given latents.

:func:`eval_volumes` decodes a batch of maps; :class:`LatticeDecoder` decodes
one map after another at a fixed box (the napari latent explorer's clicks),
with its frequency lattice prepared once and an optional low-pass preview.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np
import torch

from cryoviz.errors import InputError
from cryoviz.fourier import centered_ifft3
from cryoviz.io.mrc import write_volume
from cryoviz.train.distributed import autocast_dtype
from cryoviz.train.models import build_models
from cryoviz.train.recipes import ADDED_SETTINGS, Recipe
from cryoviz.train.run_files import latest_checkpoint
from cryoviz.volumes import ImplicitVolume, VolumeModel
from cryoviz.volumes.implicit import canonical_sign

__all__ = ["Run", "load_run", "saved_recipe", "eval_volumes", "write_volumes", "voxel_size",
           "LatticeDecoder"]


@dataclass
class Run:
    """A trained run.

    Attributes
    ----------
    path
        The run folder.
    config
        ``config.toml`` as a dict.
    recipe
        The recipe it was trained with.
    volume
        The volume model (eval mode, last checkpoint's weights).
    encoder
        The encoder, or None.
    epoch
        Epoch of the loaded checkpoint.
    box_size, pixel_size_angstrom
        Training box and pixel size.
    mu, logvar, particle_ids
        ``(N, L)`` latent means / log-variances and ``(N,)`` ids from
        ``latents.npz`` (None when absent).
    """

    path: Path
    config: dict
    recipe: Recipe
    volume: VolumeModel
    encoder: torch.nn.Module | None
    epoch: int
    box_size: int
    pixel_size_angstrom: float
    mu: np.ndarray | None = None
    logvar: np.ndarray | None = None
    particle_ids: np.ndarray | None = None

    @property
    def latent_dim(self) -> int:
        """Length of ``z`` (0 for homogeneous runs)."""
        return int(self.volume.latent_dim)


def _read_config(run_dir: Path) -> dict | None:
    """``run_dir/config.toml`` as a dict, or None when the folder has none."""
    cfg_path = run_dir / "config.toml"
    if not cfg_path.is_file():
        return None
    with open(cfg_path, "rb") as fh:
        return tomllib.load(fh)


def _recipe_of(config: dict) -> Recipe:
    fields = {f.name for f in dataclasses.fields(Recipe)}
    saved = {**ADDED_SETTINGS, **config["recipe"]}
    return Recipe(**{k: v for k, v in saved.items() if k in fields})


def saved_recipe(run_dir: str | PathLike) -> Recipe | None:
    """The recipe a training run was started with (its ``config.toml``), or None.

    Settings a front end does not show (e.g. ``domain``, which changed default
    on 2026-12-05) come from here when it resumes a run, so that the resumed
    run trains the model its checkpoints hold. None for a folder without a
    ``config.toml`` (nothing to resume).
    """
    config = _read_config(Path(run_dir))
    return None if config is None else _recipe_of(config)


def load_run(run_dir: str | PathLike, device: str | torch.device = "cpu") -> Run:
    """Load ``config.toml``, the last checkpoint and ``latents.npz`` of a run."""
    path = Path(run_dir)
    config = _read_config(path)
    if config is None:
        raise InputError(path, "config.toml", "a training run folder", got="no config.toml")
    recipe = _recipe_of(config)
    data = config["data"]
    box, apix = int(data["box_size"]), float(data["pixel_size_angstrom"])
    volume, encoder = build_models(recipe, box, apix, int(data["n_particles"]))
    ckpt = latest_checkpoint(path)
    if ckpt is None:
        raise InputError(path / "checkpoints", "checkpoint", "an epoch_NNNN.pt file",
                         got="none")
    state = torch.load(ckpt, map_location=device, weights_only=True)
    volume.load_state_dict(state["volume"])
    volume.to(device).eval()
    if encoder is not None:
        encoder.load_state_dict(state["encoder"])
        encoder.to(device).eval()
    run = Run(path=path, config=config, recipe=recipe, volume=volume, encoder=encoder,
              epoch=int(state["epoch"]), box_size=box, pixel_size_angstrom=apix)
    latents = path / "latents.npz"
    if latents.is_file():
        with np.load(latents) as npz:
            run.mu = npz["mu"]
            run.logvar = npz["logvar"] if "logvar" in npz else None
            run.particle_ids = npz["particle_ids"]
    return run


@torch.no_grad()
def eval_volumes(run: Run, z: np.ndarray | torch.Tensor | None,
                 box_size: int | None = None) -> torch.Tensor:
    """Maps ``(M, d, d, d)`` (float32, CPU) at latents ``z`` ``(M, L)``.

    For homogeneous runs ``z`` may be ``None`` (one map). ``box_size`` other than
    the training box renders the same physical extent (voxel size
    ``pixel_size * D / d``, see :func:`voxel_size`).
    """
    device = next(iter(run.volume.buffers()), torch.zeros(())).device
    if run.latent_dim == 0:
        count = 1 if z is None else max(1, int(np.asarray(z).reshape(-1, 1).shape[0]))
        one = run.volume.volume(None, box_size).float().cpu()
        return one[None].expand(count, *one.shape).clone()
    if z is None:
        raise InputError(None, "z", f"latents of length {run.latent_dim}", got="none")
    zt = torch.as_tensor(np.asarray(z, dtype=np.float32), device=device)
    if zt.ndim == 1:
        zt = zt.reshape(1, -1) if zt.numel() == run.latent_dim else zt.reshape(-1, 1)
    if zt.shape[-1] != run.latent_dim:
        raise InputError(None, "z", f"vectors of length {run.latent_dim}",
                         got=f"length {zt.shape[-1]}")
    return torch.stack([run.volume.volume(v, box_size).float().cpu() for v in zt])


def voxel_size(run: Run, box_size: int | None = None) -> float:
    """Voxel size in Å of maps rendered at ``box_size`` (same extent as training)."""
    box = run.box_size if box_size is None else int(box_size)
    return run.pixel_size_angstrom * run.box_size / box


def write_volumes(volumes: torch.Tensor | np.ndarray, output_dir: str | PathLike,
                  voxel_size_angstrom: float, prefix: str = "vol") -> list[Path]:
    """Write ``(M, d, d, d)`` maps as ``OUTDIR/{prefix}_{i:03d}.mrc`` with the voxel size."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, vol in enumerate(np.asarray(volumes, dtype=np.float32)):
        p = out / f"{prefix}_{i:03d}.mrc"
        write_volume(p, vol, voxel_size_angstrom)
        paths.append(p)
    return paths


def _as_latent(volume: VolumeModel, z: np.ndarray | torch.Tensor | None,
               device: torch.device, dtype: torch.dtype) -> torch.Tensor | None:
    """``z`` as a ``(L,)`` tensor (``None`` for homogeneous models); clear errors otherwise."""
    latent_dim = int(volume.latent_dim)
    if latent_dim == 0:
        return None
    if z is None:
        raise InputError(None, "z", f"a latent of length {latent_dim}", got="none")
    zt = torch.as_tensor(np.asarray(z, dtype=np.float32), device=device).to(dtype).reshape(-1)
    if zt.numel() != latent_dim:
        raise InputError(None, "z", f"one latent of length {latent_dim}",
                         got=f"{zt.numel()} values")
    return zt


class LatticeDecoder:
    """Decode maps of one model at one box, one latent after another.

    For an :class:`~cryoviz.volumes.ImplicitVolume` the frequency lattice is
    prepared once: the points inside the Nyquist ball that the network must be
    read at (the canonical half; the other half is their complex conjugate),
    their lattice indices and their mirrors, sorted by radius. The network's
    first-layer pre-activations at those points do not depend on ``z``
    (:meth:`~cryoviz.volumes.ImplicitVolume.first_layer_at`); they are
    computed once too, when they fit in ``cache_bytes``, which skips the
    random features and the first layer (about 30 % of a decode with the
    cryodrgn recipe's network). A call then evaluates the rest of the network
    at those points (in chunks, under :func:`torch.inference_mode`), scatters
    the values and inverts one FFT. The map is the one
    ``volume.volume(z, box_size)`` gives (same frequencies, same values to
    float32 rounding). The cache holds the weights of construction time: make
    a new decoder after the weights change.

    :meth:`progressive` first gives a low-pass *preview*: the same map with
    only the frequencies inside a smaller ball (by default half the decoded
    band: the content of a decode at half the box, Fourier-upsampled to the
    full box, for about 1/8 of the network evaluations), then the full map,
    reusing the preview's values (no work is repeated).

    Other volume models (voxel, Gaussian mixture) are decoded with
    ``volume.volume(z, box_size)`` (no preview).

    Parameters
    ----------
    volume
        The model (a run's ``run.volume``), in eval mode.
    box_size
        Box ``d`` of the maps (same physical extent as the model's box).
    chunk_points
        Canonical points per network call (small chunks keep the activations
        in cache).
    precision
        ``'fp32'`` (default) or ``'bf16'``: an implicit model's MLP runs under
        bfloat16 autocast (faster on CPUs with native bfloat16, see
        :func:`~cryoviz.train.distributed.bf16_is_fast`; the maps differ slightly
        from float32 ones: ``tests/test_lattice_decoder.py`` bounds the
        difference). The cached first layer keeps the model's dtype.
    cache_bytes
        Most bytes the first-layer cache may take (``n_points * S * width``
        elements of the model's dtype, ``S`` = 1 for ``fourier`` and 2 for
        ``hartley``; for the cryodrgn recipe's network of width 128 in float32
        35 MB at box 64 and 0.28 GB at box 128 with its default ``fourier``
        output, twice that with ``hartley``); a larger lattice is decoded without
        it. 0 turns it off.
    """

    def __init__(self, volume: VolumeModel, box_size: int | None = None,
                 chunk_points: int = 2048, precision: str = "fp32",
                 cache_bytes: int = 1 << 30) -> None:
        self.volume = volume
        self.precision = precision
        device = next(iter(volume.buffers()), torch.zeros(())).device
        self.network_dtype = autocast_dtype(precision, device)
        self.box_size = int(volume.box_size if box_size is None else box_size)
        if self.box_size < 2:
            raise InputError(None, "box_size", "at least 2", got=self.box_size)
        self.chunk_points = max(1, int(chunk_points))
        self.implicit = isinstance(volume, ImplicitVolume)
        self._first: torch.Tensor | None = None
        if self.implicit:
            self._prepare_lattice()
            self._prepare_first_layer(int(cache_bytes))

    @property
    def n_points(self) -> int:
        """Lattice points the network is read at for a full map (0 for other models)."""
        return int(self._points.shape[0]) if self.implicit else 0

    def _prepare_lattice(self) -> None:
        vol, box = self.volume, self.box_size
        dtype = vol.pe_frequencies.dtype
        device = vol.pe_frequencies.device
        idx = torch.arange(box, device=device)
        c = box // 2
        # the lattice of ImplicitVolume.lattice_transform at the same physical extent
        axis = (idx - c).to(dtype) / box * (box / vol.box_size)
        gz, gy, gx = torch.meshgrid(axis, axis, axis, indexing="ij")
        q = torch.stack([gx, gy, gz], dim=-1).reshape(-1, 3)
        radius = torch.linalg.vector_norm(q, dim=-1)
        mirror_axis = 2 * c - idx
        valid_axis = (mirror_axis >= 0) & (mirror_axis < box)
        mz, my, mx = torch.meshgrid(*(mirror_axis.clamp(0, box - 1),) * 3, indexing="ij")
        vz, vy, vx = torch.meshgrid(*(valid_axis,) * 3, indexing="ij")
        mirror = ((mz * box + my) * box + mx).reshape(-1)
        has_mirror = (vz & vy & vx).reshape(-1)
        canonical = canonical_sign(q) > 0
        # read the network at canonical points (and at the few without a partner)
        need = (radius < 0.5) & (canonical | ~has_mirror)
        points = torch.nonzero(need).squeeze(1)
        order = torch.argsort(radius[points], stable=True)
        points = points[order]
        self._points = points
        self._q = q[points].contiguous()
        self._radius = radius[points].contiguous()
        mirrored = canonical[points] & has_mirror[points]
        self._mirror_rows = torch.nonzero(mirrored).squeeze(1)
        self._mirror_index = mirror[points[self._mirror_rows]]
        self._value_scale = float(box / vol.box_size) ** 3  # (model pixel / voxel size)^3
        # the band a full decode covers, in model cycles per pixel
        self.band_limit = min(0.5, 0.5 * box / vol.box_size)

    @property
    def cached(self) -> bool:
        """Whether the first-layer pre-activations are cached (see ``cache_bytes``)."""
        return self._first is not None

    def _prepare_first_layer(self, cache_bytes: int) -> None:
        vol = self.volume
        reads = 2 if vol.domain == "hartley" else 1
        width = vol.mlp.inp.out_features
        if reads * self.n_points * width * self._q.element_size() > cache_bytes:
            return
        with torch.inference_mode():
            self._first = torch.cat([vol.first_layer_at(self._q[s:s + self.chunk_points])
                                     for s in range(0, self.n_points, self.chunk_points)])

    def _values(self, z: torch.Tensor | None, start: int, stop: int) -> torch.Tensor:
        """Complex transform values ``(stop - start,)`` at the sorted points."""
        zz = None if z is None else z[None]
        parts = []
        for s in range(start, stop, self.chunk_points):
            e = min(stop, s + self.chunk_points)
            if self._first is not None:
                parts.append(self.volume.values_from_first_layer(
                    self._first[s:e], self._q[s:e], z, self.network_dtype))
            else:
                parts.append(self.volume.evaluate(self._q[s:e][None], zz,
                                                  self.network_dtype)[0])
        if not parts:
            return torch.zeros(0, dtype=torch.complex64, device=self._q.device)
        return torch.cat(parts)

    def _map(self, values: torch.Tensor) -> torch.Tensor:
        """Real map ``(d, d, d)`` float32 from the values at the first ``len(values)`` points."""
        box = self.box_size
        n = values.shape[0]
        ft = torch.zeros(box ** 3, dtype=values.dtype, device=values.device)
        values = values * self._value_scale
        ft[self._points[:n]] = values
        rows = self._mirror_rows[self._mirror_rows < n]
        ft[self._mirror_index[: rows.shape[0]]] = values[rows].conj()
        return centered_ifft3(ft.reshape(box, box, box)).real.float().cpu()

    def _latent(self, z) -> torch.Tensor | None:
        dtype = self._q.dtype if self.implicit else torch.float32
        device = next(iter(self.volume.buffers()), torch.zeros(())).device
        return _as_latent(self.volume, z, device, dtype)

    def __call__(self, z: np.ndarray | torch.Tensor | None = None) -> torch.Tensor:
        """The map ``(d, d, d)`` (float32, CPU) at latent ``z`` ``(L,)`` (``None``: homogeneous)."""
        zt = self._latent(z)
        with torch.inference_mode():
            if not self.implicit:
                return self.volume.volume(zt, self.box_size).float().cpu()
            return self._map(self._values(zt, 0, self.n_points))

    def preview_points(self, preview_fraction: float) -> int:
        """Network reads of a preview whose ball is ``preview_fraction`` of the band."""
        if not self.implicit:
            return 0
        cutoff = float(preview_fraction) * self.band_limit
        return int(torch.searchsorted(self._radius, torch.tensor(cutoff, dtype=self._radius.dtype)))

    def progressive(self, z: np.ndarray | torch.Tensor | None = None,
                    preview_fraction: float = 0.5
                    ) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield ``('preview', map)`` then ``('full', map)``, maps ``(d, d, d)`` float32.

        The preview keeps the frequencies below ``preview_fraction`` of the
        decoded band (``|q| < preview_fraction * band_limit``) and is exactly the
        full map low-pass filtered with that sharp ball. Models other than
        implicit ones, and ``preview_fraction`` of 0 or at least 1, yield only
        the full map.
        """
        if not 0.0 <= float(preview_fraction):
            raise InputError(None, "preview_fraction", "a number >= 0 (>= 1: no preview)",
                             got=preview_fraction)
        # Grad mode is thread-local: never yield inside ``inference_mode``, or the
        # consumer (e.g. a reused worker thread) would run with autograd off.
        zt = self._latent(z)
        if not self.implicit:
            yield "full", self(zt)
            return
        n_inner = self.preview_points(preview_fraction) if preview_fraction < 1 else 0
        with torch.inference_mode():
            inner = self._values(zt, 0, n_inner)
            preview = self._map(inner) if n_inner else None
        if preview is not None:
            yield "preview", preview
        with torch.inference_mode():
            full = self._map(torch.cat([inner, self._values(zt, n_inner, self.n_points)]))
        yield "full", full
