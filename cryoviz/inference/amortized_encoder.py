"""The pieces of amortized pose inference: a CNN pose encoder and the π-rotation.

An encoder maps a particle image to a rotation (the continuous 6-D
representation of Zhou et al. 2019, orthonormalised by Gram-Schmidt) and a 2-D
shift bounded by ``tanh * max_shift``, as in cryoAI (Levy et al. 2022) and
CryoPoseNet (Nashed et al. 2021).

In-plane rotation by π
----------------------
With rotations mapping particle -> lab and projection along lab ``z``, the
projection at ``Rz(π) @ R`` is the projection at ``R`` rotated by π in-plane
about the box centre ``D // 2`` (``Rz(π) = diag(-1, -1, 1)``; note: the left
factor, a rotation of the lab frame; ``R @ Rz(π)`` turns the particle about its
own axis and is a different view). For a real image with the centred transform
of :mod:`cryoviz.fourier` the π rotation (periodic, about ``D // 2``) is exactly
``F(k) -> F(-k) = conj(F(k))``. A shift ``t`` becomes ``-t``; the CTF is even in
``k`` and is unchanged. Hence ``rot180(CTF * S_t * P_R) = CTF * S_{-t} * P_{Rz(π) R}``.
"""

from __future__ import annotations

import torch

from cryoviz.ctf import compute_ctf_2d
from cryoviz.fourier import real_dtype_of
from cryoviz.geometry.rotations import IN_PLANE_PI, rotation_6d_to_matrix
from cryoviz.imaging import apply_shift_and_ctf

__all__ = ["PoseEncoder", "rotate_images_180", "flip_pose_180", "render_hypotheses",
           "IN_PLANE_PI"]

