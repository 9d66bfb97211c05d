"""fusedreg: fused penalized optimizers for PyTorch (L1 prox, elastic net, weight decay in one memory pass)."""
from . import _ops  # noqa: F401  (defines the op schemas before any kernel registers)
from . import backends, functional, reference  # noqa: F401
from .optim import SGD, Adagrad, Adam, AdamW

__version__ = "0.1.0"
__all__ = ["SGD", "Adam", "AdamW", "Adagrad", "backends", "functional", "reference"]
