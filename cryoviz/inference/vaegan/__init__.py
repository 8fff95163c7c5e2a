"""CryoVAEGAN: amortised inference of in-plane rotation and CTF without a volume.

:mod:`.model` (encoder, canonical-image decoder, discriminator), :mod:`.train`
(the recipe's training generator), :mod:`.search` (per-image maximum-likelihood
refinement and CTF-corrected averages), :mod:`.outputs` (estimates, STAR),
:mod:`.metrics` (scores against truth) and :mod:`.data` (simulated in-plane data).
"""

from cryoviz.inference.vaegan.data import InplaneSimulationConfig, simulate_inplane
from cryoviz.inference.vaegan.metrics import align_inplane_angles, defocus_errors
from cryoviz.inference.vaegan.outputs import load_estimates
from cryoviz.inference.vaegan.search import ctf_corrected_average, search_angle_defocus
from cryoviz.inference.vaegan.train import (
    CryoVAEGANProgress,
    CryoVAEGANSettings,
    iter_cryovaegan,
    train_cryovaegan,
)

__all__ = [
    "CryoVAEGANSettings",
    "CryoVAEGANProgress",
    "iter_cryovaegan",
    "train_cryovaegan",
    "load_estimates",
    "search_angle_defocus",
    "ctf_corrected_average",
    "align_inplane_angles",
    "defocus_errors",
    "InplaneSimulationConfig",
    "simulate_inplane",
]
