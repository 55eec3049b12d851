"""Distributed optimizers, agnostic of the problem they train."""

from optimizers.dinno import DiNNO
from optimizers.dsgd import DSGD
from optimizers.dsgt import DSGT
from optimizers.local import LocalTraining

OPTIMIZERS = {cls.alg_name: cls for cls in (DiNNO, DSGD, DSGT)}
BASELINES = {LocalTraining.alg_name: LocalTraining}

__all__ = ["DiNNO", "DSGD", "DSGT", "LocalTraining", "OPTIMIZERS", "BASELINES"]
