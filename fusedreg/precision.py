"""What the fused kernels see of a param: low-precision handling and DTensor shards.

The kernels take plain tensors, one dtype per launch, with grads in the param's dtype. The optimizer classes map
every param that has a grad to a *work* tensor (the tensor the kernel updates) and a *work grad*:

  default               the param itself (bf16/fp16 params run fp32 math inside the kernel, state is fp32)
  master_weights=True   bf16/fp16 params: the fp32 copy kept in state["master_param"]; the grad is cast to fp32
                        (one temporary), the kernel updates the master, and the param gets one rounded copy of it
  stochastic_rounding   bf16 params: an fp32 temporary of the param; the kernel updates it and the result is
                        written back rounded stochastically (stochastic_round_bf16), so small updates survive
                        in expectation without a persistent fp32 copy. Not fused on any backend: a separate
                        pass after the kernel.
  DTensor params        (FSDP2's fully_shard, tensor parallel) the local shard (to_local()) of the param, grad
                        and state; the state itself is created as DTensors, like torch.optim's, so
                        torch.distributed.checkpoint can save and reshard it.

Elementwise penalties (everything but group lasso, weight decay included) only read the element they update,
so running them on local shards is exact under any sharding. Group lasso needs whole groups: it is exact when
each group lies inside one shard (group_dim == the sharded dim, e.g. Shard(0) rows with group_dim=0) and raises
otherwise.
"""
import sys

import torch

LOW_PRECISION = (torch.float16, torch.bfloat16)

# torch.compile must not trace into a fused step (see optim._Fused._fused_step). torch.optim marks its own such
# methods with torch._disable_dynamo, which imports torch._dynamo (seconds) on first call rather than at import.
no_compile = getattr(torch, "_disable_dynamo", None) or torch.compiler.disable


def _dtensor_type():
    # No DTensor can exist before torch.distributed.tensor is imported; importing it here would cost seconds.
    mod = sys.modules.get("torch.distributed.tensor")
    return None if mod is None else mod.DTensor


def is_dtensor(t):
    dtensor = _dtensor_type()
    return dtensor is not None and isinstance(t, dtensor)


def local(t):
    """The tensor a kernel can update in place: the local shard of a DTensor, else t itself."""
    return t.to_local() if is_dtensor(t) else t


def locals_(ts):
    """[local(t) for t in ts], for the per-step lists (DTensor is looked up once)."""
    dtensor = _dtensor_type()
    if dtensor is None:
        return list(ts)
    return [t.to_local() if isinstance(t, dtensor) else t for t in ts]


def check_group_layout(p, group_l1, group_dim):
    """Raise when group lasso would need groups that cross the shards of a DTensor param."""
    if group_l1 == 0 or not is_dtensor(p) or p.dim() < 2:
        return
    for placement in p.placements:
        if placement.is_shard() and placement.dim % p.dim() != group_dim:
            raise NotImplementedError(
                f"group lasso (group_l1 > 0, group_dim={group_dim}) on a DTensor param sharded on dim "
                f"{placement.dim}: its groups cross shards and would need an all-reduce of their norms. Shard "
                f"on dim {group_dim} (FSDP2's fully_shard shards dim 0, so use group_dim=0) or replicate it.")


def stochastic_round_bf16(x, generator=None):
    """x (fp32) rounded stochastically to bf16: up with probability (x - down)/(up - down), so E[result] = x.

    bf16 is the top 16 bits of fp32: add 16 uniform random bits to the low half and truncate. The result is
    always one of the two bf16 neighbours of x (x itself when x is a bf16 value); inf and nan stay what they are.
    """
    if x.dtype != torch.float32:
        raise TypeError(f"stochastic_round_bf16 takes float32, got {x.dtype}")
    bits = x.contiguous().view(torch.int32)
    noise = torch.randint(0, 1 << 16, x.shape, dtype=torch.int32, device=x.device, generator=generator)
    rounded = ((bits + noise) & -65536).view(torch.float32)  # -65536 == 0xFFFF0000
    # The low-half carry can turn the largest finite values into inf (as round-up should); nan must stay nan.
    return torch.where(torch.isnan(x), x, rounded).to(torch.bfloat16)


class Work:
    """The tensors one step hands to the kernels, and how to write the results back. Building it changes
    nothing: master copies it makes for params that have none are kept (keep) once the step has been checked."""

    def __init__(self, params, state, group):
        master = group.get("master_weights", False)
        sr = group.get("stochastic_rounding", False)
        if master and sr:
            raise ValueError("choose one of master_weights and stochastic_rounding, not both")
        self.tensors, self.grads, self._writeback, self._new = [], [], [], {}
        dtensor = _dtensor_type()
        self.sharded = dtensor is not None and any(isinstance(p, dtensor) for p in params)  # DTensor params
        if not master and not sr and not self.sharded:
            # The common case, on every step: the kernels update the params themselves.
            self.tensors, self.grads = list(params), [p.grad for p in params]
            return
        for p in params:
            check_group_layout(p, group.get("group_l1", 0.0), group.get("group_dim", 0))
            lp, lg = local(p), local(p.grad)
            if master and p.dtype in LOW_PRECISION:
                m = state.get(p, {}).get("master_param")
                if m is None:
                    m = self._new[p] = p.detach().to(torch.float32, copy=True)
                w = local(m)
                self._writeback.append((lp, w, False))
            elif sr and p.dtype == torch.bfloat16:
                w = lp.to(torch.float32)
                self._writeback.append((lp, w, True))
            elif sr and p.dtype == torch.float16:
                raise ValueError("stochastic_rounding is for bfloat16 params; use master_weights for float16")
            else:
                self.tensors.append(lp)
                self.grads.append(lg)
                continue
            self.tensors.append(w)
            self.grads.append(lg.to(torch.float32))

    def keep(self, state):
        """Put the new master copies into the optimizer state (once every group has passed its checks)."""
        for p, m in self._new.items():
            state[p]["master_param"] = m

    def finish(self):
        """Copy the fp32 results back into the low-precision params (after the kernel)."""
        for p, w, sr in self._writeback:
            p.copy_(stochastic_round_bf16(w) if sr else w)
