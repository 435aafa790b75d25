"""redge_mini: gradient estimators for categorical variables, centred on ReDGE.

ReDGE (Gourevitch et al., 2026) reparameterises a categorical sample through an exact denoising
diffusion sampler. Every estimator takes the arguments of ``torch.nn.functional.gumbel_softmax``
(``logits``, its knobs, ``hard=False``, ``dim=-1``) plus a keyword-only ``generator``; ``-inf``
logits mask categories::

    from redge_mini import redge
    y = redge(logits, 5, 0.5, hard=True)   # one-hot forward, ReDGE gradient backward

The core needs torch only; the book's code lives in :mod:`redge_mini.book` (extra ``[book]``).
"""

from .distributions import (
    GumbelSoftmaxCategorical,
    PathwiseCategorical,
    ReDGECategorical,
    ReDGECovCategorical,
    ReinDGECategorical,
    ReinMaxCategorical,
    STCategorical,
)
from .estimators import Sample, gumbel_softmax, redge, redge_cov, reindge, reinmax, sample, st
from .registry import (
    ALL_ESTIMATORS,
    ESTIMATORS,
    EstimatorSpec,
    Knob,
    get_spec,
    make_estimator,
    make_loss,
    register,
    unregister,
)
from .score_function import reinforce_loss
from .validation import get_validate_args, set_validate_args

__version__ = "0.1.0"

__all__ = [
    "ALL_ESTIMATORS",
    "ESTIMATORS",
    "EstimatorSpec",
    "GumbelSoftmaxCategorical",
    "Knob",
    "PathwiseCategorical",
    "ReDGECategorical",
    "ReDGECovCategorical",
    "ReinDGECategorical",
    "ReinMaxCategorical",
    "STCategorical",
    "Sample",
    "get_spec",
    "get_validate_args",
    "gumbel_softmax",
    "make_estimator",
    "make_loss",
    "redge",
    "redge_cov",
    "reindge",
    "reinforce_loss",
    "register",
    "reinmax",
    "sample",
    "set_validate_args",
    "st",
    "unregister",
]
