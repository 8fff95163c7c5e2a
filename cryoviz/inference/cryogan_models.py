"""Networks of the ``cryogan`` recipes: the physics generator, the critic, the penalty.

The generator *is* the image formation model (:mod:`cryoviz.imaging`): a voxel
map, and for every generated image hidden variables drawn from their priors,
``R ~ uniform on SO(3)``, ``t ~ N(0, sigma_t^2 I_2)``, ``CTF ~`` a random row of
the dataset's own CTF table, then::

    X = irfft( CTF * S_t * slice_R( V~ ) ) + sigma * n,     n ~ N(0, I)

For ``multi-cryogan`` the map of each generated image is drawn too, from a
linear subspace: ``V~ = V_0 + sum_k z_k U_k`` with ``z ~ N(0, I_K)``. Slicing is
linear, so its slice is ``slice(V_0) + sum_k z_k slice(U_k)``.

The critic is a small convolutional network on real-space images, without
batch normalisation (the gradient penalty is taken per sample, Gulrajani et
al. 2017).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cryoviz.ctf import CTFParams
from cryoviz.fourier import centered_irfft2, centered_rfft2, frequency_grid_2d
from cryoviz.geometry import random_rotations
from cryoviz.imaging import apply_shift_and_ctf
from cryoviz.volumes import VoxelVolume

__all__ = ["GeneratedBatch", "PhysicsGenerator", "Critic", "gradient_penalty",
           "lowpass_images", "spherical_mask"]


def spherical_mask(box_size: int, radius_px: float, device=None) -> torch.Tensor:
    """``(D, D, D)`` float mask, 1 within ``radius_px`` of the centre voxel ``D // 2``."""
    axis = torch.arange(box_size, device=device, dtype=torch.float32) - box_size // 2
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    return ((x**2 + y**2 + z**2) <= radius_px**2).float()


def lowpass_images(images: torch.Tensor, band: float) -> torch.Tensor:
    """Real ``(B, D, D)`` images keeping frequencies ``|k| <= band`` (cycles / pixel).

    ``band >= 0.5`` returns the images unchanged (the corners of the Fourier
    plane are kept too).
    """
    if band >= 0.5:
        return images
    box = images.shape[-1]
    ky, kx = frequency_grid_2d(box, rfft=True, device=images.device, dtype=images.dtype)
    keep = (kx**2 + ky**2) <= band**2
    return centered_irfft2(centered_rfft2(images) * keep, box)


@dataclass(frozen=True)
class GeneratedBatch:
    """Hidden variables of generated images.

    Attributes
    ----------
    rotations
        ``(B, 3, 3)`` particle -> lab.
    shifts_angstrom
        ``(B, 2)`` ``(x, y)`` in Å.
    ctf_index
        ``(B,)`` int64 rows of the dataset's CTF table.
    latents
        ``(B, K)`` coordinates ``z`` of the images' maps in the subspace, or
        ``None`` (one map).
    """

    rotations: torch.Tensor
    shifts_angstrom: torch.Tensor
    ctf_index: torch.Tensor
    latents: torch.Tensor | None = None


