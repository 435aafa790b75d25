"""One module per experiment of the book: data, model, loss, training and evaluation loops.

Each task module is used both by its chapter (small scale, executed live) and by the matching
full-scale script in :mod:`redge_mini.book.experiments`, so the two can never drift apart.
"""

from collections.abc import Callable


class TrainingInterrupted(RuntimeError):
    """A training loop stopped early because its ``stop`` callback returned True.

    Raised by the loops of :mod:`redge_mini.book.tasks.polyprog` and
    :mod:`redge_mini.book.tasks.vae` so that
    a time budget (``--max-minutes`` of the experiment scripts) is a hard limit: the unfinished
    run is discarded and a rerun resumes from the last finished one.
    """


StopCallback = Callable[[], bool]
"""A function checked periodically by the training loops; True stops them."""
