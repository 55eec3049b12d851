"""Distributed optimizers, agnostic of the problem they train."""

from foundation.schema import REQUIRED, ConfigError, Custom, Str, did_you_mean, excerpt, validate_mapping
from optimizers.beer import BEER
from optimizers.choco import CHOCOSGD
from optimizers.deepsqueeze import DeepSqueeze
from optimizers.dinno import DiNNO
from optimizers.dsgd import DSGD
from optimizers.dsgt import DSGT
from optimizers.extra import EXTRA
from optimizers.local import LocalTraining
from optimizers.motef import MoTEF
from optimizers.next import NEXT
from optimizers.prox_pda import ProxPDA
from optimizers.push_diging import PushDIGing
from optimizers.relaxed_admm import RelaxedADMM
from optimizers.sgp import SGP

OPTIMIZERS = {cls.alg_name: cls for cls in (DiNNO, DSGD, DSGT, CHOCOSGD, EXTRA, NEXT, ProxPDA,
                                                   RelaxedADMM, SGP, PushDIGing, BEER, DeepSqueeze, MoTEF)}
BASELINES = {LocalTraining.alg_name: LocalTraining}


def validate_optimizer_config(prefix: str, data) -> dict:
    """An ``optimizer_config`` block: ``alg_name`` picks the optimizer, whose ``config_schema`` and
    ``check_config`` check the rest."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix}: expected a mapping of keys, got {excerpt(data)}")
    name = data.get("alg_name")
    if name is None:
        raise ConfigError(f"{prefix}.alg_name: required key is missing; allowed: {', '.join(OPTIMIZERS)}")
    if not isinstance(name, str) or name not in OPTIMIZERS:
        raise ConfigError(f"{prefix}.alg_name: {excerpt(name)} is not allowed{did_you_mean(name, OPTIMIZERS)}; "
                          f"allowed: {', '.join(OPTIMIZERS)}")
    cls = OPTIMIZERS[name]
    for key, why in cls.retired_keys.items():
        if key in data:
            raise ConfigError(f"{prefix}.{key}: {why}")
    out = validate_mapping(prefix, {"alg_name": (Str, REQUIRED), **cls.config_schema}, data)
    cls.check_config(prefix, out)
    return out


OPTIMIZER_CONFIG = Custom(validate_optimizer_config)  # the schema kind of a problem's ``optimizer_config``

__all__ = ["DiNNO", "DSGD", "DSGT", "CHOCOSGD", "BEER", "DeepSqueeze", "MoTEF", "EXTRA", "NEXT", "ProxPDA", "RelaxedADMM", "SGP", "PushDIGing", "LocalTraining", "OPTIMIZERS",
           "BASELINES", "OPTIMIZER_CONFIG", "validate_optimizer_config"]
