"""Recipes: a training method is a configuration of the one loop.

``get_recipe(name, **overrides)`` returns a frozen :class:`Recipe`.

========================  ======================================================
``cryodrgn``              implicit volume (Fourier output read on the Hermitian
                          half space, as cryoDRGN's default decoder),
                          continuous ``z``, VAE image encoder, ``beta = 1 /
                          zdim``, Adam ``lr = 1e-4``
``cryodrgn-ae``           the same with a deterministic auto-encoder (no KL)
``autodecoder``           implicit volume, per-particle latent table
``voxel-homogeneous``     a voxel map, no ``z`` (Adam ``lr = 1e-2`` with weight
                          decay ``1e-3`` on the O(1)-scaled voxels: an L2 prior
                          that keeps CTF-zero frequencies from drifting)
``e2gmm``                 Gaussian-mixture volume (E2GMM, Chen & Ludtke 2021):
                          neutral Gaussians + decoder of per-Gaussian changes,
                          VAE encoder of each particle's fit gradients at its
                          given pose (the image MLP when poses are amortized;
                          KL weight ``beta = 4`` reached after a 4-epoch
                          warm-up), FRC loss; reference-free (``gaussians``
                          components) or from ``reference``
``3dflex``                canonical voxel map deformed by a displacement field
                          of ``z`` (3DFlex, Punjani & Fleet 2023), auto-decoder
                          latents with fixed noise, smoothness and rigidity
                          regularisers
``cryofold``              residue Gaussians of a base structure (``reference``,
                          required) moved by a decoder of ``z`` (centres only),
                          VAE encoder of each particle's fit gradients at its
                          given pose (the image MLP when poses are amortized),
                          FRC loss, bond-length and elastic-network restraints
                          to the base (after CryoFold, Zhong et al. 2021)
``atomvae``               atom Gaussians of a base structure (``reference``,
                          required) moved by a decoder of ``z``, VAE encoder of
                          ``z`` and an amortized CNN encoder of the poses (8
                          hypotheses, winner-takes-all), Gaussian likelihood,
                          bond-length and elastic-network restraints; the first
                          ``pose_only_epochs`` train the pose encoder alone
                          against the base structure (after Rosenbaum et al.
                          2021); poses need not be given; ``encoder =
                          'joint'``: one CNN gives the poses and ``z``
========================  ======================================================

Poses are given (read with the particles) for every recipe but ``atomvae``;
``poses = 'amortized'`` (any ``gmm`` or reference-free ``implicit`` recipe)
infers them with :mod:`cryoviz.train.amortized_poses`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from cryoviz.errors import InputError
from cryoviz.volumes.implicit import RESIDUAL_RELU

__all__ = ["Recipe", "RECIPES", "get_recipe", "CRYODRGN_PE_SIGMA", "ADDED_SETTINGS",
           "GAUSSIANS_VOXELS"]

#: Scale of the implicit volume's Gaussian random Fourier features, as a fraction
#: of the box: the real-space offsets ``b`` of the features ``cos / sin (2 pi q . b)``
#: have standard deviation ``D / (8 pi)`` pixels (about 0.04 ``D``). This is the
#: scale of cryoDRGN's default Gaussian encoding (``--feat-sigma 0.5``: phases
#: ``q . f`` with ``f ~ N(0, (0.5 D / 2)^2)`` radians per cycle/pixel, i.e. ``2 pi b =
#: f``). A wider spread (``0.25 D``, this package's earlier default) gives features
#: that oscillate ``2 pi`` times faster across frequency space: each output then
#: depends on many high-frequency features, neighbouring frequencies share little,
#: and the network fits the noise of every coefficient separately. On a 1,000
#: particle, box-32, SNR 0.3 open / closed adenylate kinase mixture (5 epochs), the
#: change raised 2-means agreement from 0.64 to 0.90 and the masked FSC-AUC against
#: the true states from 0.21 to 0.37 (cryoDRGN ``train_vae``: 0.87 and 0.36), in an
#: ad hoc comparison on 2026-11-25 (no committed script reproduces it;
#: ``tests/test_train_cryodrgn.py`` checks the separation at the new default).
CRYODRGN_PE_SIGMA = 1.0 / (8.0 * math.pi)

#: Recipe settings added after runs had been saved, with the value that reproduces
#: a run whose ``config.toml`` lacks them (it was trained without the feature).
ADDED_SETTINGS: dict[str, object] = {"encoder_centre": False, "encoder_phase_flip": False,
                                     "fit_gradient_norm": 0.0, "pixel_fraction": 1.0,
                                     "residual_relu": "before_sum"}

#: Voxels of the training box per Gaussian of a reference-free ``gmm`` volume when
#: ``gaussians`` is not given (:meth:`Recipe.gaussian_count`).
GAUSSIANS_VOXELS = 128


# E2GMM_DEFAULTS, each measured on the small bench datasets (4,000 particles, box 64,
# 2 Å/px, poses known, three seeds; ``docs/benchmarks.md``, the 2026-12-07 sections;
# a run keeps its values through ``config.toml``, :data:`ADDED_SETTINGS` for the older):
# - KL weight ``beta = 4`` after a 4-epoch linear warm-up (was ``1 / zdim``): at 20
#   epochs mixture FSC-AUC 0.477 against 0.437, path 0.465 against 0.434; beta 4 from
#   the first step left the path's latent at chance after 5 epochs.
# - ``encoder_input = 'fit_gradient'`` where poses are given (:func:`get_recipe`
#   falls back to the image MLP elsewhere): at 20 epochs no mixture particle
#   misplaced (image MLP 5-6); at SNR 0.01 the image MLP under beta 4 loses the states.
# - ``fit_gradient_norm = 8`` (was unscaled): the first epoch's log-variances 2.0-2.7
#   instead of 6.6-9.7 (one run had trained to NaN); SNR-0.01 mixture 0.414 against
#   0.393 at 5 epochs; slow path test rho 0.991 against 0.930.

# The implicit recipes build cryoDRGN's residual layer ``ReLU(h + W h + b)``
# (``residual_relu = 'after_sum'``) since 2026-12-07 (``h + ReLU(W h + b)`` before): on
# the 2,000-particle box-64 mixture against cryoDRGN 4.3.1, eight seeds, 4 epochs,
# masked FSC-AUC +0.007 and 2-means agreement +0.023 on every seed, the agreement
# gap to cryoDRGN (-0.020) closed (``docs/benchmarks.md``, "cryoDRGN's residual layer").

# The implicit recipes default to ``domain = 'fourier'`` since 2026-12-05 (``'hartley'``
# before; a run keeps its domain through ``config.toml``): on a 2,000 particle box-64
# mixture on the 2-core CPU, 19 s per epoch against 36 s at close quality per epoch
# (``docs/benchmarks.md``, "float32, both programs at their default Fourier output").


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
        Implicit volume output: ``'fourier'`` (default; the real and imaginary
        parts at canonical points, one network read per point of the Hermitian
        half space, as cryoDRGN's default ``--domain fourier`` decoder) or
        ``'hartley'`` (one Hartley value, read at ``q`` and ``-q``: twice the
        network work per image and per map).
    encoder
        ``'vae'``, ``'ae'`` (image MLP), ``'table'`` (auto-decoder), ``'joint'`` (a
        VAE head on the amortized pose encoder's CNN: one network for the poses
        and ``z``; needs ``poses = 'amortized'``) or ``'none'``.
    zdim
        Latent length (0 for homogeneous recipes).
    beta
        KL weight; ``None`` means ``1 / zdim``. As cryoDRGN's ``--beta``: the loss
        is the per-pixel mean squared error (in units of the data's power) plus
        ``beta * KL / P``, ``P`` the pixels of the full image transform inside
        Nyquist (before 2026-12-05 ``P`` was the half plane's count, about
        ``P / 2``, so the KL weighed twice as much as cryoDRGN's at equal beta).
    kl_warmup_epochs
        KL warm-up: the KL weight rises linearly from 0 at the first step to
        ``beta`` after this many epochs (fractions allowed; 0: ``beta`` from the
        start). A large ``beta`` applied from the first step can press the latent
        onto the prior before the decoder has learnt to use it
        (:meth:`kl_weight_at`). No effect without a KL term (``ae``, ``table``).
    epochs, batch_size, lr, weight_decay, seed
        Optimisation (Adam).
    width, depth, pe_dim, pe_sigma
        Implicit volume network (see :class:`cryoviz.volumes.ImplicitVolume`).
        ``pe_sigma`` defaults to ``1 / (8 pi)`` (see :data:`CRYODRGN_PE_SIGMA`).
        ``pe_dim`` (random frequencies) ``None`` means ``3 * (D // 2)`` for a
        training box ``D`` (:meth:`random_frequencies`), cryoDRGN's default.
    residual_relu
        Implicit volume's residual layers: ``'after_sum'`` (``ReLU(h + W h + b)``,
        cryoDRGN's decoder, the default since 2026-12-07) or ``'before_sum'``
        (``h + ReLU(W h + b)``, the earlier default; runs saved before the
        setting read it, :data:`ADDED_SETTINGS`).
    enc_width, enc_depth
        Encoder MLP.
    encoder_input
        What the encoder sees: ``'real'`` (the pixels in a disc) or
        ``'hartley'`` (the image's Hartley transform in a disc of frequencies,
        as in cryoDRGN), see :class:`cryoviz.train.encoders.MLPEncoder`; or, for
        a ``gmm`` volume with given poses, ``'fit_gradient'``: the gradient of
        the particle's FRC with the mixture at ``z = 0``, projected at its pose,
        with respect to every Gaussian's centre and amplitude (E2GMM's input,
        :mod:`cryoviz.train.fit_gradient`, :class:`cryoviz.train.encoders.GradientEncoder`;
        ``e2gmm``'s and ``cryofold``'s default since 2026-12-07, see :func:`get_recipe`).
    fit_gradient_norm
        With ``encoder_input = 'fit_gradient'``: each particle's input is scaled
        to this L2 norm before the encoder's first layer: 8 since 2026-12-07 (0:
        unscaled, each block at RMS 1, a norm of ``sqrt(4 M)`` for ``M``
        Gaussians, as runs before that date had). Adam moves every
        first-layer weight by about the learning rate per step and the gradients
        of a batch agree, so the first layer's output moves by about ``lr`` times
        the input's L1 norm per step; at ``M = 2048`` and norm ``sqrt(4 M)`` that
        is ~6, enough to send the early latents far out (see E2GMM_DEFAULTS). A run
        whose ``config.toml`` lacks it reads 0 (:data:`ADDED_SETTINGS`).
    encoder_centre, encoder_phase_flip
        The image MLP encodes each image moved back by its known shift (poses
        given) and phase-flipped by the sign of its CTF, as cryoDRGN's
        ``train_vae`` does (:mod:`cryoviz.train.encoder_input`); the loss still
        compares the model with the recorded image. Runs started before
        2026-12-05 encoded the raw images: a ``config.toml`` without these keys
        reads as False (:data:`ADDED_SETTINGS`).
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
        Number of Gaussians of a reference-free ``gmm`` volume (and of the mixture
        fitted to an MRC ``reference``); ``None``: scaled with the training box
        (:meth:`gaussian_count`), resolved when a run starts and written to its
        ``config.toml``.
    reference
        ``gmm`` initial model: ``None`` (random ball), ``'4ake'`` / ``'1ake'``, a
        PDB / mmCIF path or an MRC map (see :func:`cryoviz.volumes.gmm.load_reference`);
        ``implicit`` volume: the fixed map ``V0`` of ``V(z) = V0 + dV(z)``
        (:class:`cryoviz.volumes.residual.ReferenceResidualVolume`; a structure
        or an MRC map of the particles' extent), ``None``: reference-free.
    reference_level
        ``'residue'`` (one Gaussian per residue, at the CA) or ``'atom'``.
    reference_bfactor_a2
        B-factor of the reference's Gaussian widths, Å^2.
    max_shift_px
        Scale of the ``gmm`` decoder's centre changes (and of the ``deformation``
        generator's control-point displacements), pixels.
    precision
        ``'fp32'``, ``'bf16'`` or ``'fp16'`` (CUDA only): the networks run under
        ``torch.autocast`` in that dtype; FFTs, physics and the loss stay float32
        (:mod:`cryoviz.train.distributed`).
    control_points
        ``deformation`` volume: control points per axis of the displacement grid.
    smoothness_weight, rigidity_weight
        ``deformation`` volume: weights of the smoothness (Laplacian) and
        rigidity (``||J^T J - I||^2``) regularisers added to the loss
        (:class:`cryoviz.volumes.deformation.DeformationVolume`).
    canonical_init
        ``deformation`` volume's starting canonical map: ``'consensus'`` (Wiener
        backprojection of the training images with their poses) or ``'zeros'``.
    move_amplitudes
        ``gmm`` volume: whether the decoder changes amplitudes as well as centres.
    bond_weight, contact_weight, contact_cutoff_angstrom
        ``gmm`` volume from a structure ``reference``: weights (Å^-2) of the
        bond-length and elastic-network restraints of the decoded centres to the
        reference's distances (:mod:`cryoviz.volumes.elastic`), and the
        network's contact cutoff in Å.
    poses
        ``'given'`` (the particles' poses) or ``'amortized'`` (a CNN pose
        encoder trained with the volume, :mod:`cryoviz.train.amortized_poses`).
    pose_heads
        Pose hypotheses per image of the amortized encoder (winner-takes-all).
    pose_only_epochs
        Amortized poses: epochs at the start that train the pose encoder alone,
        the volume held at ``z = 0`` (the base structure); needs a ``reference``.
    pose_start_band
        Amortized poses: band limit (cycles / pixel) of the loss at step 0; it
        rises linearly to Nyquist (0.5) over the first ``max(pose_only_epochs,
        1)`` epochs.
    pose_channels
        Channels of the pose encoder's first convolution block.
    pixel_fraction
        Reference-free ``implicit`` volume, Gaussian loss, given poses: the
        mean fraction of each image's Fourier coefficients (inside Nyquist) that
        enter a step's data term, drawn anew per image and step with
        probabilities that follow ``|CTF|``, each drawn term divided by its
        probability (an unbiased estimate of the full term, with more variance;
        :mod:`cryoviz.train.pixel_sampling`). The network is read only at the
        drawn coefficients, so a step costs about this fraction of the full
        one. 1 (default): every coefficient.
    """

    name: str
    volume: str = "implicit"
    domain: str = "fourier"
    encoder: str = "vae"
    zdim: int = 8
    beta: float | None = None
    kl_warmup_epochs: float = 0.0
    epochs: int = 20
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 0.0
    seed: int = 0
    width: int = 128
    depth: int = 3
    pe_dim: int | None = None
    pe_sigma: float = CRYODRGN_PE_SIGMA
    residual_relu: str = "after_sum"
    enc_width: int = 256
    enc_depth: int = 2
    encoder_input: str = "real"
    fit_gradient_norm: float = 8.0
    encoder_centre: bool = True
    encoder_phase_flip: bool = True
    table_noise_std: float = 0.0
    box: int | None = None
    chunk_size: int = 256
    window_chunks: int = 4
    loss: str = "gaussian"
    frc_max_resolution_angstrom: float | None = None
    gaussians: int | None = None
    reference: str | None = None
    reference_level: str = "residue"
    reference_bfactor_a2: float = 20.0
    max_shift_px: float = 2.0
    precision: str = "fp32"
    control_points: int = 6
    smoothness_weight: float = 0.0
    rigidity_weight: float = 0.0
    canonical_init: str = "consensus"
    move_amplitudes: bool = True
    bond_weight: float = 0.0
    contact_weight: float = 0.0
    contact_cutoff_angstrom: float = 10.0
    poses: str = "given"
    pose_heads: int = 8
    pose_only_epochs: int = 0
    pose_start_band: float = 0.1
    pose_channels: int = 16
    pixel_fraction: float = 1.0

    @property
    def kl_weight(self) -> float:
        """``beta`` (``1 / zdim`` when unset; 0 without a VAE)."""
        if self.encoder not in ("vae", "joint") or self.zdim == 0:
            return 0.0
        return 1.0 / self.zdim if self.beta is None else float(self.beta)

    def kl_weight_at(self, step: int, steps_per_epoch: int) -> float:
        """KL weight of 0-based optimizer ``step``: :attr:`kl_weight`, ramped up from 0.

        The weight is ``kl_weight * min(1, step / (kl_warmup_epochs *
        steps_per_epoch))``, so the first step has none and every step after the
        warm-up has the full weight; without a warm-up, the full weight throughout.
        """
        ramp_steps = self.kl_warmup_epochs * max(int(steps_per_epoch), 1)
        if ramp_steps <= 0:
            return self.kl_weight
        return self.kl_weight * min(1.0, step / ramp_steps)

    def random_frequencies(self, box_size: int) -> int:
        """Random Fourier-feature frequencies of the implicit volume at training box ``D``.

        :attr:`pe_dim`, or ``3 * (D // 2)`` when it is None: cryoDRGN's default
        Gaussian encoding draws ``3 * pe_dim`` frequencies with its ``--pe-dim``
        defaulting to ``D / 2`` (96 at box 64). Before 2026-12-05 the default was
        64 at every box; on the small bench mixture (box 64, 5 epochs, three
        seeds) 96 gave per-conformation FSC-AUC 0.302 +- 0.018 against
        0.258 +- 0.025 (``docs/benchmarks.md``).
        """
        return int(self.pe_dim) if self.pe_dim is not None else 3 * (int(box_size) // 2)

    def gaussian_count(self, box_size: int) -> int:
        """Gaussians of a reference-free ``gmm`` volume at training box ``D``.

        :attr:`gaussians`, or ``D**3 // 128`` when it is None (256 at box 32,
        2,048 at box 64): the resolvable elements of a map grow with the cube of
        the box. ``tests/benchmarks/bench_gmm_gaussians.py`` trained ``e2gmm``
        with counts from ``D**3 / 1024`` to ``D**3 / 64`` on open / closed
        mixtures at boxes 32, 48 and 64 (4,000 particles, SNR 0.1, 10 epochs,
        two seeds): the masked FSC-AUC against the true states peaked at
        ``D**3 / 128`` at every box (twice as many was as good or slightly worse
        at 2-2.5x the time), and the states separated at every count
        (``docs/benchmarks.md``). Until 2026-12-06 the default was 256 at every
        box.
        """
        if self.gaussians is not None:
            return int(self.gaussians)
        return max(1, int(box_size) ** 3 // GAUSSIANS_VOXELS)

    @property
    def reference_is_map(self) -> bool:
        """Whether :attr:`reference` names an MRC map (not a base structure)."""
        return self.reference is not None and str(self.reference).lower().endswith(
            (".mrc", ".map", ".mrcs"))

    @property
    def counts_gaussians(self) -> bool:
        """Whether :attr:`gaussians` sizes the volume: a ``gmm`` volume made without a
        base structure (reference-free, or fitted to an MRC ``reference``)."""
        return self.volume == "gmm" and (self.reference is None or self.reference_is_map)

    @property
    def takes_fit_gradients(self) -> bool:
        """Whether ``encoder_input = 'fit_gradient'`` can work: a ``gmm`` volume, a
        ``vae`` or ``ae`` encoder and given poses (the gradients are taken at them)."""
        return self.volume == "gmm" and self.encoder in ("vae", "ae") and self.poses == "given"

    @property
    def latent_dim(self) -> int:
        """Length of ``z`` (0 for homogeneous recipes)."""
        return 0 if self.encoder == "none" else int(self.zdim)

    def validate(self) -> None:
        """Raise :class:`InputError` for settings that cannot work."""
        def need(ok: bool, field: str, expected: str, got) -> None:
            if not ok:
                raise InputError(None, field, expected, got)

        need(self.volume in ("implicit", "voxel", "gmm", "deformation"), "volume",
             "'implicit', 'voxel', 'gmm' or 'deformation'", self.volume)
        need(self.volume != "deformation" or (self.encoder != "none" and self.zdim >= 1),
             "zdim", "at least 1 (a deformation volume needs latents)", self.zdim)
        need(self.control_points >= 3, "control_points", "at least 3", self.control_points)
        need(self.canonical_init in ("consensus", "zeros"), "canonical_init",
             "'consensus' or 'zeros'", self.canonical_init)
        need(self.smoothness_weight >= 0 and self.rigidity_weight >= 0,
             "smoothness_weight / rigidity_weight", ">= 0",
             (self.smoothness_weight, self.rigidity_weight))
        need(self.reference is None or self.volume in ("gmm", "implicit"), "reference",
             "none for a voxel or deformation volume (a reference is used by the gmm and "
             "implicit volumes)", self.reference)
        need(self.domain in ("hartley", "fourier"), "domain", "'hartley' or 'fourier'",
             self.domain)
        need(self.residual_relu in RESIDUAL_RELU, "residual_relu",
             " or ".join(repr(v) for v in RESIDUAL_RELU), self.residual_relu)
        need(self.pe_dim is None or self.pe_dim >= 1, "pe_dim",
             "at least 1, or none for 3 * (box // 2)", self.pe_dim)
        need(self.encoder_input in ("real", "hartley", "fit_gradient"), "encoder_input",
             "'real', 'hartley' or 'fit_gradient'", self.encoder_input)
        if self.encoder_input == "fit_gradient":
            need(self.takes_fit_gradients, "encoder_input",
                 "'fit_gradient' only for a gmm volume with a 'vae' or 'ae' encoder and "
                 "given poses", self.encoder_input)
        need(self.encoder in ("vae", "ae", "table", "joint", "none"), "encoder",
             "'vae', 'ae', 'table', 'joint' or 'none'", self.encoder)
        need(self.encoder != "joint" or self.poses == "amortized", "encoder",
             "'joint' only with poses = 'amortized' (it is the pose encoder's CNN)",
             self.encoder)
        need(self.volume != "voxel" or self.encoder == "none", "encoder",
             "'none' for a voxel volume", self.encoder)
        need(self.encoder == "none" or self.zdim >= 1, "zdim", "at least 1", self.zdim)
        need(self.epochs >= 1, "epochs", "at least 1", self.epochs)
        need(math.isfinite(self.kl_warmup_epochs) and self.kl_warmup_epochs >= 0,
             "kl_warmup_epochs", ">= 0 epochs", self.kl_warmup_epochs)
        need(math.isfinite(self.fit_gradient_norm) and self.fit_gradient_norm >= 0,
             "fit_gradient_norm", ">= 0 (0: unscaled)", self.fit_gradient_norm)
        need(self.batch_size >= 1, "batch size", "at least 1", self.batch_size)
        need(self.lr > 0, "lr", "> 0", self.lr)
        need(self.width >= 1 and self.depth >= 0, "width / depth", "width >= 1, depth >= 0",
             (self.width, self.depth))
        need(self.box is None or self.box >= 8, "box", "at least 8 pixels", self.box)
        need(self.loss in ("gaussian", "frc"), "loss", "'gaussian' or 'frc'", self.loss)
        need(self.frc_max_resolution_angstrom is None or self.frc_max_resolution_angstrom > 0,
             "frc_max_resolution_angstrom", "> 0", self.frc_max_resolution_angstrom)
        need(self.gaussians is None or self.gaussians >= 1, "gaussians",
             f"at least 1, or none for box**3 // {GAUSSIANS_VOXELS}", self.gaussians)
        need(self.reference_level in ("residue", "atom"), "reference_level",
             "'residue' or 'atom'", self.reference_level)
        need(self.precision in ("fp32", "bf16", "fp16"), "precision",
             "'fp32', 'bf16' or 'fp16'", self.precision)
        need(self.bond_weight >= 0 and self.contact_weight >= 0,
             "bond_weight / contact_weight", ">= 0", (self.bond_weight, self.contact_weight))
        need(self.contact_cutoff_angstrom > 0, "contact_cutoff_angstrom", "> 0",
             self.contact_cutoff_angstrom)
        need(self.poses in ("given", "amortized"), "poses", "'given' or 'amortized'",
             self.poses)
        need(math.isfinite(self.pixel_fraction) and 0 < self.pixel_fraction <= 1,
             "pixel_fraction", "in (0, 1]", self.pixel_fraction)
        if self.pixel_fraction < 1:
            need(self.volume == "implicit" and self.reference is None
                 and self.loss == "gaussian" and self.poses == "given", "pixel_fraction",
                 "1 except for a reference-free implicit volume with the Gaussian loss and "
                 "given poses", self.pixel_fraction)
        if self.poses == "amortized":
            need(self.volume == "gmm" or (self.volume == "implicit" and self.reference is None),
                 "volume", "'gmm' or a reference-free 'implicit' volume for amortized poses",
                 self.volume)
            need(self.loss == "gaussian", "loss", "'gaussian' for amortized poses", self.loss)
            need(self.pose_heads >= 1, "pose_heads", "at least 1", self.pose_heads)
            need(0 <= self.pose_only_epochs < self.epochs, "pose_only_epochs",
                 f"0 .. {self.epochs - 1} (fewer than the epochs)", self.pose_only_epochs)
            need(self.pose_only_epochs == 0 or self.reference is not None, "reference",
                 "a base structure or map for pose_only_epochs > 0", self.reference)
            need(0 < self.pose_start_band <= 0.5, "pose_start_band",
                 "in (0, 0.5] cycles per pixel", self.pose_start_band)
            need(self.pose_channels >= 1, "pose_channels", "at least 1", self.pose_channels)
        restrained = self.bond_weight > 0 or self.contact_weight > 0
        need(not restrained or self.volume == "gmm", "volume",
             "'gmm' for bond / contact restraints", self.volume)
        need(not restrained or (self.reference is not None and not self.reference_is_map),
             "reference", "a base structure (PDB / mmCIF path, or 4ake / 1ake) for bond and "
             "contact restraints (e.g. --reference model.pdb)", self.reference)


RECIPES: dict[str, Recipe] = {
    "cryodrgn": Recipe(name="cryodrgn"),
    "cryodrgn-ae": Recipe(name="cryodrgn-ae", encoder="ae"),
    "autodecoder": Recipe(name="autodecoder", encoder="table", lr=1e-3, table_noise_std=0.05),
    "voxel-homogeneous": Recipe(name="voxel-homogeneous", volume="voxel", encoder="none",
                                zdim=0, lr=1e-2, weight_decay=1e-3, epochs=10,
                                batch_size=128),
    # beta 4 with a 4-epoch KL warm-up since 2026-12-07 (before: 1 / zdim = 0.25, no
    # warm-up; see E2GMM_DEFAULTS above)
    "e2gmm": Recipe(name="e2gmm", volume="gmm", encoder="vae", zdim=4, loss="frc",
                    lr=1e-3, epochs=20, batch_size=32, width=128, depth=2,
                    enc_width=128, enc_depth=2, beta=4.0, kl_warmup_epochs=4.0,
                    encoder_input="fit_gradient"),
    # fit-gradient input since 2026-12-07 (image MLP before; 5 epochs, mixture CA RMSD
    # 1.25 against 1.63 Å): docs/benchmarks.md, "`cryofold` reads the fit gradients"
    "cryofold": Recipe(name="cryofold", volume="gmm", encoder="vae", zdim=4, loss="frc",
                       lr=1e-3, epochs=20, batch_size=32, width=128, depth=2,
                       enc_width=128, enc_depth=2, reference_level="residue",
                       move_amplitudes=False, bond_weight=1.0, contact_weight=0.1,
                       encoder_input="fit_gradient"),
    "atomvae": Recipe(name="atomvae", volume="gmm", encoder="vae", zdim=4, loss="gaussian",
                      lr=1e-3, epochs=20, batch_size=32, width=128, depth=2,
                      enc_width=128, enc_depth=2, reference_level="atom",
                      move_amplitudes=False, bond_weight=1.0, contact_weight=0.1,
                      poses="amortized", pose_heads=8, pose_only_epochs=5),
    "3dflex": Recipe(name="3dflex", volume="deformation", encoder="table", zdim=2,
                     lr=1e-2, table_noise_std=0.1, epochs=20, batch_size=64, width=64,
                     depth=2, control_points=6, max_shift_px=1.0,
                     smoothness_weight=0.01, rigidity_weight=0.01),
}


def get_recipe(name: str, base: Recipe | None = None, **overrides) -> Recipe:
    """The recipe ``name`` with ``overrides`` applied (``None`` values are ignored).

    Parameters
    ----------
    name
        A key of :data:`RECIPES`.
    base
        Settings to start from instead of ``name``'s defaults, e.g. a run's saved
        recipe (:func:`cryoviz.train.evaluate.saved_recipe`) when it is resumed:
        a setting not given then stays the run's, not today's default. Its
        ``name`` is not used.
    **overrides
        Recipe fields; ``None`` means not given.

    A recipe whose default encoder input is ``'fit_gradient'`` (``e2gmm``, ``cryofold``)
    falls back to ``'real'`` (the image MLP) when the overrides make the gradients impossible
    (amortized poses, a latent table, another volume): they are taken at given poses.
    Asked for by name (``encoder_input='fit_gradient'``), they are refused instead.
    A ``base`` keeps its own input.

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
    start = RECIPES[name] if base is None else dataclasses.replace(base, name=name)
    recipe = dataclasses.replace(start, **given)
    if (base is None and "encoder_input" not in given
            and recipe.encoder_input == "fit_gradient" and not recipe.takes_fit_gradients):
        recipe = dataclasses.replace(recipe, encoder_input="real")
    recipe.validate()
    return recipe
