"""Output files of a CryoGAN / multi-CryoGAN run (:mod:`cryoviz.inference.cryogan`).

The maps (the map or mean map, each component and maps along it), the report
log ``log.jsonl`` and ``metrics.json`` of a :class:`~cryoviz.inference.cryogan.CryoGANResult`.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from cryoviz.io.mrc import atomic_output, write_volume
from cryoviz.io.particles import ParticleSet

if TYPE_CHECKING:
    from cryoviz.inference.cryogan import CryoGANResult

__all__ = ["TRAVERSAL_Z", "write_cryogan"]

#: Latent values (prior standard deviations) of the maps written along each component.
TRAVERSAL_Z = (-2.0, -1.0, 0.0, 1.0, 2.0)


def write_cryogan(result: CryoGANResult, particles: ParticleSet,
                  output_dir: str | Path) -> dict:
    """Write the run's maps, ``log.jsonl`` (one line per report) and ``metrics.json``.

    Maps (MRC with the voxel size) in ``output_dir/volumes``: ``map.mrc`` (the
    map; for ``multi-cryogan`` the mean map ``V_0``), and for each component
    ``k`` (1-based) ``component_k.mrc`` (``U_k``) and ``component_k/z_+1.0.mrc`` ...
    (``V_0 + z U_k`` at the values of :data:`TRAVERSAL_Z`). Returns the metrics.
    """
    out = Path(output_dir)
    apix = result.pixel_size_angstrom
    write_volume(out / "volumes" / "map.mrc", result.map.numpy(), apix)
    for k, component in enumerate(result.components, start=1):
        write_volume(out / "volumes" / f"component_{k}.mrc", component.numpy(), apix)
        for z in TRAVERSAL_Z:
            write_volume(out / "volumes" / f"component_{k}" / f"z_{z:+.1f}.mrc",
                         (result.map + z * component).numpy(), apix)
    with atomic_output(out / "log.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(r) + "\n" for r in result.history))
    tail = result.history[-1] if result.history else {}
    metrics = {
        "recipe": "multi-cryogan" if result.settings.components else "cryogan",
        "components": result.settings.components,
        "n_particles": len(particles),
        "final_wasserstein": tail.get("wasserstein", math.nan),
        "final_critic_loss": tail.get("critic_loss", math.nan),
        "final_generator_loss": tail.get("generator_loss", math.nan),
        "noise_std": result.noise_std,
        "shift_sigma_angstrom": result.shift_sigma_angstrom,
        "frame": "arbitrary rotation, translation and hand (align before comparing)",
        "seconds": result.seconds,
        "settings": asdict(result.settings),
    }
    with atomic_output(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=2))
    return metrics
