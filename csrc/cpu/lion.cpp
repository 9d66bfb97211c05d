// fusedreg::lion_ on the CPU: lion_update (fusedreg_math.h) over the element loop of cpu/loop.h, then the group prox
// of SGD's scalar step (Lion has no metric).
#include "loop.h"  // first: it brings in the Vectorized primitives before fusedreg_math.h

#include <ATen/Dispatch.h>
#include <torch/library.h>

namespace fusedreg {

void lion_cpu(FUSEDREG_LION_PARAMS) {
  Staged st = stage("lion_", c10::DeviceType::CPU, params, grads, {{"exp_avgs", exp_avgs, true}}, {}, false,
                    grad_scale, found_inf, lr_tensor, group_l1, group_dim);
  if (skip_step(found_inf) || st.n == 0) return;
  lr = lr_of(lr_tensor, lr);
  const LionArgs args = lion_args(lr, beta1, beta2, weight_decay, maximize, penalty_args(FUSEDREG_PENALTY_NAMES));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, st.dtype, "fusedreg_lion_cpu", [&] {
    using O = at::opmath_type<scalar_t>;
    using S = LionScalars<O>;
    const S sc = make_lion<O>(args);
    const auto [has_scale, scale] = scale_of<O>(grad_scale);
    std::vector<Slot<scalar_t, O, 1, S>> slots;
    std::vector<GroupJob<O>> jobs;
    for (size_t i = 0; i < st.n; ++i) {
      slots.push_back(make_slot<scalar_t, O, 1>(st, i, sc));
      add_group_job<O>(jobs, st, i, lr, group_l1, group_dim, l2, nullptr, O(1), O(0));
    }
    run_update(slots, jobs, group_dim, has_scale, [&, scale = scale](const S& s, bool hs, auto& p, auto g, auto& st_) {
      lion_update(p, g, st_[0], s, hs, scale);
    });
  });
  st.finish();
}

}  // namespace fusedreg

TORCH_LIBRARY_IMPL(fusedreg, CPU, m) { m.impl("lion_", &fusedreg::lion_cpu); }
