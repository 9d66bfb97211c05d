// fusedreg::adagrad_ on the CPU: adagrad_update (fusedreg_math.h) over the element loop of cpu/loop.h (the rows
// present with sparse grads), then the group prox in Adagrad's metric (with decoupled l1: SGD's closed form).
#include "loop.h"  // first: it brings in the Vectorized primitives before fusedreg_math.h

#include <ATen/Dispatch.h>
#include <torch/library.h>

namespace fusedreg {

void adagrad_cpu(FUSEDREG_ADAGRAD_PARAMS) {
  Staged st = stage("adagrad_", c10::DeviceType::CPU, params, grads, {{"state_sums", state_sums, true}},
                    state_steps, true, grad_scale, found_inf, lr_tensor, group_l1, group_dim, rows_of(rows));
  if (skip_step(found_inf)) return;
  lr = lr_of(lr_tensor, lr);
  const AdagradArgs args =
      adagrad_args(lr, lr_decay, weight_decay, eps, maximize, penalty_args(FUSEDREG_PENALTY_NAMES));
  std::vector<double> steps(st.n);
  for (size_t i = 0; i < st.n; ++i) steps[i] = advance(state_steps[i]);
  if (st.n == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, st.dtype, "fusedreg_adagrad_cpu", [&] {
    using O = at::opmath_type<scalar_t>;
    using S = AdagradScalars<O>;
    const auto [has_scale, scale] = scale_of<O>(grad_scale);
    std::vector<Slot<scalar_t, O, 1, S>> slots;
    std::vector<GroupJob<O>> jobs;
    for (size_t i = 0; i < st.n; ++i) {
      const S sc = make_adagrad<O>(args, steps[i]);
      slots.push_back(make_slot<scalar_t, O, 1>(st, i, sc));
      const O* x = group_metric(args.pen) ? slots.back().s[0] : nullptr;  // nullptr: no metric
      add_group_job<O>(jobs, st, i, adagrad_clr(lr, lr_decay, steps[i]), group_l1, group_dim, group_l2(args.pen), x,
                       O(1), sc.eps);
    }
    run_update(slots, jobs, group_dim, has_scale, [&, scale = scale](const S& s, bool hs, auto& p, auto g, auto& st_) {
      return adagrad_update(p, g, st_[0], s, hs, scale);
    });
  });
  st.finish();
}

}  // namespace fusedreg

TORCH_LIBRARY_IMPL(fusedreg, CPU, m) { m.impl("adagrad_", &fusedreg::adagrad_cpu); }
