"""Shared science checks of the latent recipes on simulated adenylate kinase.

``run_mixture_science``: a 50/50 open (4AKE) / closed (1AKE) mixture with known
poses; after training, 2-means on the latent means must recover the true states
and the map decoded at each cluster centre must match its own true state better
(mean FSC in a band) than the other. ``run_path_science``: a continuous path
between the two states; returns ``|Spearman rho|`` of the first principal
component of z against the true path coordinate.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from scipy.stats import spearmanr

from cryoviz.analysis import kmeans, pca
from cryoviz.inference.ppca import eval_ppca, run_ppca
from cryoviz.io.mrc import read_volume
from cryoviz.io.particles import load_particles
from cryoviz.metrics.fsc import fsc
from cryoviz.simulate import SimulationConfig, simulate
from cryoviz.train.evaluate import eval_volumes, load_run
from cryoviz.train.loop import iter_train
from cryoviz.train.recipes import get_recipe
from cryoviz.volumes import resample_volume


def _train(tmp_path: Path, recipe_name: str, data: Path, epochs: int, train_box: int | None,
           overrides: dict) -> tuple:
    """Latent means ``(N, L)``, a decoder ``z (M, L) -> maps (M, d, d, d)``, seconds per epoch.

    ``3dva`` runs PPCA-EM for ``epochs`` iterations (2 components unless
    ``overrides`` says otherwise); every other recipe the training loop.
    """
    ps = load_particles(data / "particles.star")
    if recipe_name == "3dva":
        result = run_ppca(ps, n_iterations=epochs, box_size=train_box,
                          **{"n_components": 2, "seed": 0, **overrides})
        return (result.z.numpy().astype(np.float64), lambda z: eval_ppca(result, z),
                float("nan"))
    recipe = get_recipe(recipe_name, epochs=epochs, box=train_box, **overrides)
    times = []
    for p in iter_train(ps, recipe, tmp_path / "run"):
        times.append(p.seconds)
        print(f"epoch {p.epoch}: loss {p.loss:.4f} kl {p.kl:.3f} {p.seconds:.1f} s")
    run = load_run(tmp_path / "run")
    return (run.mu.astype(np.float64), lambda z: eval_volumes(run, z), float(np.mean(times)))


def run_mixture_science(tmp_path: Path, recipe: str, *, n: int, box: int, apix: float,
                        snr: float, train_box: int | None, epochs: int, overrides: dict,
                        min_accuracy: float, fsc_band: tuple[float, float]) -> dict:
    """Train ``recipe`` on the open / closed mixture and check the two states.

    ``epochs``: PPCA-EM iterations for ``3dva``; ``train_box``: the training box (for
    ``3dva`` its working box; None there means at most 32 px, so give the full box
    for full-resolution maps).

    Returns ``accuracy`` (2-means agreement with the true states), per state ``s``
    the band-mean FSC of its cluster's map against its own (``state{s}_own``) and
    the other (``state{s}_other``) true map, and ``state{s}_res05_px``.
    """
    data = tmp_path / "data"
    simulate(SimulationConfig(n_particles=n, box_size=box, pixel_size_angstrom=apix, snr=snr,
                              states=("4ake", "1ake"), seed=0), data)
    truth_labels = np.load(data / "truth" / "truth.npz")["labels"]
    mu, decode, seconds = _train(tmp_path, recipe, data, epochs, train_box, overrides)
    clusters = kmeans(mu, 2)  # what `cryoviz analyze` clusters with
    labels, centres = clusters.labels, clusters.centres
    accuracy = max(np.mean(labels == truth_labels), np.mean(labels != truth_labels))
    # which cluster is which state: the majority label
    cluster_of_state = [int(np.round(np.mean(labels[truth_labels == s]))) for s in (0, 1)]
    report = {"accuracy": float(accuracy), "seconds_per_epoch": seconds, "epochs": epochs}
    assert cluster_of_state[0] != cluster_of_state[1], report
    maps = decode(centres[cluster_of_state])
    d = maps.shape[-1]
    truths = [resample_volume(torch.from_numpy(read_volume(data / "truth" / f"state_{s}.mrc")[0])
                              .double(), d).float() for s in (0, 1)]
    lo, hi = fsc_band
    for s in (0, 1):
        own = fsc(maps[s], truths[s])
        other = fsc(maps[s], truths[1 - s])
        band = (own.frequency_per_px >= lo) & (own.frequency_per_px <= hi)
        report[f"state{s}_own"] = float(own.fsc[band].mean())
        report[f"state{s}_other"] = float(other.fsc[band].mean())
        report[f"state{s}_res05_px"] = own.resolution_px(0.5)
    print(report)
    assert accuracy >= min_accuracy, report
    for s in (0, 1):
        assert report[f"state{s}_own"] > report[f"state{s}_other"], report
    return report


def path_spearman(z: np.ndarray, path_coordinate: np.ndarray) -> float:
    """``|Spearman rho|`` of the first principal component of ``z (N, L)`` and the path."""
    return abs(float(spearmanr(pca(z).coords[:, 0], path_coordinate).statistic))


def run_path_science(tmp_path: Path, recipe: str, *, n: int, box: int, apix: float,
                     snr: float, epochs: int, overrides: dict,
                     train_box: int | None = None) -> float:
    """Train ``recipe`` on the continuous open -> closed path; ``|rho|`` of PC 1.

    ``epochs``: PPCA-EM iterations for ``3dva``.
    """
    data = tmp_path / "data"
    simulate(SimulationConfig(n_particles=n, box_size=box, pixel_size_angstrom=apix, snr=snr,
                              states=("4ake", "1ake"), ensemble="continuous", seed=0), data)
    mu, _, _ = _train(tmp_path, recipe, data, epochs, train_box, overrides)
    rho = path_spearman(mu, np.load(data / "truth" / "truth.npz")["path_coordinate"])
    print(f"{recipe} on the path: |Spearman rho| of PC 1 = {rho:.3f}")
    return rho
