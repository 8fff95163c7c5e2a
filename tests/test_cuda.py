"""CUDA gives the CPU's answers: the image formation model, backprojection, Gaussian
projection, exact-EM refinement and classification, ab initio and training (fp32 and
bf16 autocast, with and without pixel subsampling).

Skipped on machines without CUDA (CI has none). Run on a GPU machine with
``pytest tests/test_cuda.py``; the figures of the last run on a GPU are in
``docs/benchmarks.md`` (section "GPU").
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from cryoviz.backprojection import FourierAccumulator
from cryoviz.ctf import CTFParams
from cryoviz.fourier import lowpass_volume
from cryoviz.gaussian_projection import project_gaussians_fourier
from cryoviz.gaussians import GaussianMixture
from cryoviz.geometry.rotations import random_rotations
from cryoviz.imaging import forward_fourier, volume_to_fourier
from cryoviz.inference.abinit import AbinitSettings, iter_abinit
from cryoviz.inference.class_refine import iter_class_refine
from cryoviz.inference.refine import RefineSettings, iter_refine
from cryoviz.io import load_particles, read_volume
from cryoviz.metrics import fsc, rotation_error_deg
from cryoviz.metrics.alignment import align_volume
from cryoviz.simulate import SimulationConfig, simulate
from cryoviz.train.data import to_device
from cryoviz.train.loop import iter_train
from cryoviz.train.recipes import get_recipe

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
CUDA = torch.device("cuda")
BOX = 32
APIX = 4.0


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().cpu(), b.detach().cpu()
    return float((a - b).abs().max() / b.abs().max())


def _ctf(n: int, dtype: torch.dtype, device) -> CTFParams:
    g = torch.Generator().manual_seed(1)
    defocus = 10000.0 + 15000.0 * torch.rand(n, generator=g, dtype=torch.float64)

    def full(value: float) -> torch.Tensor:
        return torch.full((n,), value, dtype=dtype, device=device)

    return CTFParams(defocus.to(device, dtype), (defocus + 300.0).to(device, dtype),
                     full(30.0), full(300.0), full(2.7), full(0.1), full(0.0), full(0.0))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    config = SimulationConfig(n_particles=1200, box_size=BOX, pixel_size_angstrom=APIX, snr=1.0,
                              seed=11)
    data = simulate(config, tmp_path_factory.mktemp("cuda") / "data")
    truth = torch.as_tensor(read_volume(data / "truth" / "state_0.mrc")[0])
    return load_particles(data / "particles.star"), truth


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.float64, 1e-12)])
def test_forward_model_matches_cpu(dtype, tol):
    g = torch.Generator().manual_seed(0)
    volume = torch.randn(BOX, BOX, BOX, generator=g, dtype=dtype)
    rotations = random_rotations(64, generator=g).to(dtype)
    shifts = 3.0 * torch.randn(64, 2, generator=g, dtype=dtype)

    def images(device):
        return forward_fourier(volume_to_fourier(volume.to(device)), rotations.to(device), BOX,
                               APIX, shifts.to(device), _ctf(64, dtype, device))

    assert _rel_err(images(CUDA), images("cpu")) < tol


def test_backprojection_matches_cpu():
    g = torch.Generator().manual_seed(2)
    images = torch.randn(200, BOX, BOX, generator=g)
    rotations = random_rotations(200, generator=g).float()
    shifts = 2.0 * torch.randn(200, 2, generator=g)

    def reconstruction(device):
        acc = FourierAccumulator(BOX, device=device)
        acc.add(images.to(device), rotations.to(device), APIX, shifts.to(device),
                _ctf(200, torch.float32, device))
        return acc.reconstruct()

    gpu, cpu = reconstruction(CUDA).cpu(), reconstruction("cpu")
    rel_l2 = float((gpu - cpu).norm() / cpu.norm())
    print(f"backprojection CUDA vs CPU: relative L2 {rel_l2:.2e}, max {_rel_err(gpu, cpu):.2e}")
    assert rel_l2 < 1e-4


def test_gaussian_projection_matches_cpu():
    g = torch.Generator().manual_seed(3)
    centres = 20.0 * torch.randn(40, 3, generator=g, dtype=torch.float64)
    amplitudes = torch.rand(40, generator=g, dtype=torch.float64)
    sigmas = 2.0 + torch.rand(40, generator=g, dtype=torch.float64)
    rotations = random_rotations(16, generator=g)

    def projections(device):
        mixture = GaussianMixture(centres.to(device), amplitudes.to(device), sigmas.to(device))
        return project_gaussians_fourier(mixture, rotations.to(device), BOX, APIX,
                                         dtype=torch.float64)

    assert _rel_err(projections(CUDA), projections("cpu")) < 1e-10


def test_batches_reach_cuda_through_pinned_memory():
    """``to_device`` (the training loop's transfer, non-blocking from page-locked
    memory): the values arrive, and work queued after the copy sees them, also when
    the host's tensor is gone before the copy is waited for."""
    gen = torch.Generator().manual_seed(0)
    expected = torch.randn(64, 64, 64, generator=gen)
    sums = []
    for _ in range(20):
        moved = to_device(expected.clone(), CUDA)
        assert moved.device.type == "cuda"
        sums.append(moved.sum())
    torch.testing.assert_close(torch.stack(sums).cpu(), expected.sum().repeat(20))
    index = to_device(np.array([5, 2, 9]), CUDA)
    assert index.dtype == torch.int64 and index.cpu().tolist() == [5, 2, 9]