class PhysicsGenerator(torch.nn.Module):
    """Voxel map + forward model + priors over the hidden variables.

    Parameters
    ----------
    box_size, pixel_size_angstrom
        Image box ``D`` and pixel size (Å).
    ctf
        CTF parameters of the ``N`` dataset particles (the CTF prior), or ``None``.
    shift_sigma_angstrom
        Standard deviation of the Gaussian shift prior per axis (Å).
    noise_std
        Standard deviation of the white noise added to each pixel (images' units).
    voxel_scale
        Fixed factor between the parameter and the voxel values, so that the
        optimiser works on O(1) numbers.
    components
        ``K``: maps ``U_k`` of the subspace the images' maps are drawn from
        (0: every image is of the one map ``V_0``). They start at zero.
    """

    def __init__(self, box_size: int, pixel_size_angstrom: float, ctf: CTFParams | None,
                 shift_sigma_angstrom: float, noise_std: float,
                 voxel_scale: float = 1.0, components: int = 0) -> None:
        super().__init__()
        if components < 0:
            raise ValueError(f"components must be >= 0, got {components}")
        self.box_size = int(box_size)
        self.pixel_size_angstrom = float(pixel_size_angstrom)
        self.shift_sigma_angstrom = float(shift_sigma_angstrom)
        self.noise_std = float(noise_std)
        self.volume = VoxelVolume(self.box_size, self.pixel_size_angstrom)
        self.volume.scale.fill_(float(voxel_scale))
        self.components = torch.nn.ModuleList(
            VoxelVolume(self.box_size, self.pixel_size_angstrom) for _ in range(components))
        for component in self.components:
            component.scale.fill_(float(voxel_scale))
        self.ctf = None if ctf is None else ctf.to(dtype=torch.float64)

    @property
    def n_components(self) -> int:
        """``K``."""
        return len(self.components)

    def maps(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``V_0`` ``(D, D, D)`` and the components ``(K, D, D, D)`` (voxel values)."""
        base = self.volume.volume()
        stack = [c.volume() for c in self.components]
        return base, (torch.stack(stack) if stack else base.new_zeros((0, *base.shape)))

    def sample_hidden(self, n: int, generator: torch.Generator) -> GeneratedBatch:
        """Draw ``n`` poses, shifts and CTF rows from the priors (on the generator's device)."""
        device = generator.device
        rotations = random_rotations(n, generator, dtype=torch.float32, device=device)
        shifts = self.shift_sigma_angstrom * torch.randn(n, 2, generator=generator,
                                                         device=device)
        n_ctf = 1 if self.ctf is None else len(self.ctf)
        index = torch.randint(n_ctf, (n,), generator=generator, device=device)
        latents = (torch.randn(n, self.n_components, generator=generator, device=device)
                   if self.n_components else None)
        return GeneratedBatch(rotations, shifts, index, latents)

    def clean_images(self, hidden: GeneratedBatch) -> torch.Tensor:
        """Noise-free ``(B, D, D)`` images of the current map(s) for given hidden variables."""
        device = self.volume.map.device
        ctf = None if self.ctf is None else \
            self.ctf.subset(hidden.ctf_index.cpu()).to(device=device)
        rotations = hidden.rotations.to(device)
        slices = self.volume.slices(rotations, None, self.box_size, self.pixel_size_angstrom)
        for k, component in enumerate(self.components):
            z = hidden.latents[:, k].to(device=device, dtype=torch.float32)
            slices = slices + z[:, None, None] * component.slices(
                rotations, None, self.box_size, self.pixel_size_angstrom)
        ft = apply_shift_and_ctf(slices, self.pixel_size_angstrom,
                                 hidden.shifts_angstrom.to(device), ctf)
        return centered_irfft2(ft, self.box_size)

    def forward(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, GeneratedBatch]:
        """``n`` noisy images ``(n, D, D)`` and their hidden variables."""
        hidden = self.sample_hidden(n, generator)
        clean = self.clean_images(hidden)
        noise = torch.randn(clean.shape, generator=generator, device=generator.device)
        return clean + self.noise_std * noise.to(clean.device), hidden


class Critic(torch.nn.Module):
    """WGAN critic on ``(B, D, D)`` real-space images, no normalisation layers.

    Stride-2 4x4 convolutions (``channels`` first, doubling up to
    ``4 * channels``) until the side is at most 4, leaky ReLUs, an average pool to
    4 x 4 and a linear score.

    Parameters
    ----------
    box_size
        Image side ``D`` (at least 8).
    channels
        Channels of the first layer.
    seed
        Seed of the initial weights (the global RNG state is restored).
    """

    def __init__(self, box_size: int, channels: int = 16, seed: int = 0) -> None:
        super().__init__()
        if box_size < 8:
            raise ValueError(f"box_size must be at least 8, got {box_size}")
        state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        layers: list[torch.nn.Module] = []
        size, c_in, c_out = int(box_size), 1, int(channels)
        while size > 4:
            layers += [torch.nn.Conv2d(c_in, c_out, 4, stride=2, padding=1),
                       torch.nn.LeakyReLU(0.2)]
            size, c_in, c_out = size // 2, c_out, min(2 * c_out, 4 * channels)
        layers += [torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(),
                   torch.nn.Linear(16 * c_in, 1)]
        self.net = torch.nn.Sequential(*layers)
        torch.random.set_rng_state(state)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Scores ``(B,)`` of ``(B, D, D)`` images."""
        return self.net(images.unsqueeze(1)).squeeze(1)


def gradient_penalty(critic: torch.nn.Module, real: torch.Tensor, fake: torch.Tensor,
                     weight: torch.Tensor) -> torch.Tensor:
    """WGAN-GP penalty ``mean_i (|grad D(x_i)|_2 - 1)^2`` at interpolated images.

    Parameters
    ----------
    critic
        Maps ``(B, D, D)`` to ``(B,)`` scores.
    real, fake
        ``(B, D, D)`` images (``fake`` detached from the generator).
    weight
        ``(B,)`` interpolation weights in [0, 1]: ``x_i = w_i real_i + (1 - w_i) fake_i``.

    Returns
    -------
    torch.Tensor
        Scalar penalty (without the factor lambda), differentiable in the critic.
    """
    w = weight.to(real.dtype).view(-1, *([1] * (real.dim() - 1)))
    mixed = (w * real + (1 - w) * fake).requires_grad_(True)
    scores = critic(mixed)
    (grad,) = torch.autograd.grad(scores.sum(), mixed, create_graph=True)
    norms = grad.flatten(1).norm(dim=1)
    return (norms - 1).pow(2).mean()
