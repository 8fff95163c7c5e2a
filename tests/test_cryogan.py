"""CryoGAN recipe: the physics generator, the WGAN-GP penalty, bad input, end to end.

The target run (4AKE, box 32, 4 Å/px, SNR 1, FSC 0.5 at 6 px or better) is
``tests/benchmarks/bench_cryogan.py``.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from cryoviz.ctf import CTFParams
from cryoviz.errors import InputError
from cryoviz.imaging import render_images
from cryoviz.inference.cryogan import (
    CryoGANSettings,
    estimate_noise_std,
    iter_cryogan,
    run_cryogan,
)
from cryoviz.inference.cryogan_models import Critic, PhysicsGenerator, gradient_penalty
from cryoviz.inference.cryogan_output import write_cryogan
from cryoviz.io import load_particles, read_volume
from cryoviz.metrics import align_volume
from cryoviz.simulate import SimulationConfig, simulate
from tests._phantoms import blob_volume, random_blobs


def _ctf_table(n: int) -> CTFParams:
    defocus = torch.linspace(8000, 20000, n, dtype=torch.float64)
    return CTFParams.from_arrays(defocus_u_angstrom=defocus, defocus_v_angstrom=defocus - 300,
                                 astigmatism_angle_deg=torch.linspace(0, 170, n),
                                 voltage_kv=300.0, cs_mm=2.7, amplitude_contrast=0.1)


def test_generator_images_are_the_forward_model_with_the_data_ctf_and_noise():
    box, apix = 24, 3.0
    table = _ctf_table(7)
    gen = PhysicsGenerator(box, apix, table, shift_sigma_angstrom=2.5, noise_std=0.3,
                           voxel_scale=2.0)
    vol = blob_volume(random_blobs(box, n_blobs=6, seed=3), box).float()
    with torch.no_grad():
        gen.volume.map.copy_(vol)
    draws = torch.Generator().manual_seed(0)
    hidden = gen.sample_hidden(4000, draws)
    # CTF rows come from the table, every row is used; shifts follow the prior
    assert set(hidden.ctf_index.tolist()) == set(range(7))
    assert hidden.shifts_angstrom.std().item() == pytest.approx(2.5, rel=0.05)
    images, h = gen(16, torch.Generator().manual_seed(1))
    with torch.no_grad():
        clean = gen.clean_images(h)
    expected = render_images(2.0 * vol.double(), h.rotations.double(), apix,
                             h.shifts_angstrom.double(), table.subset(h.ctf_index))
    torch.testing.assert_close(clean.double(), expected, rtol=0, atol=1e-4 * expected.abs().max())
    # the added noise is white with the requested level
    assert (images - clean).std().item() == pytest.approx(0.3, rel=0.03)


def test_noise_estimate_from_outer_pixels_ignores_the_particle():
    box = 32
    gen = torch.Generator().manual_seed(0)
    particle = 5 * blob_volume(random_blobs(box, n_blobs=4, seed=1), box).sum(0).float()
    images = particle + 0.7 * torch.randn(200, box, box, generator=gen)
    assert estimate_noise_std(images) == pytest.approx(0.7, rel=0.03)
    assert images.std().item() > 1.0  # the particle matters for the plain std


def test_gradient_penalty_on_known_critics():
    real = torch.randn(5, 6, 6, generator=torch.Generator().manual_seed(0))
    fake = torch.randn(5, 6, 6, generator=torch.Generator().manual_seed(1))
    weight = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0])
    # linear critic <w, x>: gradient w everywhere, penalty (|w| - 1)^2
    w = torch.randn(6, 6, generator=torch.Generator().manual_seed(2))
    linear = lambda x: (x * w).sum((-2, -1))  # noqa: E731
    assert gradient_penalty(linear, real, fake, weight).item() == pytest.approx(
        (w.norm().item() - 1) ** 2, rel=1e-5)
    # quadratic critic |x|^2 / 2: gradient is the interpolated image itself
    quad = lambda x: 0.5 * x.pow(2).sum((-2, -1))  # noqa: E731
    mixed = weight[:, None, None] * real + (1 - weight[:, None, None]) * fake
    expected = (mixed.flatten(1).norm(dim=1) - 1).pow(2).mean().item()
    assert gradient_penalty(quad, real, fake, weight).item() == pytest.approx(expected, rel=1e-5)
    # the penalty is differentiable in the critic's parameters
    critic = Critic(16, channels=4)
    penalty = gradient_penalty(critic, torch.randn(3, 16, 16), torch.randn(3, 16, 16),
                               torch.rand(3))
    penalty.backward()
    # (a bias shifts the score, not its gradient in the image: only weights get one)
    assert all(p.grad is not None and p.grad.abs().sum() > 0
               for name, p in critic.named_parameters() if name.endswith("weight"))
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in critic.modules())


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cryogan") / "data"
    simulate(SimulationConfig(n_particles=600, box_size=16, pixel_size_angstrom=8.0, snr=1.0,
                              states=("4ake",), seed=3), folder)
    return folder


def test_multi_generator_draws_each_image_from_the_subspace():
    """``V_0 + sum_k z_k U_k`` per image: the slices add linearly, z ~ N(0, I_K)."""
    box, apix = 16, 4.0
    table = _ctf_table(5)
    gen = PhysicsGenerator(box, apix, table, shift_sigma_angstrom=1.0, noise_std=0.0,
                           voxel_scale=2.0, components=2)
    assert gen.n_components == 2
    maps = [blob_volume(random_blobs(box, n_blobs=4, seed=s), box).float() for s in (1, 2, 3)]
    with torch.no_grad():
        gen.volume.map.copy_(maps[0])
        for component, m in zip(gen.components, maps[1:], strict=True):
            component.map.copy_(m)
    hidden = gen.sample_hidden(3000, torch.Generator().manual_seed(0))
    assert hidden.latents.shape == (3000, 2)
    assert hidden.latents.std(0).tolist() == pytest.approx([1.0, 1.0], rel=0.05)
    few = replace(hidden, rotations=hidden.rotations[:6],
                  shifts_angstrom=hidden.shifts_angstrom[:6], ctf_index=hidden.ctf_index[:6],
                  latents=hidden.latents[:6])
    with torch.no_grad():
        clean = gen.clean_images(few)
    for i in range(6):
        z = few.latents[i].double()
        vol = 2.0 * (maps[0].double() + z[0] * maps[1].double() + z[1] * maps[2].double())
        expected = render_images(vol, few.rotations[i:i + 1].double(), apix,
                                 few.shifts_angstrom[i:i + 1].double(),
                                 table.subset(few.ctf_index[i:i + 1]))
        torch.testing.assert_close(clean[i:i + 1].double(), expected, rtol=0,
                                   atol=1e-4 * float(expected.abs().max()))
    base, components = gen.maps()
    assert components.shape == (2, box, box, box)
    torch.testing.assert_close(components[1], 2.0 * maps[2])
    # no components: no latents drawn (the homogeneous recipe's draws are unchanged)
    assert PhysicsGenerator(box, apix, table, 1.0, 0.0).sample_hidden(
        3, torch.Generator()).latents is None


def test_bad_input_raises_input_error(tiny_dataset):
    particles = load_particles(tiny_dataset / "particles.star")
    with pytest.raises(InputError, match="ctf"):
        next(iter_cryogan(replace(particles, ctf=None)))
    with pytest.raises(InputError, match="n_critic"):
        next(iter_cryogan(particles, CryoGANSettings(n_critic=0)))
    with pytest.raises(InputError, match="mask_radius_fraction"):
        next(iter_cryogan(particles, CryoGANSettings(mask_radius_fraction=0.9)))


def test_end_to_end_tiny_map_moves_towards_the_truth(tiny_dataset, tmp_path):
    particles = load_particles(tiny_dataset / "particles.star")
    truth = torch.as_tensor(read_volume(tiny_dataset / "truth" / "state_0.mrc")[0])
    settings = CryoGANSettings(n_steps=150, batch_size=32, n_critic=3, seed=1)
    short = CryoGANSettings(n_steps=3, batch_size=32, n_critic=3, seed=1)
    start, again = run_cryogan(particles, short), run_cryogan(particles, short)
    # seeded: the same map up to float rounding (multi-threaded conv backward sums in
    # another order from run to run; bit-identical with one thread)
    torch.testing.assert_close(start.map, again.map, rtol=0,
                               atol=1e-5 * float(start.map.abs().max()))
    result = run_cryogan(particles, settings, log_every=50)
    start_corr = align_volume(start.map, truth).correlation
    corr = align_volume(result.map, truth).correlation
    assert corr > start_corr + 0.05, (start_corr, corr)
    assert result.noise_std == pytest.approx(
        float(np.load(tiny_dataset / "truth" / "truth.npz")["noise_sigma"]), rel=0.1)
    metrics = write_cryogan(result, particles, tmp_path / "run")
    vol, apix = read_volume(tmp_path / "run" / "volumes" / "map.mrc")
    assert vol.shape == (16, 16, 16) and apix == pytest.approx(8.0)
    lines = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [50, 100, 150]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == metrics


def test_multi_cryogan_learns_the_direction_between_two_states(tmp_path):
    """multi-cryogan on an open / closed adenylate kinase mixture, nothing given.

    Box 16, 8 Å/px, SNR 1, 1,000 particles, 400 map steps, one component, one
    thread. After aligning the mean map to the mean of the true states (the
    frame and hand are free), the component correlates with the true difference
    map; a map traversal ``V_0 + z U`` is closest to each state on the side of
    ``z`` that sign predicts. Measured when written (seeds 0, 1, 2): correlation
    |0.48|, |0.27|, |0.40|; the same run on 4AKE particles alone (no difference
    to find): |0.06|, |0.16|.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = tmp_path / "mixture"
        simulate(SimulationConfig(n_particles=1000, box_size=16, pixel_size_angstrom=8.0,
                                  snr=1.0, states=("4ake", "1ake"), seed=7), data)
        particles = load_particles(data / "particles.star")
        states = [torch.as_tensor(read_volume(data / "truth" / f"state_{k}.mrc")[0])
                  for k in (0, 1)]
        result = run_cryogan(particles, CryoGANSettings(n_steps=400, components=1, seed=0))
    finally:
        torch.set_num_threads(threads)
    assert result.components.shape == (1, 16, 16, 16)
    alignment = align_volume(result.map, 0.5 * (states[0] + states[1]))
    component = alignment.apply(result.components[0])

    def corr(a, b):
        return float(torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1])

    direction = corr(component, states[1] - states[0])
    assert abs(direction) > 0.25, direction
    z_values = np.linspace(-3, 3, 13)
    best = [z_values[int(np.argmax([corr(alignment.aligned + z * component, s)
                                    for z in z_values]))] for s in states]
    assert np.sign(best[1] - best[0]) == np.sign(direction), best
    metrics = write_cryogan(result, particles, tmp_path / "run")
    assert metrics["recipe"] == "multi-cryogan" and metrics["components"] == 1
    series = sorted((tmp_path / "run" / "volumes" / "component_1").glob("z_*.mrc"))
    assert [p.name for p in series] == ["z_+0.0.mrc", "z_+1.0.mrc", "z_+2.0.mrc",
                                        "z_-1.0.mrc", "z_-2.0.mrc"]
    far, apix = read_volume(tmp_path / "run" / "volumes" / "component_1" / "z_+2.0.mrc")
    assert apix == pytest.approx(8.0)
    np.testing.assert_allclose(far, (result.map + 2.0 * result.components[0]).numpy(),
                               atol=1e-5 * float(result.map.abs().max()))


