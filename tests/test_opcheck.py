"""torch.library.opcheck for every fusedreg op on its CPU kernel (schema mutations, fake kernel, autograd
registration, AOT dispatch). Skips when fusedreg._C is not built."""
import pytest
import torch

import fusedreg._ops  # noqa: F401  (the schemas, before the kernels register)

try:
    import fusedreg._C  # noqa: F401
    HAVE_C = True
except ImportError:
    HAVE_C = False

pytestmark = pytest.mark.skipif(not HAVE_C, reason="fusedreg._C is not built")


def _tensors(dtype, n=3):
    shapes = [(5, 4), (7,), (0,)][:n]
    od = torch.float64 if dtype == torch.float64 else torch.float32
    params = [torch.randn(s).to(dtype) for s in shapes]
    grads = [torch.randn(s).to(dtype) for s in shapes]
    return params, grads, lambda: [torch.rand(s, dtype=od) for s in shapes], \
        lambda: [torch.zeros((), dtype=torch.float32) for _ in shapes]


def _amp(amp):
    # grad_scale, found_inf and (with them) lr_tensor: the tensor arguments that are None in a plain call.
    return (torch.tensor(2.0), torch.tensor(0.0), torch.tensor(0.02, dtype=torch.float64)) if amp else (None,) * 3


def sgd_args(dtype, momentum, amp):
    p, g, states, _ = _tensors(dtype)
    return (p, g, states() if momentum else [], 0.1, momentum, 0.0, 1e-2, False, False, False,
            0.1, False, 0.01, 0.0, False, 0.05, 0, *_amp(amp))


def adam_args(dtype, amsgrad, amp):
    p, g, states, steps = _tensors(dtype)
    return (p, g, states(), states(), states() if amsgrad else [], steps(), 1e-3, 0.9, 0.999, 1e-8, 1e-2, True,
            amsgrad, False, 0.1, False, 0.01, 0.001, True, 0.05, 1, *_amp(amp))


def adagrad_args(dtype, _, amp):
    p, g, states, steps = _tensors(dtype)
    return (p, g, states(), steps(), 0.1, 0.01, 1e-2, 1e-10, True, 0.1, True, 0.0, 0.0, False, 0.05, 0, *_amp(amp))


CASES = [("sgd_", sgd_args, 0.0), ("sgd_", sgd_args, 0.9), ("adam_", adam_args, False),
         ("adam_", adam_args, True), ("adagrad_", adagrad_args, None)]


@pytest.mark.parametrize("amp", [False, True], ids=["plain", "amp"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("op,make,variant", CASES, ids=[f"{c[0]}{c[2]}" for c in CASES])
def test_opcheck(op, make, variant, dtype, amp):
    torch.library.opcheck(getattr(torch.ops.fusedreg, op), make(dtype, variant, amp))


def test_every_schema_is_covered():
    assert {c[0] for c in CASES} == set(fusedreg._ops.SCHEMAS)
