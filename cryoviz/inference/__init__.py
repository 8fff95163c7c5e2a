"""Inference of heterogeneity: classification and (later) latent-variable models.

:mod:`cryoviz.inference.class_em` is 3-D classification with known poses by
expectation maximisation of a regularised likelihood (RELION ``class3d`` with
fixed orientations, Scheres 2012).
"""

from cryoviz.inference.class_em import (
    ClassEMProgress,
    ClassEMResult,
    iter_class_em,
    run_class_em,
    write_class_em,
)

__all__ = ["ClassEMProgress", "ClassEMResult", "run_class_em", "iter_class_em", "write_class_em"]
