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
    run_closed_form<scalar_t, 1>(st, make_lion<O>(args), lr, group_l1, group_dim, l2, grad_scale,
                                 [](auto& p, auto g, auto& m, const auto& s, bool hs, O scale) {
                                   lion_update(p, g, m[0], s, hs, scale);
                                 });
  });
  st.finish();
}

}  // namespace fusedreg

TORCH_LIBRARY_IMPL(fusedreg, CPU, m) { m.impl("lion_", &fusedreg::lion_cpu); }
