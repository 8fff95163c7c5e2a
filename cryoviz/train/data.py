"""Minibatches of particle images with a chunked shuffle and optional downsampling.

The shuffle keeps reads from memory-mapped stacks mostly sequential: the stack
is cut into contiguous chunks, the chunk order is shuffled, and particles are
shuffled only within windows of a few consecutive (shuffled) chunks. Each
epoch visits every particle exactly once; the order comes from a seeded
:class:`torch.Generator` whose state can be saved and restored.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from cryoviz.fourier import centered_fft2, centered_ifft2, crop_center
from cryoviz.io.particles import ImageSource

__all__ = ["chunked_order", "fourier_downsample", "ParticleBatches", "READ_CHUNK_BYTES",
           "to_device"]

READ_CHUNK_BYTES = 2**20  # full-size float32 pixels read per downsampling step


def to_device(values: torch.Tensor | np.ndarray, device: torch.device) -> torch.Tensor:
    """A batch's tensor (images, indices) on ``device``, without making the host wait.

    From the CPU to CUDA the values are copied into page-locked memory and sent
    with ``non_blocking=True``: the copy is queued on the current stream after the
    work already there, and the host goes on issuing the step's kernels. (From
    pageable memory the copy makes the host wait for the stream: one
    synchronisation per transfer.) Elsewhere this is ``Tensor.to``.

    Parameters
    ----------
    values
        A CPU tensor or array, any shape.
    device
        Where the batch is used.

    Returns
    -------
    torch.Tensor
        ``values`` on ``device`` (the same object when it is there already).
    """
    values = torch.as_tensor(values)
    if device.type == "cuda" and values.device.type == "cpu":
        return values.pin_memory().to(device, non_blocking=True)
    return values.to(device)


def chunked_order(n: int, chunk_size: int, window_chunks: int,
                  generator: torch.Generator) -> np.ndarray:
    """A permutation of ``0 .. n - 1`` shuffled chunk-wise.

    Parameters
    ----------
    n
        Number of particles.
    chunk_size
        Particles per contiguous chunk.
    window_chunks
        Chunks per shuffle window.
    generator
        Source of randomness (advanced by the call).

    Returns
    -------
    np.ndarray
        ``(n,)`` int64 order.
    """
    chunk_size = max(1, int(chunk_size))
    window_chunks = max(1, int(window_chunks))
    n_chunks = (n + chunk_size - 1) // chunk_size
    chunk_perm = torch.randperm(n_chunks, generator=generator).numpy()
    parts = []
    for start in range(0, n_chunks, window_chunks):
        window = [np.arange(c * chunk_size, min(n, (c + 1) * chunk_size))
                  for c in chunk_perm[start:start + window_chunks]]
        members = np.concatenate(window)
        parts.append(members[torch.randperm(len(members), generator=generator).numpy()])
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)


def fourier_downsample(images: torch.Tensor, box_size: int) -> torch.Tensor:
    """Downsample ``(B, D, D)`` images to ``(B, d, d)`` by cropping their centred transform.

    The cropped transform is scaled by ``(d / D)^2`` so that pixel values of
    smooth images are kept; the pixel size becomes ``pixel_size * D / d``.
    """
    box = int(images.shape[-1])
    if box_size == box:
        return images
    if box_size > box:
        raise ValueError(f"cannot downsample {box} px images to {box_size} px")
    ft = crop_center(centered_fft2(images), box_size, ndim=2)
    return centered_ifft2(ft).real.to(images.dtype) * (box_size / box) ** 2


class ParticleBatches:
    """Seeded minibatches ``(indices, images)`` from an :class:`ImageSource`.

    Parameters
    ----------
    source
        The images (read on demand; the stack is never loaded whole).
    batch_size
        Images per batch (the last batch of an epoch may be smaller).
    chunk_size, window_chunks
        Chunked-shuffle settings (see :func:`chunked_order`).
    seed
        Seed of the order generator.
    box_size
        Downsample to this box by Fourier cropping (``None``: keep the data's).

    Attributes
    ----------
    box_size, pixel_size_angstrom
        Box and pixel size of the served images.
    generator
        The order generator (save / restore with ``get_state`` / ``set_state``).
    """

    def __init__(self, source: ImageSource, batch_size: int, chunk_size: int = 256,
                 window_chunks: int = 4, seed: int = 0, box_size: int | None = None) -> None:
        self.source = source
        particles = source.particles
        self.n = len(particles)
        self.batch_size = int(batch_size)
        self.chunk_size = int(chunk_size)
        self.window_chunks = int(window_chunks)
        self.data_box_size = int(particles.box_size)
        self.box_size = self.data_box_size if box_size is None else int(box_size)
        if not 0 < self.box_size <= self.data_box_size:
            raise ValueError(f"box_size must be in (0, {self.data_box_size}], got {box_size}")
        self.pixel_size_angstrom = (particles.pixel_size_angstrom * self.data_box_size
                                    / self.box_size)
        self.generator = torch.Generator().manual_seed(int(seed))

    def __len__(self) -> int:
        """Batches per epoch."""
        return (self.n + self.batch_size - 1) // self.batch_size

    def read(self, index: np.ndarray) -> torch.Tensor:
        """``(B, d, d)`` float32 images of particles ``index``, in that order.

        Only these ``B`` images are read (each stack in sorted order, see
        :meth:`cryoviz.io.particles.ImageSource.images`); nothing is kept
        between calls. When downsampling, images are read and downsampled in
        groups of about ``READ_CHUNK_BYTES`` of full-size pixels, so the
        temporaries are bounded by that rather than by ``B`` (the result is the
        same: each image is transformed on its own).
        """
        index = np.asarray(index, dtype=np.int64)
        if self.box_size == self.data_box_size:
            return self.source.images(index)
        # read and downsample a few images at a time: the full-size images and
        # their complex transforms are the largest temporaries of a batch
        step = max(1, READ_CHUNK_BYTES // (4 * self.data_box_size**2))
        out = torch.empty((index.size, self.box_size, self.box_size))
        for start in range(0, index.size, step):
            part = index[start:start + step]
            out[start:start + part.size] = fourier_downsample(self.source.images(part),
                                                              self.box_size)
        return out

    def epoch_order(self) -> np.ndarray:
        """The next epoch's order ``(N,)`` (advances the generator)."""
        return chunked_order(self.n, self.chunk_size, self.window_chunks, self.generator)

    def epoch(self) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """Batches ``(indices (B,), images (B, d, d))`` of one epoch.

        The order is drawn when this is called, so the generator state after
        the call is the state to save with an end-of-epoch checkpoint.
        """
        order = self.epoch_order()

        def batches() -> Iterator[tuple[np.ndarray, torch.Tensor]]:
            for start in range(0, self.n, self.batch_size):
                index = order[start:start + self.batch_size]
                yield index, self.read(index)

        return batches()

    def sequential(self, batch_size: int | None = None) -> Iterator[tuple[np.ndarray,
                                                                         torch.Tensor]]:
        """Batches in stack order (for inference)."""
        size = self.batch_size if batch_size is None else int(batch_size)
        for start in range(0, self.n, size):
            index = np.arange(start, min(self.n, start + size))
            yield index, self.read(index)
