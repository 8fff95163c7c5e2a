"""Tests for cryoviz.train.data: chunked shuffle, batches, Fourier downsampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cryoviz.fourier import centered_fft2, crop_center
from cryoviz.io.mrc import write_stack
from cryoviz.io.particles import ImageSource, ParticleSet
from cryoviz.train.data import ParticleBatches, chunked_order, fourier_downsample, to_device


def test_chunked_order_is_a_seeded_permutation():
    n = 1003
    orders = [chunked_order(n, 50, 3, torch.Generator().manual_seed(s)) for s in (1, 1, 2)]
    for order in orders:
        assert np.array_equal(np.sort(order), np.arange(n))
    assert np.array_equal(orders[0], orders[1])
    assert not np.array_equal(orders[0], orders[2])
    assert not np.array_equal(orders[0], np.arange(n))


def test_chunked_order_stays_local():
    """Within each window, particles come from at most ``window`` chunks."""
    n, chunk, window = 1000, 100, 2
    order = chunked_order(n, chunk, window, torch.Generator().manual_seed(0))
    for start in range(0, n, chunk * window):
        chunks = np.unique(order[start:start + chunk * window] // chunk)
        assert len(chunks) == window


@pytest.fixture
def stack_particles(tmp_path):
    n, box = 70, 16
    images = np.random.default_rng(0).standard_normal((n, box, box)).astype(np.float32)
    images += np.arange(n, dtype=np.float32)[:, None, None] * 10.0  # image i has mean 10 i
    path = tmp_path / "stack.mrcs"
    write_stack(path, images, 2.5)
    ps = ParticleSet(image_stacks=[path], stack_index=np.zeros(n), image_index=np.arange(n),
                     box_size=box, pixel_size_angstrom=2.5)
    return ps, images


def test_batches_visit_every_particle_once_per_epoch(stack_particles):
    ps, images = stack_particles
    batches = ParticleBatches(ImageSource(ps), batch_size=16, chunk_size=8, window_chunks=2,
                              seed=3)
    assert len(batches) == 5
    seen_epochs = []
    for _ in range(2):
        seen = []
        for index, imgs in batches.epoch():
            assert imgs.shape == (len(index), 16, 16)
            # the images are those of the indices, in the same order
            np.testing.assert_allclose(imgs.numpy(), images[index], rtol=0, atol=1e-5)
            seen.append(index)
        seen = np.concatenate(seen)
        assert np.array_equal(np.sort(seen), np.arange(len(ps)))
        seen_epochs.append(seen)
    assert not np.array_equal(seen_epochs[0], seen_epochs[1])
    # same seed, same orders; a restored generator state replays the next epoch
    other = ParticleBatches(ImageSource(ps), batch_size=16, chunk_size=8, window_chunks=2,
                            seed=3)
    first = np.concatenate([i for i, _ in other.epoch()])
    assert np.array_equal(first, seen_epochs[0])
    state = other.generator.get_state()
    second = np.concatenate([i for i, _ in other.epoch()])
    other.generator.set_state(state)
    assert np.array_equal(np.concatenate([i for i, _ in other.epoch()]), second)


def test_downsample_rescales_pixel_size(stack_particles):
    ps, images = stack_particles
    batches = ParticleBatches(ImageSource(ps), batch_size=10, box_size=10)
    assert batches.box_size == 10
    assert batches.pixel_size_angstrom == pytest.approx(2.5 * 16 / 10)
    index, imgs = next(batches.sequential())
    assert imgs.shape == (10, 10, 10)
    want = fourier_downsample(torch.from_numpy(images[index]), 10)
    torch.testing.assert_close(imgs, want)
    with pytest.raises(ValueError):
        ParticleBatches(ImageSource(ps), batch_size=10, box_size=20)


@pytest.mark.parametrize("box,small", [(16, 10), (17, 11), (16, 9)])
def test_fourier_downsample_matches_cropping(box, small):
    images = torch.randn(3, box, box, dtype=torch.float64, generator=torch.Generator()
                         .manual_seed(0))
    out = fourier_downsample(images, small)
    assert out.shape == (3, small, small)
    want = crop_center(centered_fft2(images), small, ndim=2) * (small / box) ** 2
    got = centered_fft2(out)
    if small % 2 == 0:  # the unpaired Nyquist row / column of an even crop is symmetrised
        got, want = got[:, 1:, 1:], want[:, 1:, 1:]
    torch.testing.assert_close(got, want)
    # smooth images keep their values
    k = torch.arange(box, dtype=torch.float64) - box // 2
    yy, xx = torch.meshgrid(k, k, indexing="ij")
    blob = torch.exp(-(xx**2 + yy**2) / (2 * 3.0**2))[None]
    small_blob = fourier_downsample(blob, small)
    assert float(small_blob.max()) == pytest.approx(1.0, rel=0.05)
    assert float(small_blob.sum()) * (box / small) ** 2 == pytest.approx(float(blob.sum()),
                                                                        rel=1e-6)


def test_to_device_gives_the_values_on_the_device():
    """On the CPU a batch's tensors and index arrays arrive unchanged (the pinned,
    non-blocking CUDA path runs in ``tests/test_cuda.py``)."""
    images = torch.randn(3, 8, 8)
    assert to_device(images, torch.device("cpu")) is images
    index = np.array([4, 1, 7])
    moved = to_device(index, torch.device("cpu"))
    assert moved.dtype == torch.int64 and moved.tolist() == [4, 1, 7]