def rotate_images_180(images: torch.Tensor) -> torch.Tensor:
    """Rotate real images by π in-plane about the centre pixel ``D // 2`` (periodic).

    Parameters
    ----------
    images
        ``(..., D, D)`` real images.

    Returns
    -------
    torch.Tensor
        ``(..., D, D)`` with ``out[..., y, x] = images[..., (2c - y) % D, (2c - x) % D]``,
        ``c = D // 2``.
    """
    box = int(images.shape[-1])
    idx = (2 * (box // 2) - torch.arange(box, device=images.device)) % box
    return images.index_select(-1, idx).index_select(-2, idx)


def flip_pose_180(rotations: torch.Tensor, shifts_angstrom: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The pose whose image is the π in-plane rotation of the image at the given pose.

    Parameters
    ----------
    rotations
        ``(B, 3, 3)`` particle -> lab.
    shifts_angstrom
        ``(B, 2)`` particle displacements in Å.

    Returns
    -------
    tuple of torch.Tensor
        ``Rz(π) @ R`` ``(B, 3, 3)`` and ``-t`` ``(B, 2)``.
    """
    flip = IN_PLANE_PI.to(device=rotations.device, dtype=rotations.dtype)
    return flip @ rotations, -shifts_angstrom


def render_hypotheses(slice_volume, rotations: torch.Tensor, shifts_angstrom: torch.Tensor,
                      z: torch.Tensor | None, ctf, box_size: int,
                      pixel_size_angstrom: float,
                      ctf_values: torch.Tensor | None = None) -> torch.Tensor:
    """Model transforms of every pose hypothesis of every image.

    Parameters
    ----------
    slice_volume
        ``(rotations (M, 3, 3), z (M, L) or None, box, apix) -> (M, d, d // 2 + 1)``
        central slices (e.g. ``volume.slices``).
    rotations, shifts_angstrom
        ``(B, H, 3, 3)`` and ``(B, H, 2)`` hypotheses.
    z
        ``(B, L)`` latents of the images (repeated for their hypotheses), or ``None``.
    ctf
        :class:`cryoviz.ctf.CTFParams` of the ``B`` images, or ``None``.
    box_size, pixel_size_angstrom
        The images' box and pixel size.
    ctf_values
        ``(B, d, d // 2 + 1)`` the images' CTFs already evaluated on the half
        grid, used instead of ``ctf``.

    Returns
    -------
    torch.Tensor
        ``(B, H, d, d // 2 + 1)`` CTF-modulated, shifted slices.
    """
    n_images, heads = rotations.shape[:2]
    z_rep = None if z is None else z.repeat_interleave(heads, dim=0)
    slices = slice_volume(rotations.reshape(-1, 3, 3), z_rep, box_size, pixel_size_angstrom)
    model = apply_shift_and_ctf(slices, pixel_size_angstrom, shifts_angstrom.reshape(-1, 2))
    model = model.reshape(n_images, heads, *model.shape[-2:])
    rdtype = real_dtype_of(model.dtype)
    if ctf_values is None and ctf is not None:  # once per image, not per hypothesis
        ctf_values = compute_ctf_2d(ctf, int(model.shape[-2]), pixel_size_angstrom, rfft=True,
                                    dtype=rdtype, device=model.device)
    if ctf_values is not None:
        model = model * ctf_values.to(rdtype)[:, None]
    return model


class PoseEncoder(torch.nn.Module):
    """CNN: real-space image -> (rotation via 6-D Gram-Schmidt, shift in Å).

    Conv blocks (two 3 x 3 convolutions with ReLU, then 2 x 2 average pooling,
    channels doubling from ``channels``) run while the feature map is at least
    6 pixels wide; the flattened features go through a two-layer MLP to a 6-D
    rotation head and a 2-D shift head.

    With ``heads = H > 1`` the heads give ``H`` pose hypotheses per image
    (:meth:`hypotheses`); trained with a winner-takes-all loss (the minimum over
    the hypotheses), as in the multi-head encoder of CryoSPIN (Shekarforoush et
    al. 2024), different heads settle on different modes of the pose
    likelihood instead of one regression averaging between them.

    Parameters
    ----------
    box_size
        Image side ``D`` (pixels).
    max_shift_angstrom
        Bound of each shift component (``tanh`` output times this); 0 disables shifts.
    channels
        Channels of the first conv block.
    hidden
        Width of the MLP.
    seed
        Seed of the initial weights.
    heads
        Number of pose hypotheses ``H``.

    Attributes
    ----------
    input_scale
        Buffer: images are divided by it before the first convolution (1 by
        default; set it to the images' standard deviation).
    """

    def __init__(self, box_size: int, max_shift_angstrom: float, channels: int = 16,
                 hidden: int = 256, seed: int = 0, heads: int = 1) -> None:
        super().__init__()
        if box_size < 8:
            raise ValueError(f"box_size must be at least 8, got {box_size}")
        if heads < 1:
            raise ValueError(f"heads must be at least 1, got {heads}")
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        layers: list[torch.nn.Module] = []
        size, c_in, c_out = int(box_size), 1, int(channels)
        while size >= 12:
            layers += [torch.nn.Conv2d(c_in, c_out, 3, padding=1), torch.nn.ReLU(),
                       torch.nn.Conv2d(c_out, c_out, 3, padding=1), torch.nn.ReLU(),
                       torch.nn.AvgPool2d(2)]
            size, c_in, c_out = size // 2, c_out, 2 * c_out
        self.features = torch.nn.Sequential(*layers)
        self.mlp = torch.nn.Sequential(
            torch.nn.Flatten(), torch.nn.Linear(c_in * size * size, hidden), torch.nn.ReLU(),
            torch.nn.Linear(hidden, hidden), torch.nn.ReLU())
        self.rotation_head = torch.nn.Linear(hidden, 6 * heads)
        self.shift_head = torch.nn.Linear(hidden, 2 * heads)
        torch.random.set_rng_state(gen_state)
        self.max_shift_angstrom = float(max_shift_angstrom)
        self.heads = int(heads)
        self.register_buffer("input_scale", torch.ones(()))

    def hypotheses(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """All ``H`` pose hypotheses of ``(B, D, D)`` images.

        Returns
        -------
        tuple of torch.Tensor
            Rotations ``(B, H, 3, 3)`` and shifts ``(B, H, 2)`` in Å.
        """
        return self.poses_from_features(self.trunk(images))

    def trunk(self, images: torch.Tensor) -> torch.Tensor:
        """Shared features ``(B, hidden)`` of ``(B, D, D)`` images (convolutions and MLP)."""
        return self.mlp(self.features((images / self.input_scale).unsqueeze(1)))

    def poses_from_features(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotations ``(B, H, 3, 3)`` and shifts ``(B, H, 2)`` (Å) from :meth:`trunk` features."""
        rotations = rotation_6d_to_matrix(self.rotation_head(features).reshape(-1, self.heads, 6))
        shifts = torch.tanh(self.shift_head(features).reshape(-1, self.heads, 2))
        return rotations, shifts * self.max_shift_angstrom

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Poses of ``(B, D, D)`` images from the first head.

        Returns
        -------
        tuple of torch.Tensor
            Rotations ``(B, 3, 3)`` and shifts ``(B, 2)`` in Å.
        """
        rotations, shifts = self.hypotheses(images)
        return rotations[:, 0], shifts[:, 0]
