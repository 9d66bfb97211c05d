"""The one table of tolerances (relative to the largest magnitude compared) every test uses."""
import torch

# One kernel call vs the reference in the same precision.
STEP = {torch.float64: 1e-12, torch.float32: 1e-6}
# A 20+ step training trajectory vs torch.optim (fp32 rounding differences compound over steps).
TRAJECTORY = {torch.float64: 1e-12, torch.float32: 1e-5}
# Convergence to an established solver's solution, fp64.
SOLVER = 1e-8


def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item() if a.numel() else 0.0
