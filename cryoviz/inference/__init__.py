"""Inference of heterogeneity with known poses by expectation maximisation.

:mod:`cryoviz.inference.class_em` is 3-D classification (RELION ``class3d`` with
fixed orientations, Scheres 2012); :mod:`cryoviz.inference.ppca` is 3-D
variability analysis, a linear subspace fitted by PPCA-EM (Punjani & Fleet 2021).
"""

from cryoviz.inference.class_em import (
    ClassEMProgress,
    ClassEMResult,
    iter_class_em,
    run_class_em,
    write_class_em,
)
from cryoviz.inference.ppca import (
    PPCAProgress,
    PPCAResult,
    eval_ppca,
    iter_ppca,
    run_ppca,
    write_ppca,
)

__all__ = [
    "ClassEMProgress",
    "ClassEMResult",
    "run_class_em",
    "iter_class_em",
    "write_class_em",
    "PPCAProgress",
    "PPCAResult",
    "iter_ppca",
    "run_ppca",
    "eval_ppca",
    "write_ppca",
]

# CryoVAEGAN: in-plane angle and CTF per image without a volume (cryoviz.inference.vaegan)
from cryoviz.inference.vaegan import (  # noqa: E402
    CryoVAEGANProgress,
    CryoVAEGANSettings,
    iter_cryovaegan,
    train_cryovaegan,
)

__all__ += ["CryoVAEGANSettings", "CryoVAEGANProgress", "iter_cryovaegan", "train_cryovaegan"]

# fstdiff: variational EM over per-particle Gaussian pose posteriors (cryoviz.inference.variational)
from cryoviz.inference.variational import (  # noqa: E402
    VariationalProgress,
    VariationalResult,
    VariationalSettings,
    iter_variational,
    run_variational,
    write_variational,
)

__all__ += ["VariationalSettings", "VariationalProgress", "VariationalResult",
            "iter_variational", "run_variational", "write_variational"]

# Amortized pose inference: CNN pose encoder + map (recipes cryoai, cryoposenet)
from cryoviz.inference.amortized_pose import (  # noqa: E402
    AmortizedPoseProgress,
    AmortizedPoseSettings,
    iter_amortized_pose,
)
from cryoviz.inference.amortized_pose_output import write_amortized_pose  # noqa: E402

__all__ += ["AmortizedPoseSettings", "AmortizedPoseProgress", "iter_amortized_pose",
            "write_amortized_pose"]

# CryoGAN: a homogeneous map learned adversarially (cryoviz.inference.cryogan)
from cryoviz.inference.cryogan import (  # noqa: E402
    CryoGANProgress,
    CryoGANResult,
    CryoGANSettings,
    iter_cryogan,
    run_cryogan,
)
from cryoviz.inference.cryogan_output import write_cryogan  # noqa: E402

__all__ += ["CryoGANSettings", "CryoGANProgress", "CryoGANResult", "iter_cryogan",
            "run_cryogan", "write_cryogan"]
