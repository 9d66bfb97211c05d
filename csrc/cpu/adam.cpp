// fusedreg::adam_ on the CPU (Adam and AdamW): adam_update (fusedreg_math.h) over the element loop of cpu/loop.h,
// then the group prox in Adam's metric (with decoupled l1: SGD's closed form).
#include "loop.h"  // first: it brings in the Vectorized primitives before fusedreg_math.h

#include <ATen/Dispatch.h>
#include <torch/library.h>

namespace fusedreg {

void adam_cpu(FUSEDREG_ADAM_PARAMS) {
  Staged st = stage("adam_", c10::DeviceType::CPU, params, grads,
                    {{"exp_avgs", exp_avgs, true}, {"exp_avg_sqs", exp_avg_sqs, true},
                     {"max_exp_avg_sqs", max_exp_avg_sqs, amsgrad}},
                    state_steps, true, grad_scale, found_inf, lr_tensor, group_l1, group_dim);
  if (skip_step(found_inf)) return;
  lr = lr_of(lr_tensor, lr);
  const AdamArgs args = adam_args(lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad, maximize,
                                  penalty_args(FUSEDREG_PENALTY_NAMES));
  std::vector<double> steps(st.n);
  for (size_t i = 0; i < st.n; ++i) steps[i] = advance(state_steps[i]);
  if (st.n == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, st.dtype, "fusedreg_adam_cpu", [&] {
    using O = at::opmath_type<scalar_t>;
    using S = AdamScalars<O>;
    const auto [has_scale, scale] = scale_of<O>(grad_scale);
    std::vector<Slot<scalar_t, O, 3, S>> slots;
    std::vector<GroupJob<O>> jobs;
    for (size_t i = 0; i < st.n; ++i) {
      const S sc = make_adam<O>(args, steps[i]);
      slots.push_back(make_slot<scalar_t, O, 3>(st, i, sc));
      const auto& sl = slots.back();
      const O* x = !group_metric(args.pen) ? nullptr : amsgrad ? sl.s[2] : sl.s[1];  // nullptr: no metric
      add_group_job<O>(jobs, st, i, lr, group_l1, group_dim, group_l2(args.pen), x, sc.bc2_sqrt, sc.eps);
    }
    run_update(slots, jobs, group_dim, has_scale, [&, scale = scale](const S& s, bool hs, auto& p, auto g, auto& st_) {
      return adam_update(p, g, st_[0], st_[1], st_[2], s, hs, scale);
    });
  });
  st.finish();
}

}  // namespace fusedreg

TORCH_LIBRARY_IMPL(fusedreg, CPU, m) { m.impl("adam_", &fusedreg::adam_cpu); }