def test_cli_train_cryogan(tiny_dataset, tmp_path, capsys):
    """``cryoviz train --recipe cryogan``: an epoch is one pass of real batches."""
    from cryoviz.cli import main  # noqa: PLC0415

    out = tmp_path / "run"
    assert main(["train", str(tiny_dataset / "particles.star"), "--recipe", "cryogan",
                 "--epochs", "1", "--batch-size", "200", "-o", str(out)]) == 0
    assert "step 3/3" in capsys.readouterr().err
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["recipe"] == "cryogan" and saved["settings"]["n_steps"] == 3
    assert saved["settings"]["batch_size"] == 200
    vol, apix = read_volume(out / "volumes" / "map.mrc")
    assert vol.shape == (16, 16, 16) and apix == pytest.approx(8.0)
    assert not (out / "volumes" / "component_1.mrc").exists()
    multi = tmp_path / "multi"
    assert main(["train", str(tiny_dataset / "particles.star"), "--recipe", "multi-cryogan",
                 "--epochs", "1", "--batch-size", "200", "--components", "2",
                 "-o", str(multi)]) == 0
    saved = json.loads((multi / "metrics.json").read_text())
    assert saved["recipe"] == "multi-cryogan" and saved["components"] == 2
    for k in (1, 2):
        assert read_volume(multi / "volumes" / f"component_{k}.mrc")[0].shape == (16, 16, 16)
    assert main(["train", str(tiny_dataset / "particles.star"), "--recipe", "multi-cryogan",
                 "--components", "0", "-o", str(tmp_path / "refused")]) != 0
    assert "--components" in capsys.readouterr().err


