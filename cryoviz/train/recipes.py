"""Recipes: a training method is a configuration of the one loop.

``get_recipe(name, **overrides)`` returns a frozen :class:`Recipe`.

========================  ======================================================
``cryodrgn``              implicit Hartley volume, continuous ``z``, VAE image
                          encoder, ``beta = 1 / zdim``, Adam ``lr = 1e-4``
``cryodrgn-ae``           the same with a deterministic auto-encoder (no KL)
``autodecoder``           implicit volume, per-particle latent table
``voxel-homogeneous``     a voxel map, no ``z`` (Adam ``lr = 1e-2`` with weight
                          decay ``1e-3`` on the O(1)-scaled voxels: an L2 prior
                          that keeps CTF-zero frequencies from drifting)
``e2gmm``                 Gaussian-mixture volume (E2GMM, Chen & Ludtke 2021):
                          neutral Gaussians + decoder of per-Gaussian changes,
                          VAE image encoder, FRC loss; reference-free
                          (``gaussians`` components) or from ``reference``
========================  ======================================================
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from cryoviz.errors import InputError

__all__ = ["Recipe", "RECIPES", "get_recipe"]


@dataclass(frozen=True)
class Recipe:
    """Settings of a training run.

    Attributes
    ----------
    name
        Recipe name.
    volume
        ``'implicit'``, ``'voxel'`` or ``'gmm'`` (Gaussian mixture).
    domain
        Implicit volume output: ``'hartley'`` or ``'fourier'``.
    encoder
        ``'vae'``, ``'ae'`` (image MLP), ``'table'`` (auto-decoder) or ``'none'``.
    zdim
        Latent length (0 for homogeneous recipes).
    beta
        KL weight; ``None`` means ``1 / zdim``.
    epochs, batch_size, lr, weight_decay, seed
        Optimisation (Adam).
    width, depth, pe_dim, pe_sigma
        Implicit volume network (see :class:`cryoviz.volumes.ImplicitVolume`).
    enc_width, enc_depth
        Encoder MLP.
    table_noise_std
        Fixed noise added to auto-decoder latents during training.
    box
        Train on images Fourier-cropped to this box (``None``: the data's box).
    chunk_size, window_chunks
        Chunked shuffle of the stack.
    loss
        ``'gaussian'`` (Gaussian likelihood) or ``'frc'`` (E2GMM's ``1 - mean FRC``).
    frc_max_resolution_angstrom
        Highest resolution of the FRC loss (``None``: Nyquist of the training box).
    gaussians
        Number of Gaussians of a reference-free ``gmm`` volume.
    reference
        ``gmm`` initial model: ``None`` (random ball), ``'4ake'`` / ``'1ake'``, a
        PDB / mmCIF path or an MRC map (see :func:`cryoviz.volumes.gmm.load_reference`).
    reference_level
        ``'residue'`` (one Gaussian per residue, at the CA) or ``'atom'``.
    reference_bfactor_a2
        B-factor of the reference's Gaussian widths, Å^2.
    max_shift_px
        Scale of the ``gmm`` decoder's centre changes, pixels.
    """

    name: str
    volume: str = "implicit"
    domain: str = "hartley"
    encoder: str = "vae"
    zdim: int = 8
    beta: float | None = None
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 0.0
    seed: int = 0
    width: int = 128
    depth: int = 3
    pe_dim: int = 64
    pe_sigma: float = 0.25
    enc_width: int = 256
    enc_depth: int = 2
    table_noise_std: float = 0.0
    box: int | None = None
    chunk_size: int = 256
    window_chunks: int = 4
    loss: str = "gaussian"
    frc_max_resolution_angstrom: float | None = None
    gaussians: int = 256
    reference: str | None = None
    reference_level: str = "residue"
    reference_bfactor_a2: float = 20.0
    max_shift_px: float = 2.0

    @property
    def kl_weight(self) -> float:
        """``beta`` (``1 / zdim`` when unset; 0 without a VAE)."""
        if self.encoder != "vae" or self.zdim == 0:
            return 0.0
        return 1.0 / self.zdim if self.beta is None else float(self.beta)

    @property
    def latent_dim(self) -> int:
        """Length of ``z`` (0 for homogeneous recipes)."""
        return 0 if self.encoder == "none" else int(self.zdim)

    def validate(self) -> None:
        """Raise :class:`InputError` for settings that cannot work."""
        def need(ok: bool, field: str, expected: str, got) -> None:
            if not ok:
                raise InputError(None, field, expected, got)

        need(self.volume in ("implicit", "voxel", "gmm"), "volume",
             "'implicit', 'voxel' or 'gmm'", self.volume)
        need(self.domain in ("hartley", "fourier"), "domain", "'hartley' or 'fourier'",
             self.domain)
        need(self.encoder in ("vae", "ae", "table", "none"), "encoder",
             "'vae', 'ae', 'table' or 'none'", self.encoder)
        need(self.volume != "voxel" or self.encoder == "none", "encoder",
             "'none' for a voxel volume", self.encoder)
        need(self.encoder == "none" or self.zdim >= 1, "zdim", "at least 1", self.zdim)
        need(self.epochs >= 1, "epochs", "at least 1", self.epochs)
        need(self.batch_size >= 1, "batch size", "at least 1", self.batch_size)
        need(self.lr > 0, "lr", "> 0", self.lr)
        need(self.width >= 1 and self.depth >= 0, "width / depth", "width >= 1, depth >= 0",
             (self.width, self.depth))
        need(self.box is None or self.box >= 8, "box", "at least 8 pixels", self.box)
        need(self.loss in ("gaussian", "frc"), "loss", "'gaussian' or 'frc'", self.loss)
        need(self.frc_max_resolution_angstrom is None or self.frc_max_resolution_angstrom > 0,
             "frc_max_resolution_angstrom", "> 0", self.frc_max_resolution_angstrom)
        need(self.gaussians >= 1, "gaussians", "at least 1", self.gaussians)
        need(self.reference_level in ("residue", "atom"), "reference_level",
             "'residue' or 'atom'", self.reference_level)


RECIPES: dict[str, Recipe] = {
    "cryodrgn": Recipe(name="cryodrgn"),
    "cryodrgn-ae": Recipe(name="cryodrgn-ae", encoder="ae"),
    "autodecoder": Recipe(name="autodecoder", encoder="table", lr=1e-3, table_noise_std=0.05),
    "voxel-homogeneous": Recipe(name="voxel-homogeneous", volume="voxel", encoder="none",
                                zdim=0, lr=1e-2, weight_decay=1e-3, epochs=10,
                                batch_size=128),
    "e2gmm": Recipe(name="e2gmm", volume="gmm", encoder="vae", zdim=4, loss="frc",
                    lr=1e-3, epochs=20, batch_size=32, width=128, depth=2,
                    gaussians=256, enc_width=128, enc_depth=2),
}


def get_recipe(name: str, **overrides) -> Recipe:
    """The recipe ``name`` with ``overrides`` applied (``None`` values are ignored).

    Raises
    ------
    InputError
        For an unknown recipe or setting.
    """
    if name not in RECIPES:
        raise InputError(None, "recipe", f"one of {', '.join(RECIPES)}", name)
    names = {f.name for f in dataclasses.fields(Recipe)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise InputError(None, "recipe setting", f"one of {', '.join(sorted(names))}",
                         ", ".join(unknown))
    given = {k: v for k, v in overrides.items() if v is not None}
    recipe = dataclasses.replace(RECIPES[name], **given)
    recipe.validate()
    return recipe
