// fusedreg::ftrl_ on the CPU: ftrl_update (fusedreg_math.h) over the element loop of cpu/loop.h (the rows
// present with sparse grads; no group prox: check_ftrl_group refuses it).
#include "loop.h"  // first: it brings in the Vectorized primitives before fusedreg_math.h

#include <ATen/Dispatch.h>
#include <torch/library.h>

namespace fusedreg {

void ftrl_cpu(FUSEDREG_FTRL_PARAMS) {
  Staged st = stage("ftrl_", c10::DeviceType::CPU, params, grads,
                    {{"accumulators", accumulators, true}, {"linears", linears, true}}, {}, false, grad_scale,
                    found_inf, lr_tensor, group_l1, group_dim, rows_of(rows));
  check_ftrl_group(group_l1);  // after stage()'s group_dim check, as the reference orders them
  if (skip_step(found_inf) || st.n == 0) return;
  lr = lr_of(lr_tensor, lr);
  if (lr == 0) return;  // no step (FTRL divides by lr), as the reference
  const FtrlArgs args = ftrl_args(lr, lr_power, beta, l2_shrinkage, maximize, penalty_args(FUSEDREG_PENALTY_NAMES));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, st.dtype, "fusedreg_ftrl_cpu", [&] {
    using O = at::opmath_type<scalar_t>;
    using S = FtrlScalars<O>;
    const S sc = make_ftrl<O>(args);
    const auto [has_scale, scale] = scale_of<O>(grad_scale);
    std::vector<Slot<scalar_t, O, 2, S>> slots;
    for (size_t i = 0; i < st.n; ++i) slots.push_back(make_slot<scalar_t, O, 2>(st, i, sc));
    const std::vector<GroupJob<O>> none;
    run_update(slots, none, group_dim, has_scale, [&, scale = scale](const S& s, bool hs, auto& p, auto g, auto& st_) {
      ftrl_update(p, g, st_[0], st_[1], s, hs, scale);
    });
  });
  st.finish();
}

}  // namespace fusedreg

TORCH_LIBRARY_IMPL(fusedreg, CPU, m) { m.impl("ftrl_", &fusedreg::ftrl_cpu); }
