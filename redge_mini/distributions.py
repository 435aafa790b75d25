"""Every pathwise estimator as a :mod:`torch.distributions` object.

:class:`PathwiseCategorical` is a one-hot categorical distribution (a
:class:`torch.distributions.OneHotCategorical`) whose :meth:`~PathwiseCategorical.rsample` returns
an estimator's hard sample: a one-hot value that carries the estimator's gradient to the logits.
One subclass per estimator fixes the estimator and names its knobs: :class:`STCategorical`,
:class:`GumbelSoftmaxCategorical`, :class:`ReinMaxCategorical`, :class:`ReDGECategorical`,
:class:`ReDGECovCategorical`, :class:`ReinDGECategorical`. A ``-inf`` logit (or a zero
probability) masks a category: it is never drawn and gets a zero gradient.
"""

from __future__ import annotations

import torch
from torch.distributions import OneHotCategorical

from . import registry
from .estimators import sample_categorical
from .validation import check_generator, get_validate_args

__all__ = [
    "GumbelSoftmaxCategorical",
    "PathwiseCategorical",
    "ReDGECategorical",
    "ReDGECovCategorical",
    "ReinDGECategorical",
    "ReinMaxCategorical",
    "STCategorical",
]


class PathwiseCategorical(OneHotCategorical):
    """One-hot categorical distribution ``Cat(π)`` with an estimator's reparameterised sample.

    ``log_prob``, ``entropy``, ``mean``, ``variance``, ``mode``, ``support``,
    ``enumerate_support`` and :meth:`sample` are those of the categorical law
    ``π = softmax(logits)`` (exactly as in :class:`torch.distributions.OneHotCategorical`);
    :meth:`sample` is an exact draw from ``π``.

    :meth:`rsample` returns the estimator's hard sample (``redge_mini.<estimator>(..., hard=True)``
    with this distribution's knobs): one-hot in the forward pass, the estimator's gradient in the
    backward pass. For ST, Gumbel-Softmax and ReinMax its law is exactly ``π``; for the ReDGE
    family only approximately (the finite DDIM grid leaves a bias, see :class:`ReDGECategorical`).

    Args:
        estimator: a pathwise estimator of the registry (``"st"``, ``"redge"``, ..., or one
            added by :func:`redge_mini.register`).
        logits: unnormalised log-probabilities ``(..., K)`` (give exactly one of ``logits`` and
            ``probs``); ``-inf`` masks a category.
        probs: probabilities ``(..., K)`` (normalised along the last dimension); 0 masks one.
        validate_args: as in :class:`torch.distributions.Distribution`; ``None`` follows
            :func:`redge_mini.set_validate_args` (off there means off here).
        **knobs: the estimator's knobs (defaults from the registry), stored as attributes.
    """

    has_rsample = True
    estimator: str = ""

    def __init__(
        self,
        estimator: str | None = None,
        logits: torch.Tensor | None = None,
        probs: torch.Tensor | None = None,
        *,
        validate_args: bool | None = None,
        **knobs: float | int,
    ) -> None:
        name = estimator if estimator is not None else type(self).estimator
        name = registry.check_name(name, pathwise=True)
        if (logits is None) == (probs is None):
            raise ValueError("give exactly one of logits and probs")
        self.estimator = name
        self.knobs = registry.check_knobs(name, **knobs)
        if validate_args is None and not get_validate_args():
            validate_args = False
        super().__init__(probs=probs, logits=logits, validate_args=validate_args)
        if probs is not None:
            # torch derives logits from probs through clamped probabilities (log 1e-7 for a zero);
            # a zero probability must stay impossible (log_prob -inf, never drawn), so the logits
            # are log(probs) with log 0 = -inf, and a zero gradient there (not 0 * inf).
            probs = self._categorical.probs
            positive = probs > 0
            safe = torch.where(positive, probs, torch.ones_like(probs)).log()
            self._categorical.logits = torch.where(positive, safe, -torch.inf)

    def __getattr__(self, key: str):
        knobs = self.__dict__.get("knobs", {})
        if key in knobs:
            return knobs[key]
        raise AttributeError(f"{type(self).__name__} has no attribute {key!r}")

    def expand(
        self,
        batch_shape: torch.Size | tuple[int, ...],
        _instance: PathwiseCategorical | None = None,
    ) -> PathwiseCategorical:
        """A view of the distribution with a broadcast batch shape (same estimator and knobs)."""
        new = self._get_checked_instance(type(self), _instance)
        new.estimator = self.estimator
        new.knobs = dict(self.knobs)
        return super().expand(batch_shape, _instance=new)

    def _sampling_logits(self, shape: torch.Size) -> torch.Tensor:
        return self.logits.expand(shape)

    def sample(
        self,
        sample_shape: torch.Size | tuple[int, ...] = (),
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Exact one-hot draws from ``Cat(π)``, shape ``sample_shape + batch_shape + (K,)``.

        No gradient. ``generator`` (optional) is the source of the draws.
        """
        with torch.no_grad():
            logits = self._sampling_logits(self._extended_shape(sample_shape))
            generator = check_generator(generator, logits.device)
            return sample_categorical(logits, generator)

    def rsample(
        self,
        sample_shape: torch.Size | tuple[int, ...] = (),
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The estimator's hard samples, shape ``sample_shape + batch_shape + (K,)``.

        One-hot values; the gradient with respect to ``logits`` (or ``probs``) is the estimator's,
        with this distribution's knobs. ``generator`` (optional) is the source of every draw.
        """
        logits = self._sampling_logits(self._extended_shape(sample_shape))
        spec = registry.get_spec(self.estimator)
        return spec.fn(logits, hard=True, generator=generator, **self.knobs)

    def __repr__(self) -> str:
        knobs = "".join(f", {key}={value}" for key, value in self.knobs.items())
        return (f"{type(self).__name__}(batch_shape={tuple(self.batch_shape)}, "
                f"K={self.event_shape[0]}{knobs})")


_GUMBEL = registry.defaults("gumbel")  # the knobs' defaults: the registry's, not restated here
_REINMAX = registry.defaults("reinmax")
_REDGE = registry.defaults("redge")


class STCategorical(PathwiseCategorical):
    """:class:`PathwiseCategorical` with Straight-Through's ``rsample`` (no knob)."""

    estimator = "st"

    def __init__(self, logits=None, probs=None, *, validate_args=None) -> None:
        super().__init__(None, logits, probs, validate_args=validate_args)


class GumbelSoftmaxCategorical(PathwiseCategorical):
    """:class:`PathwiseCategorical` with straight-through Gumbel-Softmax's ``rsample``.

    Not :class:`torch.distributions.RelaxedOneHotCategorical` (whose samples are the soft,
    relaxed ones): here ``rsample`` is one-hot with the relaxation's gradient at temperature
    ``tau``.
    """

    estimator = "gumbel"

    def __init__(self, logits=None, probs=None, *, tau: float = _GUMBEL["tau"],
                 validate_args=None) -> None:
        super().__init__(None, logits, probs, validate_args=validate_args, tau=tau)


class ReinMaxCategorical(PathwiseCategorical):
    """:class:`PathwiseCategorical` with ReinMax's ``rsample`` (``tau >= 1``)."""

    estimator = "reinmax"

    def __init__(self, logits=None, probs=None, *, tau: float = _REINMAX["tau"],
                 validate_args=None) -> None:
        super().__init__(None, logits, probs, validate_args=validate_args, tau=tau)


class ReDGECategorical(PathwiseCategorical):
    """:class:`PathwiseCategorical` with ReDGE's ``rsample`` (knobs ``t_1``, ``n_steps``).

    The law of an ``rsample`` is ``E[S]``, not exactly ``π``: the hard sample is drawn from the
    sampler's soft sample ``S``, and the finite DDIM grid leaves a bias that shrinks with
    ``n_steps`` and is large at small ``t_1`` with few steps (``t_1 = 0.1``, ``n_steps = 3``);
    ``tests/test_estimators.py`` checks both. Do
    not treat ``log_prob`` of an ``rsample`` as the exact likelihood of a draw when ``t_1`` is
    small and ``n_steps`` few.

    Example:
        >>> logits = torch.zeros(3, 4, requires_grad=True)
        >>> dist = ReDGECategorical(logits=logits, t_1=0.5, n_steps=5)
        >>> x = dist.rsample((8,), generator=torch.Generator().manual_seed(0))
        >>> x.shape
        torch.Size([8, 3, 4])
        >>> (x * torch.arange(4.0)).sum().backward()
    """

    estimator = "redge"

    def __init__(self, logits=None, probs=None, *, t_1: float = _REDGE["t_1"],
                 n_steps: int = _REDGE["n_steps"], validate_args=None) -> None:
        super().__init__(None, logits, probs, validate_args=validate_args, n_steps=n_steps,
                         t_1=t_1)


class ReDGECovCategorical(ReDGECategorical):
    """:class:`ReDGECategorical` with ReDGE-cov's ``rsample`` (moment-matched reference noise)."""

    estimator = "redge_cov"


class ReinDGECategorical(ReDGECategorical):
    """:class:`ReDGECategorical` with ReinDGE's ``rsample`` (ReinMax correction at ``t_1``)."""

    estimator = "reindge"
