"""Load a training run and render its volumes at given latents."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

import numpy as np
import torch

from cryoviz.errors import InputError
from cryoviz.io.mrc import write_volume
from cryoviz.train.loop import build_models, latest_checkpoint
from cryoviz.train.recipes import Recipe
from cryoviz.volumes import VolumeModel

__all__ = ["Run", "load_run", "eval_volumes", "write_volumes", "voxel_size"]


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


def load_run(run_dir: str | PathLike, device: str | torch.device = "cpu") -> Run:
    """Load ``config.toml``, the last checkpoint and ``latents.npz`` of a run."""
    path = Path(run_dir)
    cfg_path = path / "config.toml"
    if not cfg_path.is_file():
        raise InputError(path, "config.toml", "a training run folder", got="no config.toml")
    with open(cfg_path, "rb") as fh:
        config = tomllib.load(fh)
    fields = {f.name for f in dataclasses.fields(Recipe)}
    recipe = Recipe(**{k: v for k, v in config["recipe"].items() if k in fields})
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
