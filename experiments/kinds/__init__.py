"""The registry of problem kinds: one entry per kind, from which config validation, kind inference,
metric choices and setup lookup all derive.

Adding a kind: write its problem module (``problems/``) and its kind module here (schemas, cross-checks,
a setup, one :class:`ProblemKind`), then add the entry below.
"""

from __future__ import annotations

from experiments.kinds import density, logreg, mnist, tag
from experiments.kinds.base import ExperimentSetup, ProblemKind
from foundation.schema import ConfigError, did_you_mean, excerpt

KINDS: dict[str, ProblemKind] = {kind.name: kind for kind in (
    mnist.KIND,
    density.STATIC,
    density.ONLINE,
    logreg.KIND,
    tag.KIND,
)}


def kind_of(experiment: dict) -> ProblemKind:
    """The kind ``experiment.problem`` names, or the first kind that recognizes the block without it."""
    name = experiment.get("problem")
    if name is not None:
        if not isinstance(name, str) or name not in KINDS:
            raise ConfigError(f"experiment.problem: {excerpt(name)} is not allowed{did_you_mean(name, KINDS)}; "
                              f"allowed: {', '.join(KINDS)}")
        return KINDS[name]
    for kind in KINDS.values():
        if kind.recognizes is not None and kind.recognizes(experiment):
            return kind
    raise ConfigError(f"experiment.problem: required (allowed: {', '.join(KINDS)})")


__all__ = ["KINDS", "ExperimentSetup", "ProblemKind", "kind_of"]
