"""ReDGE as a :mod:`torch.distributions` object, for users who prefer distributions.

:class:`ReDGECategorical` is a one-hot categorical distribution (like
:class:`torch.distributions.OneHotCategorical`) whose :meth:`~ReDGECategorical.rsample` returns a
ReDGE hard sample: a one-hot value that carries ReDGE's pathwise gradient to the logits.
"""

from __future__ import annotations

import torch
from torch.distributions import OneHotCategorical

from .estimators import redge, sample_categorical
from .validation import check_generator, check_n_steps, check_t_1

__all__ = ["ReDGECategorical"]


class ReDGECategorical(OneHotCategorical):
    """One-hot categorical distribution ``Cat(π)`` with a ReDGE reparameterised sample.

    ``log_prob``, ``entropy``, ``mean``, ``variance``, ``mode``, ``enumerate_support`` and
    :meth:`sample` are those of the categorical law ``π = softmax(logits)`` (exactly as in
    :class:`torch.distributions.OneHotCategorical`); :meth:`sample` is an exact draw from ``π``.

    :meth:`rsample` returns :func:`redge_mini.redge`'s hard sample: one-hot in the forward pass,
    differentiable in ``logits`` through the DDIM sampler in the backward pass. Its law is ``π``
    only approximately: the hard sample is drawn from the sampler's soft sample ``S``, and the
    finite DDIM grid leaves a bias. At the defaults (``t_1 = 0.5``, ``n_steps = 5``) the measured
    total variation to ``π`` is within Monte-Carlo error of the noise floor of an exact sampler
    (about 0.005 with 40,000 draws for ``K = 10``), whereas ``t_1 = 0.1``, ``n_steps = 3`` is far
    off (TV about 0.3); both are checked in ``tests/test_distributions.py``. Do not treat
    ``log_prob`` of an ``rsample`` as the exact likelihood of a draw when ``t_1`` is small and
    ``n_steps`` few.

    Args:
        logits: unnormalised log-probabilities ``(..., K)`` (give exactly one of ``logits`` and
            ``probs``).
        probs: probabilities ``(..., K)`` (normalised along the last dimension).
        t_1: ReDGE's stopping time in ``(0, 1]``.
        n_steps: ReDGE's number of grid points (an int ``>= 2``).
        validate_args: as in :class:`torch.distributions.Distribution` (checks that ``probs`` is
            in the simplex and that ``log_prob``'s argument is one-hot).

    Example:
        >>> logits = torch.zeros(3, 4, requires_grad=True)
        >>> dist = ReDGECategorical(logits=logits, t_1=0.5, n_steps=5)
        >>> x = dist.rsample((8,), generator=torch.Generator().manual_seed(0))
        >>> x.shape
        torch.Size([8, 3, 4])
        >>> (x * torch.arange(4.0)).sum().backward()
    """

    has_rsample = True

    def __init__(
        self,
        logits: torch.Tensor | None = None,
        probs: torch.Tensor | None = None,
        *,
        t_1: float = 0.5,
        n_steps: int = 5,
        validate_args: bool | None = None,
    ) -> None:
        if (logits is None) == (probs is None):
            raise ValueError("give exactly one of logits and probs")
        self.t_1 = check_t_1(t_1)
        self.n_steps = check_n_steps(n_steps)
        super().__init__(probs=probs, logits=logits, validate_args=validate_args)

    def expand(
        self, batch_shape: torch.Size | tuple[int, ...], _instance: ReDGECategorical | None = None
    ) -> ReDGECategorical:
        """A view of the distribution with a broadcast batch shape (same ``t_1``, ``n_steps``)."""
        new = self._get_checked_instance(ReDGECategorical, _instance)
        new.t_1 = self.t_1
        new.n_steps = self.n_steps
        return super().expand(batch_shape, _instance=new)

    def sample(
        self,
        sample_shape: torch.Size | tuple[int, ...] = (),
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Exact one-hot draws from ``Cat(π)``, shape ``sample_shape + batch_shape + (K,)``.

        No gradient. ``generator`` (optional) is the source of the draws.
        """
        with torch.no_grad():
            shape = self._extended_shape(sample_shape)
            logits = self.logits.expand(shape)
            generator = check_generator(generator, logits.device)
            return sample_categorical(logits, generator)

    def rsample(
        self,
        sample_shape: torch.Size | tuple[int, ...] = (),
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """ReDGE hard samples, shape ``sample_shape + batch_shape + (K,)``.

        The value is one-hot; the gradient with respect to ``logits`` (or ``probs``) is ReDGE's,
        with this distribution's ``t_1`` and ``n_steps``. ``generator`` (optional) is the source
        of every random draw.
        """
        shape = self._extended_shape(sample_shape)
        return redge(
            self.logits.expand(shape),
            n_steps=self.n_steps,
            t_1=self.t_1,
            hard=True,
            generator=generator,
        )

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(batch_shape={tuple(self.batch_shape)}, "
            f"K={self.event_shape[0]}, t_1={self.t_1}, n_steps={self.n_steps})"
        )