def test_refinement_on_cuda_matches_cpu(dataset):
    """Exact EM in float64: the same best poses and the same map on both devices."""
    particles, truth = dataset
    subset = particles.subset(np.arange(300))
    settings = RefineSettings(n_iterations=2, global_order=1, n_global_iterations=1,
                              max_order=2, batch_size=100, initial_lowpass_angstrom=20.0)
    cpu, gpu = (list(iter_refine(subset, truth, settings, device=d))[-1].result
                for d in ("cpu", CUDA))
    err = rotation_error_deg(torch.as_tensor(gpu.posterior.rotations),
                             torch.as_tensor(cpu.posterior.rotations))
    assert float((err < 0.1).float().mean()) > 0.98
    corr = np.corrcoef(gpu.map.cpu().numpy().ravel(), cpu.map.cpu().numpy().ravel())[0, 1]
    assert corr > 0.999, corr


def test_abinit_on_cuda_builds_the_model(dataset):
    """The CPU test's settings and thresholds (tests/test_abinit.py), run on CUDA."""
    particles, truth = dataset
    settings = AbinitSettings(n_steps=40, batch_size=100, box_size=24, memory_images=1000,
                              initial_images=300, initial_resolution_angstrom=35.0,
                              final_resolution_angstrom=14.0, n_starts=1, seed=0)
    result = list(iter_abinit(particles, settings, device=CUDA))[-1].result
    aligned = align_volume(result.map.cpu(), lowpass_volume(truth, 14.0, APIX))
    assert aligned.correlation > 0.7, aligned.correlation
    assert fsc(aligned.aligned, truth).resolution_angstrom(APIX, 0.5) < 28.0


@pytest.fixture(scope="module")
def mixture_folder(tmp_path_factory):
    data = tmp_path_factory.mktemp("cuda_train") / "data"
    simulate(SimulationConfig(n_particles=600, box_size=BOX, pixel_size_angstrom=APIX, snr=1.0,
                              states=("4ake", "1ake"), seed=0), data)
    return data


@pytest.fixture(scope="module")
def mixture_data(mixture_folder):
    return load_particles(mixture_folder / "particles.star")


def test_class_refinement_on_cuda_matches_cpu(mixture_folder, mixture_data):
    """3-D classification with the poses searched (``relion-class3d`` from two maps), in
    float64: the same classes, the same best poses and the same class maps on both
    devices."""
    subset = mixture_data.subset(np.arange(300))
    starts = torch.stack([lowpass_volume(torch.as_tensor(read_volume(
        mixture_folder / "truth" / f"state_{k}.mrc")[0]), 30.0, APIX) for k in (0, 1)])
    settings = RefineSettings(n_iterations=2, global_order=1, n_global_iterations=1,
                              max_order=2, batch_size=100, initial_lowpass_angstrom=30.0,
                              resolution_limit_angstrom=16.0, seed=0)
    cpu, gpu = (list(iter_class_refine(subset, None, 2, settings, device=d,
                                       initial_maps=starts))[-1].result
                for d in ("cpu", CUDA))
    same_class = gpu.classes.best_class == cpu.classes.best_class
    assert float(np.mean(same_class)) > 0.98
    err = rotation_error_deg(torch.as_tensor(gpu.posterior.rotations),
                             torch.as_tensor(cpu.posterior.rotations))
    assert float((err < 0.1).float().mean()) > 0.98
    for k in (0, 1):
        corr = np.corrcoef(gpu.classes.maps[k].cpu().numpy().ravel(),
                           cpu.classes.maps[k].cpu().numpy().ravel())[0, 1]
        assert corr > 0.999, (k, corr)


def test_training_on_cuda_fp32_and_bf16(mixture_data, tmp_path):
    """cryodrgn recipe on CUDA; bf16 autocast ends within 5 % of fp32's loss."""
    losses = {}
    for precision in ("fp32", "bf16"):
        recipe = get_recipe("cryodrgn", epochs=3, batch_size=32, precision=precision, seed=0)
        progress = list(iter_train(mixture_data, recipe, tmp_path / precision, device=CUDA))
        assert all(np.isfinite(p.loss) for p in progress)
        assert progress[-1].loss < progress[0].loss
        assert (tmp_path / precision / "z.pkl").exists()
        losses[precision] = progress[-1].loss
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=0.05), losses


def test_cuda_checkpoint_resumes_on_cuda(mixture_data, tmp_path):
    recipe = get_recipe("cryodrgn", epochs=2, batch_size=32, seed=0)
    list(iter_train(mixture_data, replace(recipe, epochs=1), tmp_path / "run", device=CUDA))
    resumed = list(iter_train(mixture_data, recipe, tmp_path / "run", resume=True, device=CUDA))
    assert [p.epoch for p in resumed] == [2]
    assert np.isfinite(resumed[-1].loss)


def test_pixel_fraction_on_cuda(mixture_data, tmp_path):
    """The masked slices of ``pixel_fraction`` on CUDA (boolean masks, each
    particle's scale found once on the device): one batch of all particles, the first
    epoch's loss taken before the first step; 80 % of the coefficients estimate the
    full loss (the CPU test's tolerance, ``tests/test_train_loop.py``), in fp32 and
    bf16."""
    settings = {"epochs": 1, "batch_size": len(mixture_data), "seed": 0}
    for precision in ("fp32", "bf16"):
        full = next(iter_train(mixture_data, get_recipe("cryodrgn", precision=precision,
                                                        **settings),
                               tmp_path / f"full_{precision}", device=CUDA))
        part = next(iter_train(mixture_data, get_recipe("cryodrgn", precision=precision,
                                                        pixel_fraction=0.8, **settings),
                               tmp_path / f"part_{precision}", device=CUDA))
        assert part.loss == pytest.approx(full.loss, rel=0.08) and part.loss != full.loss
