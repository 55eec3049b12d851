"""The project's notes: one ``logging`` logger (``nndt``) that writes plain lines to stderr, so that results
printed to stdout stay clean when redirected. ``--quiet`` leaves only warnings."""

from __future__ import annotations

import logging
import sys

LOG = logging.getLogger("nndt")


def configure(quiet: bool = False) -> None:
    """Notes (INFO) and warnings as plain lines on stderr; ``quiet``: warnings only."""
    LOG.setLevel(logging.WARNING if quiet else logging.INFO)
    LOG.propagate = False
    for handler in list(LOG.handlers):
        if getattr(handler, "nndt", False):
            LOG.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.nndt = True  # type: ignore[attr-defined]  # marks our handler: the next configure() replaces it
    LOG.addHandler(handler)
