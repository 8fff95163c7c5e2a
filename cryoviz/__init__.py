"""cryoviz: one PyTorch engine for cryo-EM reconstruction methods.

The image formation model lives in :mod:`cryoviz.imaging` (with
:mod:`cryoviz.fourier`, :mod:`cryoviz.ctf`, :mod:`cryoviz.projection` and
:mod:`cryoviz.gaussians`); particle files in :mod:`cryoviz.io`; simulation in
:mod:`cryoviz.simulate`; reconstruction with known poses in
:mod:`cryoviz.reconstruct`; heterogeneous training in :mod:`cryoviz.train`
and :mod:`cryoviz.inference`; analysis in :mod:`cryoviz.analysis`; metrics in
:mod:`cryoviz.metrics`. Conventions: ``docs/CONVENTIONS.md``.
"""

__version__ = "0.1.0"
