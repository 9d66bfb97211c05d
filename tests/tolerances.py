"""The one table of tolerances (relative to the largest magnitude compared) every test uses."""
import torch

# One kernel call vs the reference in the same precision. bf16/fp16 params are computed in fp32 and rounded
# once on the way out: two implementations whose fp32 results differ by a hair can round one ulp apart, and one
# ulp is at most 2^-7 (bf16, 8-bit significand) or 2^-10 (fp16, 11-bit) of the value.
STEP = {torch.float64: 1e-12, torch.float32: 1e-6, torch.bfloat16: 2.0 ** -7, torch.float16: 2.0 ** -10}
# A 20+ step training trajectory vs torch.optim (fp32 rounding differences compound over steps).
TRAJECTORY = {torch.float64: 1e-12, torch.float32: 1e-5}
# Convergence to an established solver's solution, fp64.
SOLVER = 1e-8


def rel_err(a, b):
    a, b = a.double(), b.double()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item() if a.numel() else 0.0
