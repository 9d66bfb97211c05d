// fusedreg::ftrl_ on the CPU: ftrl_update (fusedreg_math.h) over the element loop of cpu/loop.h (the rows
// present with sparse grads), then the group prox in FTRL's metric q with step 1.
#include "loop.h"  // first: it brings in the Vectorized primitives before fusedreg_math.h

#include <ATen/Dispatch.h>
#include <torch/library.h>

namespace fusedreg {

void ftrl_cpu(FUSEDREG_FTRL_PARAMS) {
  TORCH_CHECK(!l1_decoupled,
              "fusedreg::ftrl_: l1_decoupled is not defined for FTRL, whose l1 is its closed form's");
  Staged st = stage("ftrl_", c10::DeviceType::CPU, params, grads,
                    {{"accumulators", accumulators, true}, {"linears", linears, true}}, {}, false, grad_scale,
                    found_inf, lr_tensor, group_l1, group_dim, rows_of(rows));
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
    std::vector<GroupJob<O>> jobs;
    // Step 1 and no l2 term: FTRL's penalties are not scaled by lr, and its l2 is in q (ftrl_denom of n').
    const double step = 1.0, prox_l2 = 0.0;
    for (size_t i = 0; i < st.n; ++i) {
      slots.push_back(make_slot<scalar_t, O, 2>(st, i, sc));
      add_group_job<O>(jobs, st, i, step, group_l1, group_dim, prox_l2, slots.back().s[0], O(1), O(0), &sc);
    }
    run_update(slots, jobs, group_dim, has_scale, [&, scale = scale](const S& s, bool hs, auto& p, auto g, auto& st_) {
      return ftrl_update(p, g, st_[0], st_[1], s, hs, scale);
    });
  });
  st.finish();
}

}  // namespace fusedreg

TORCH_LIBRARY_IMPL(fusedreg, CPU, m) { m.impl("ftrl_", &fusedreg::ftrl_cpu); }
