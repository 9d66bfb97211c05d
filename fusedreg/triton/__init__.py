"""The "triton" backend: every op of fusedreg._ops as Triton kernels. OPS[op] is the entry that
fusedreg.backends.kernel("triton", op) returns; its arguments are fusedreg._ops.ARGS[op] (names, order, defaults;
the elementwise penalties as **pen, handed to fusedreg.triton.math.penalties), checked against it on import.

  math.py     the per-element math, one @triton.jit helper per formula, and the numerics notes
  launch.py   launch shapes, chunk tables and their cache, the step counters, the launch
  sgd.py, adam.py, adagrad.py, ftrl.py, lion.py   each op's kernel and host entry
  group.py    the group-lasso prox, launched after the op's kernel

Each entry checks its arguments with fusedreg._ops.check (the kernels' contract) before it changes anything.

torch.compile: the ops are also registered as opaque custom ops `fusedreg::triton_sgd_`, `triton_adam_`,
`triton_adagrad_`, `triton_ftrl_` and `triton_lion_` with the schemas of fusedreg._ops (mutations declared
there) and fake kernels that check the same contract; under compilation the entries call them by keyword. They are not `triton_op`s: the
kernels write through addresses loaded from a table, which Inductor's kernel mutation analysis cannot see.
"""
import importlib
import inspect

import torch

from .. import _ops

# Each op's entry lives in the module named after its stem (fusedreg/triton/sgd.py has sgd_), as in csrc/.
OPS = {op: getattr(importlib.import_module(f"{__name__}.{_ops.stem(op)}"), op) for op in _ops.ARGS}

_lib = torch.library.Library(_ops.LIB, "FRAGMENT")
_PEN = {a.name for a in _ops.ELEMENTWISE}  # an entry takes these as **pen (fusedreg.triton.math.penalties)
for _op, _fn in OPS.items():
    _params = [p for p in inspect.signature(_fn).parameters.values() if p.kind != p.VAR_KEYWORD]
    if ([p.name for p in _params] != [a.name for a in _ops.ARGS[_op] if a.name not in _PEN]
            or {p.name: p.default for p in _params if p.default is not p.empty}
            != {k: v for k, v in _ops.defaults(_op).items() if k not in _PEN}):
        raise TypeError(f"fusedreg.triton.{_op}: its signature differs from fusedreg._ops.ARGS[{_op!r}]")
    _lib.define(_ops.schema(_op, name="triton_" + _op))
    _lib.impl("triton_" + _op, _fn, "CompositeExplicitAutograd")
    torch.library.register_fake(f"{_ops.LIB}::triton_{_op}", _ops.fake(_op), lib=_lib)
