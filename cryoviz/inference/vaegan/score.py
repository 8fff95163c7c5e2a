"""Benchmark task "in-plane angle and CTF estimation": scores of a run against truth.

For a dataset made by :func:`cryoviz.inference.vaegan.data.simulate_inplane`
and a finished ``cryovaegan`` run:

* in-plane angle errors after the best global offset (and mirror),
  :func:`cryoviz.inference.vaegan.metrics.align_inplane_angles`, for the final
  and for the encoder's (amortised) estimates;
* absolute errors of the mean defocus ``(U + V) / 2`` and of U and V, in Å and
  as a percentage of the true defocus range;
* the downstream use: a CTF-corrected (Wiener) 2-D average of the images
  aligned with the estimated angles (mapped into the truth frame by the global
  offset) and corrected with the estimated CTFs, against the same average made
  with the true angles and CTFs; both are compared with the clean CTF-free
  projection by their FRC area under the curve (:meth:`FSCCurve.auc`), and the
  relative loss ``1 - AUC_est / AUC_true`` is reported.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from cryoviz.errors import InputError
from cryoviz.inference.vaegan.metrics import align_inplane_angles, defocus_errors
from cryoviz.inference.vaegan.model import Microscope
from cryoviz.inference.vaegan.outputs import load_estimates
from cryoviz.inference.vaegan.search import AverageAccumulator
from cryoviz.io.mrc import open_stack
from cryoviz.io.particles import ImageSource, load_particles
from cryoviz.metrics.fsc import frc

__all__ = ["score_inplane_run"]


def _load_truth(dataset_dir: Path) -> tuple[dict[str, np.ndarray], dict, torch.Tensor]:
    path = dataset_dir / "truth" / "truth.npz"
    if not path.is_file():
        raise InputError(path, "truth", "an in-plane dataset (simulate_inplane)",
                         got="no such file")
    with np.load(path) as data:
        truth = {k: data[k] for k in data.files}
    config = json.loads((dataset_dir / "simulation.json").read_text())
    with open_stack(dataset_dir / "truth" / "projection.mrc") as stack:
        projection = torch.as_tensor(np.asarray(stack.read(np.arange(1)))[0],
                                     dtype=torch.float64)
    return truth, config, projection


def score_inplane_run(run_dir: str | Path, dataset_dir: str | Path,
                      wiener_constant: float = 0.1, subset: int = 200,
                      batch_size: int = 256) -> dict:
    """Metrics of a ``cryovaegan`` run on an in-plane dataset (see the module notes).

    Parameters
    ----------
    run_dir, dataset_dir
        The run and the dataset folder.
    wiener_constant
        Of the averages (:class:`AverageAccumulator`), the same for every average.
    subset
        The averages are also made from the first ``subset`` images only
        (``average_subset``): with all images both averages come close to the
        clean projection and the FRC-AUC saturates.
    batch_size
        Images per read.

    Returns
    -------
    dict
        JSON-serialisable figures (angles in degrees, defoci in Å); ``average``
        and ``average_subset`` hold the FRC-AUC of the averages made with the
        final estimates, the true parameters and the encoder's estimates.
    """
    dataset_dir = Path(dataset_dir)
    est = load_estimates(run_dir)
    truth, config, projection = _load_truth(dataset_dir)
    true_mean = 0.5 * (truth["ctf_defocus_u_angstrom"] + truth["ctf_defocus_v_angstrom"])
    if len(est["angle_deg"]) != len(true_mean):
        raise InputError(run_dir, "estimates", f"{len(true_mean)} particles",
                         got=len(est["angle_deg"]))
    low, high = config["defocus_range_angstrom"]
    span = float(high - low)
    result: dict = {"n_particles": int(len(true_mean)), "defocus_range_angstrom": span}
    for prefix, label in (("", "final"), ("encoder_", "encoder")):
        align = align_inplane_angles(est[prefix + "angle_deg"], truth["psi_deg"])
        mean_err = defocus_errors(est[prefix + "defocus_angstrom"], true_mean)
        uv_err = np.concatenate([
            defocus_errors(est[prefix + "defocus_u_angstrom"], truth["ctf_defocus_u_angstrom"]),
            defocus_errors(est[prefix + "defocus_v_angstrom"], truth["ctf_defocus_v_angstrom"])])
        result[label] = {
            "angle_median_error_deg": align.median_deg,
            "angle_mean_error_deg": float(np.mean(align.errors_deg)),
            "angle_within_5deg": float(np.mean(align.errors_deg <= 5.0)),
            "angle_offset_deg": align.offset_deg, "angle_mirrored": align.mirrored,
            "defocus_median_error_angstrom": float(np.median(mean_err)),
            "defocus_median_error_percent_of_range": float(100 * np.median(mean_err) / span),
            "defocus_uv_median_error_angstrom": float(np.median(uv_err)),
        }
        spread = {"": ("angle_std_deg", "defocus_std_angstrom"),
                  "encoder_": (None, "encoder_defocus_std_angstrom")}[prefix]
        if spread[0] is not None:
            result[label]["angle_error_within_2std"] = float(
                np.mean(align.errors_deg <= 2.0 * est[spread[0]]))
        result[label]["defocus_error_within_2std"] = float(
            np.mean(mean_err <= 2.0 * est[spread[1]]))
        if label == "final":
            final_align = align
    particles = load_particles(dataset_dir / "particles.star")
    mic = Microscope(config["voltage_kv"], config["cs_mm"], config["amplitude_contrast"])
    encoder_align = align_inplane_angles(est["encoder_angle_deg"], truth["psi_deg"])
    parameter_sets = {
        "estimated": (final_align.apply(est["angle_deg"]), est["defocus_u_angstrom"],
                      est["defocus_v_angstrom"], est["astigmatism_angle_deg"]),
        "true_parameters": (truth["psi_deg"], truth["ctf_defocus_u_angstrom"],
                            truth["ctf_defocus_v_angstrom"], truth["ctf_astigmatism_angle_deg"]),
        "encoder_estimates": (encoder_align.apply(est["encoder_angle_deg"]),
                              est["encoder_defocus_u_angstrom"],
                              est["encoder_defocus_v_angstrom"],
                              est["encoder_astigmatism_angle_deg"]),
    }
    n = len(particles)
    for label, count in (("average", n), ("average_subset", min(n, subset))):
        aucs = _average_aucs(particles, parameter_sets, mic, projection, count,
                             wiener_constant, batch_size)
        result[label] = {**{f"frc_auc_{k}": v for k, v in aucs.items()},
                         "frc_auc_loss_fraction": 1.0 - aucs["estimated"]
                         / aucs["true_parameters"],
                         "n_images": count, "wiener_constant": wiener_constant}
    return result


def _average_aucs(particles, parameter_sets: dict, mic: Microscope, projection: torch.Tensor,
                  count: int, wiener_constant: float, batch_size: int) -> dict[str, float]:
    """FRC-AUC against ``projection`` of the average of the first ``count`` images, per set."""
    box, apix = particles.box_size, particles.pixel_size_angstrom
    accumulators = {k: AverageAccumulator(box, mic, apix) for k in parameter_sets}
    source = ImageSource(particles)
    for start in range(0, count, batch_size):
        sel = np.arange(start, min(count, start + batch_size))
        images = source.images(sel)
        for key, arrays in parameter_sets.items():
            accumulators[key].add(images, *(torch.as_tensor(a[sel]) for a in arrays))
    source.close()
    return {k: frc(acc.result(wiener_constant), projection).auc()
            for k, acc in accumulators.items()}
