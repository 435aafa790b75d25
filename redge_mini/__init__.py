"""redge_mini: gradient estimators for categorical variables, centred on ReDGE.

ReDGE (Gourevitch et al., 2026) reparameterises a categorical sample through an exact denoising
diffusion sampler. Every estimator here is a drop-in replacement for
``torch.nn.functional.gumbel_softmax(logits, tau, hard=True)``::

    from redge_mini import redge
    y = redge(logits, n_steps=5, t_1=0.5)   # one-hot forward, ReDGE gradient backward
"""

from .distributions import ReDGECategorical
from .estimators import Sample, gumbel_softmax, redge, redge_cov, reindge, reinmax, st
from .registry import ESTIMATORS, EstimatorSpec, Knob, make_estimator
from .score_function import reinforce_loss

__version__ = "0.1.0"

__all__ = [
    "ESTIMATORS",
    "EstimatorSpec",
    "Knob",
    "ReDGECategorical",
    "Sample",
    "gumbel_softmax",
    "make_estimator",
    "redge",
    "redge_cov",
    "reindge",
    "reinforce_loss",
    "reinmax",
    "st",
]
