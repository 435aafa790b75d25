"""One module per experiment of the book: data, model, loss, training and evaluation loops.

Each task module is used both by its chapter (small scale, executed live) and by the matching
full-scale script in :mod:`redge_mini.experiments`, so the two can never drift apart.
"""
