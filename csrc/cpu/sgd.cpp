// fusedreg::sgd_ on the CPU: sgd_update (fusedreg_math.h) over the element loop of cpu/loop.h (the rows present with
// sparse grads), then the group prox of SGD's scalar step.
#include "loop.h"  // first: it brings in the Vectorized primitives before fusedreg_math.h

#include <ATen/Dispatch.h>
#include <torch/library.h>

namespace fusedreg {

void sgd_cpu(FUSEDREG_SGD_PARAMS) {
  const bool has_momentum = momentum != 0;
  Staged st = stage("sgd_", c10::DeviceType::CPU, params, grads, {{"momentum_buffers", momentum_buffers, has_momentum}},
                    {}, false, grad_scale, found_inf, lr_tensor, group_l1, group_dim, rows_of(rows));
  if (skip_step(found_inf) || st.n == 0) return;
  lr = lr_of(lr_tensor, lr);
  const SgdArgs args = sgd_args(lr, momentum, dampening, weight_decay, nesterov, maximize, first_step,
                                penalty_args(FUSEDREG_PENALTY_NAMES));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, st.dtype, "fusedreg_sgd_cpu", [&] {
    using O = at::opmath_type<scalar_t>;
    run_closed_form<scalar_t, 1>(st, make_sgd<O>(args), lr, group_l1, group_dim, l2, grad_scale,
                                 [](auto& p, auto g, auto& buf, const auto& s, bool hs, O scale) {
                                   sgd_update(p, g, buf[0], s, hs, scale);
                                 });
  });
  st.finish();
}

}  // namespace fusedreg

TORCH_LIBRARY_IMPL(fusedreg, CPU, m) { m.impl("sgd_", &fusedreg::sgd_cpu); }
