"""fusedreg: fused penalized optimizers for PyTorch (L1 prox, elastic net, weight decay in one memory pass)."""
from . import _ops  # noqa: F401  (loads the C++ kernels, then defines the op schemas, which checks them)
from . import backends, functional, reference  # noqa: F401
from . import optim
from .optim import *  # noqa: F401,F403  (the optimizer classes: optim.__all__)
from .penalties import LambdaMaxReport, Sparsity, elastic_net, lambda_max, param_groups, penalty, sparsity
from .select import DataError, GridEdgeWarning, LambdaPath, select_lambda  # also binds fusedreg.select

__version__ = "0.1.0"
__all__ = optim.__all__ + ["backends", "functional", "reference", "elastic_net", "penalty", "sparsity", "Sparsity",
                           "param_groups", "select_lambda", "LambdaPath", "lambda_max", "LambdaMaxReport",
                           "DataError", "GridEdgeWarning"]
