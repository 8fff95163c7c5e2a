"""Electron scattering factors of neutral atoms as sums of Gaussians.

Peng et al. (1996) fit the elastic electron scattering factor of each neutral
atom as ``f(s) = sum_i a_i exp(-b_i s^2)`` with ``s = sin(theta)/lambda``
(Å^-1). :mod:`cryoviz.gaussians` turns each term into a 3-D Gaussian.
"""

from __future__ import annotations

import gemmi

__all__ = [
    "PENG_ELECTRON_SCATTERING",
    "ATOMIC_NUMBERS",
    "SINGLE_GAUSSIAN_B0_A2",
    "scattering_factor_gaussians",
]

#: 5-Gaussian fits of the elastic electron scattering factor of neutral atoms,
#: ``f(s) = sum_i a_i exp(-b_i s^2)``, ``s = sin(theta)/lambda`` in Å^-1; ``(a (Å), b (Å^2))``.
#: International Tables Vol. C Table 4.3.2.2 (Peng, Ren, Dudarev & Whelan 1996,
#: Acta Cryst. A52, 257-276).
PENG_ELECTRON_SCATTERING: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "H": ((0.0349, 0.1201, 0.1970, 0.0573, 0.1195), (0.5347, 3.5867, 12.3471, 18.9525, 38.6269)),
    "C": ((0.0893, 0.2563, 0.7570, 1.0487, 0.3575), (0.2465, 1.7100, 6.4094, 18.6113, 50.2523)),
    "N": ((0.1022, 0.3219, 0.7982, 0.8197, 0.1715), (0.2451, 1.7481, 6.1925, 17.3894, 48.1431)),
    "O": ((0.0974, 0.2921, 0.6910, 0.6990, 0.2039), (0.2067, 1.3815, 4.6943, 12.7105, 32.4726)),
    "S": ((0.2497, 0.5628, 1.3899, 2.1865, 0.7715), (0.2681, 1.6711, 7.0267, 19.5377, 50.3888)),
    "P": ((0.2548, 0.6106, 1.4541, 2.3204, 0.8477), (0.2908, 1.8740, 8.5176, 24.3434, 63.2996)),
}

#: Atomic numbers used by the ``"single"`` model for common biological elements.
ATOMIC_NUMBERS: dict[str, int] = {
    "H": 1, "C": 6, "N": 7, "O": 8, "Na": 11, "Mg": 12, "P": 15, "S": 16, "Cl": 17,
    "K": 19, "Ca": 20, "Mn": 25, "Fe": 26, "Co": 27, "Ni": 28, "Cu": 29, "Zn": 30, "Se": 34,
}  # fmt: skip

#: Default atom "size" B-factor (Å^2) of the ``"single"`` model: 17 Å^2 is the
#: amplitude-weighted mean ``b`` of carbon's Peng fit, so that one Gaussian has the same
#: curvature of ``f(s)`` at ``s = 0`` (same radius of gyration) as the 5-term carbon.
SINGLE_GAUSSIAN_B0_A2: float = 17.0


def scattering_factor_gaussians(element: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """5-Gaussian electron scattering factor ``(a_i (Å), b_i (Å^2))`` of an element.

    Uses :data:`PENG_ELECTRON_SCATTERING`; other elements are taken from gemmi's copy of
    the same table (``gemmi.Element(element).c4322``); unknown elements fall back to carbon.
    """
    key = element[:1].upper() + element[1:].lower()
    if key in PENG_ELECTRON_SCATTERING:
        return PENG_ELECTRON_SCATTERING[key]
    try:
        coef = gemmi.Element(key).c4322
        a, b = tuple(float(v) for v in coef.a), tuple(float(v) for v in coef.b)
        if sum(a) > 0:
            return a, b
    except (ImportError, RuntimeError, ValueError, AttributeError):
        pass
    return PENG_ELECTRON_SCATTERING["C"]
