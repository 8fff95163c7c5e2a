"""Latent encoders: an image MLP (VAE / AE), an MLP on a mixture's fit gradients, a
per-particle table (auto-decoder) and a CNN that gives each image's poses and latent
together."""

from __future__ import annotations

import torch

from cryoviz.fourier import centered_fft2
from cryoviz.inference.amortized_encoder import PoseEncoder
from cryoviz.train.fit_gradient import FEATURES_PER_GAUSSIAN

__all__ = ["MLPEncoder", "GradientEncoder", "LatentTable", "JointPoseLatentEncoder",
           "circular_mask"]


def circular_mask(box_size: int, radius_px: float | None = None) -> torch.Tensor:
    """``(D, D)`` bool disc of ``radius_px`` (default ``D // 2``) around the origin ``D // 2``."""
    radius = box_size // 2 if radius_px is None else radius_px
    k = torch.arange(box_size, dtype=torch.float32) - box_size // 2
    yy, xx = torch.meshgrid(k, k, indexing="ij")
    return (xx**2 + yy**2) <= radius**2


class _LatentMLP(torch.nn.Module):
    """An MLP from ``n_in`` numbers per particle to its latent (the encoders' common part).

    ``depth`` hidden layers of ``width`` (ReLU), then a linear head to ``mu`` and, when
    ``variational``, ``logvar``.
    """

    def __init__(self, n_in: int, latent_dim: int, width: int, depth: int,
                 variational: bool) -> None:
        super().__init__()
        self.latent_dim = int(latent_dim)
        self.variational = bool(variational)
        self.noise_std = 0.0
        layers: list[torch.nn.Module] = []
        for _ in range(depth):
            layers += [torch.nn.Linear(n_in, width), torch.nn.ReLU()]
            n_in = width
        self.hidden = torch.nn.Sequential(*layers)
        self.head = torch.nn.Linear(n_in, 2 * self.latent_dim if variational else self.latent_dim)

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``mu (B, L)`` and ``logvar (B, L)`` (or None) of ``(B, n_in)`` inputs."""
        out = self.head(self.hidden(x))
        if self.variational:
            return out[:, : self.latent_dim], out[:, self.latent_dim:]
        return out, None


class MLPEncoder(_LatentMLP):
    """MLP on the image inside a circular mask, in real space or as its Hartley transform.

    Parameters
    ----------
    box_size
        Image box ``D``.
    latent_dim
        ``L``.
    width, depth
        Hidden width and number of hidden layers (ReLU).
    variational
        Return ``(mu, logvar)`` (VAE) if True, else ``(mu, None)`` (AE).
    mask_radius_px
        Radius of the input mask (default ``D // 2``): pixels around the centre
        for ``input_domain = 'real'``, frequencies (``|k| D``) for ``'hartley'``.
    input_domain
        ``'real'``: the pixels; ``'hartley'``: the centred Hartley transform
        ``Re F - Im F`` of the image (unitary scale, ``F / D``), as cryoDRGN's
        encoder sees its images (a disc of radius ``D // 2`` drops the
        frequencies beyond Nyquist in the corners).

    Notes
    -----
    Images are divided by the buffer ``input_scale`` (set by the trainer to the
    data's standard deviation) before the first layer; the unitary Hartley
    transform keeps white noise at that standard deviation.
    """

    def __init__(self, box_size: int, latent_dim: int, width: int = 256, depth: int = 2,
                 variational: bool = True, mask_radius_px: float | None = None,
                 input_domain: str = "real") -> None:
        if input_domain not in ("real", "hartley"):
            raise ValueError(f"input_domain must be 'real' or 'hartley', got {input_domain!r}")
        mask_index = torch.nonzero(circular_mask(box_size, mask_radius_px).reshape(-1)).squeeze(1)
        super().__init__(int(mask_index.numel()), latent_dim, width, depth, variational)
        self.input_domain = input_domain
        self.register_buffer("mask_index", mask_index)
        self.register_buffer("input_scale", torch.ones(()))

    def forward(self, images: torch.Tensor,
                indices: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encode ``(B, D, D)`` images to ``mu (B, L)`` and ``logvar (B, L)`` or ``None``."""
        if self.input_domain == "hartley":
            ft = centered_fft2(images) / images.shape[-1]
            images = ft.real - ft.imag
        return self._encode(images.reshape(images.shape[0], -1)[:, self.mask_index]
                            / self.input_scale)


class GradientEncoder(_LatentMLP):
    """MLP on each particle's fit gradient with respect to a Gaussian mixture.

    The input is :func:`cryoviz.train.fit_gradient.fit_gradients`: ``4`` numbers per
    Gaussian (:data:`~cryoviz.train.fit_gradient.FEATURES_PER_GAUSSIAN`), already
    normalised per particle.

    Parameters
    ----------
    n_gaussians
        ``M``: the input has ``4 M`` features.
    latent_dim
        ``L``.
    width, depth
        Hidden width and number of hidden layers (ReLU).
    variational
        Return ``(mu, logvar)`` (VAE) if True, else ``(mu, None)`` (AE).
    input_norm
        Scale each particle's input to this L2 norm (0: as given, RMS 1 per
        block, a norm of ``sqrt(4 M)``); see
        :attr:`cryoviz.train.recipes.Recipe.fit_gradient_norm`.
    """

    def __init__(self, n_gaussians: int, latent_dim: int, width: int = 256, depth: int = 2,
                 variational: bool = True, input_norm: float = 0.0) -> None:
        n_features = FEATURES_PER_GAUSSIAN * int(n_gaussians)
        super().__init__(n_features, latent_dim, width, depth, variational)
        self.n_features = n_features
        self.input_norm = float(input_norm)

    def forward(self, features: torch.Tensor,
                indices: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encode ``(B, 4 M)`` gradients to ``mu (B, L)`` and ``logvar (B, L)`` or ``None``."""
        if features.ndim != 2 or features.shape[1] != self.n_features:
            raise ValueError(f"GradientEncoder needs (B, {self.n_features}) features, got "
                             f"{tuple(features.shape)}")
        if self.input_norm > 0:
            norm = features.norm(dim=1, keepdim=True).clamp(min=1e-30)
            features = features * (self.input_norm / norm)
        return self._encode(features)


class LatentTable(torch.nn.Module):
    """Auto-decoder latents: one learned ``z`` per particle.

    Parameters
    ----------
    n_particles
        ``N``.
    latent_dim
        ``L``.
    init_std
        Standard deviation of the random initial latents.
    noise_std
        Fixed Gaussian noise added to ``z`` during training (0: none).
    seed
        Seed of the initial latents.
    """

    def __init__(self, n_particles: int, latent_dim: int, init_std: float = 0.1,
                 noise_std: float = 0.0, seed: int = 0) -> None:
        super().__init__()
        self.latent_dim = int(latent_dim)
        self.variational = False
        self.noise_std = float(noise_std)
        gen = torch.Generator().manual_seed(seed)
        self.table = torch.nn.Parameter(
            init_std * torch.randn(n_particles, latent_dim, generator=gen))

    def forward(self, images: torch.Tensor | None,
                indices: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        """``mu (B, L)`` of particles ``indices`` ``(B,)`` (``images`` is ignored)."""
        if indices is None:
            raise ValueError("LatentTable needs particle indices")
        return self.table[indices], None


class JointPoseLatentEncoder(torch.nn.Module):
    """One CNN for the pose hypotheses and the latent of each image (VAE).

    AtomVAE's joint encoder (Rosenbaum et al. 2021): the convolutional trunk
    and pose heads of a :class:`~cryoviz.inference.amortized_encoder.PoseEncoder`
    (``H`` hypotheses), plus a linear head on the same features that gives the
    latent mean and log-variance. Pose and conformation are read from one
    representation of the image instead of two networks.

    Parameters
    ----------
    box_size
        Image side ``D`` (pixels).
    max_shift_angstrom
        Bound of each shift component in Å.
    latent_dim
        ``L`` (at least 1).
    channels, hidden
        The trunk's first convolution channels and MLP width.
    seed
        Seed of the initial weights.
    heads
        Pose hypotheses per image ``H``.
    """

    def __init__(self, box_size: int, max_shift_angstrom: float, latent_dim: int,
                 channels: int = 16, hidden: int = 256, seed: int = 0, heads: int = 1) -> None:
        super().__init__()
        if latent_dim < 1:
            raise ValueError(f"latent_dim must be at least 1, got {latent_dim}")
        self.poses = PoseEncoder(box_size, max_shift_angstrom, channels, hidden, seed, heads)
        self.latent_dim = int(latent_dim)
        self.variational = True
        self.noise_std = 0.0
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed + 1)
        self.latent_head = torch.nn.Linear(hidden, 2 * self.latent_dim)
        torch.random.set_rng_state(gen_state)

    @property
    def heads(self) -> int:
        """Pose hypotheses per image ``H``."""
        return self.poses.heads

    @property
    def input_scale(self) -> torch.Tensor:
        """Buffer: images are divided by it first (set to the images' standard deviation)."""
        return self.poses.input_scale

    def _latent(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.latent_head(features)
        return out[:, : self.latent_dim], out[:, self.latent_dim:]

    def forward(self, images: torch.Tensor,
                indices: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent ``mu (B, L)`` and ``logvar (B, L)`` of ``(B, D, D)`` images (as the encoders)."""
        return self._latent(self.poses.trunk(images))

    def hypotheses(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotations ``(B, H, 3, 3)`` and shifts ``(B, H, 2)`` in Å (as the pose encoder)."""
        return self.poses.hypotheses(images)

    def joint(self, images: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rotations ``(B, H, 3, 3)``, shifts ``(B, H, 2)``, ``mu`` and ``logvar`` ``(B, L)``.

        The trunk runs once for both outputs.
        """
        features = self.poses.trunk(images)
        return (*self.poses.poses_from_features(features), *self._latent(features))