@pytest.mark.parametrize("components", [0, 1])
def test_a_stopped_run_resumes_to_the_same_map(tiny_dataset, tmp_path, components):
    """Checkpoints at every report; a run stopped after step 20 and resumed ends with the
    map (and multi-cryogan's components) of an unbroken run (one thread: the same
    sequence of kernels)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        particles = load_particles(tiny_dataset / "particles.star")
        settings = CryoGANSettings(n_steps=40, batch_size=16, n_critic=2, seed=2,
                                   components=components)
        whole = run_cryogan(particles, settings, log_every=10)
        stopped = iter_cryogan(particles, settings, log_every=10, output_dir=tmp_path)
        assert [next(stopped).step for _ in range(2)] == [10, 20]
        stopped.close()
        assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
            "step_000010.pt", "step_000020.pt"]
        resumed = list(iter_cryogan(particles, settings, log_every=10, output_dir=tmp_path,
                                    resume=True))
        assert [p.step for p in resumed] == [30, 40]
        torch.testing.assert_close(resumed[-1].result.map, whole.map, rtol=0, atol=0)
        torch.testing.assert_close(resumed[-1].result.components, whole.components, rtol=0,
                                   atol=0)
        assert whole.components.shape == (components, 16, 16, 16)
        def losses(history):  # the reports without their wall times
            return [{k: v for k, v in r.items() if k != "seconds"} for r in history]

        assert losses(resumed[-1].result.history) == losses(whole.history)
        # resuming a finished run gives its result again; other settings are refused
        again = list(iter_cryogan(particles, settings, output_dir=tmp_path, resume=True))
        assert len(again) == 1 and again[0].step == 40
        torch.testing.assert_close(again[0].result.map, whole.map, rtol=0, atol=0)
        with pytest.raises(InputError, match="settings"):
            next(iter_cryogan(particles, replace(settings, n_critic=3), output_dir=tmp_path,
                              resume=True))
    finally:
        torch.set_num_threads(threads)
