"""Distributed optimizers, agnostic of the problem they train."""

from optimizers.choco import CHOCOSGD
from optimizers.dinno import DiNNO
from optimizers.dsgd import DSGD
from optimizers.dsgt import DSGT
from optimizers.extra import EXTRA
from optimizers.local import LocalTraining
from optimizers.next import NEXT
from optimizers.prox_pda import ProxPDA

OPTIMIZERS = {cls.alg_name: cls for cls in (DiNNO, DSGD, DSGT, CHOCOSGD, EXTRA, NEXT, ProxPDA)}
BASELINES = {LocalTraining.alg_name: LocalTraining}

__all__ = ["DiNNO", "DSGD", "DSGT", "CHOCOSGD", "EXTRA", "NEXT", "ProxPDA", "LocalTraining", "OPTIMIZERS",
           "BASELINES"]
