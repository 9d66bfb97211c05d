"""The "triton" backend: `sgd_`, `adam_`, `adagrad_` as Triton kernels, what fusedreg.backends.kernel("triton",
op) returns. Their arguments are fusedreg._ops.ARGS[op] (names, order, defaults), checked against it on import.

  math.py     the per-element math, one @triton.jit helper per formula, and the numerics notes
  launch.py   launch shapes, chunk tables and their cache, the step counters, the launch
  sgd.py, adam.py, adagrad.py   each op's kernel and host entry
  group.py    the group-lasso prox, launched after the op's kernel

Each entry checks its arguments with fusedreg._ops.check (the kernels' contract) before it changes anything.

torch.compile: the ops are also registered as opaque custom ops `fusedreg::triton_sgd_`, `triton_adam_` and
`triton_adagrad_` with the schemas of fusedreg._ops (mutations declared there) and fake kernels that check the
same contract; under compilation the entries call them by keyword. They are not `triton_op`s: the kernels write
through addresses loaded from a table, which Inductor's kernel mutation analysis cannot see.
"""
import inspect

import torch

from .. import _ops
from .adagrad import adagrad_
from .adam import adam_
from .sgd import sgd_

OPS = {"sgd_": sgd_, "adam_": adam_, "adagrad_": adagrad_}

_lib = torch.library.Library(_ops.LIB, "FRAGMENT")
for _op, _fn in OPS.items():
    _params = inspect.signature(_fn).parameters.values()
    if ([p.name for p in _params] != [a.name for a in _ops.ARGS[_op]]
            or {p.name: p.default for p in _params if p.default is not p.empty} != _ops.defaults(_op)):
        raise TypeError(f"fusedreg.triton.{_op}: its signature differs from fusedreg._ops.ARGS[{_op!r}]")
    _lib.define(_ops.schema(_op, name="triton_" + _op))
    _lib.impl("triton_" + _op, _fn, "CompositeExplicitAutograd")
    torch.library.register_fake(f"{_ops.LIB}::triton_{_op}", _ops._fake(_op), lib=_lib)

__all__ = ["sgd_", "adam_", "adagrad_"]
