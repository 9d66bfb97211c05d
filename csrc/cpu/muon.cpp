// fusedreg::muon_momentum_ and fusedreg::muon_ on the CPU (Muon, before and after its orthogonalization):
// muon_momentum_update and muon_update (fusedreg_math.h) over the element loop of cpu/loop.h, muon_ then the group
// prox of SGD's scalar step lr.
#include "loop.h"  // first: it brings in the Vectorized primitives before fusedreg_math.h

#include <ATen/Dispatch.h>
#include <torch/library.h>

namespace fusedreg {

void muon_momentum_cpu(FUSEDREG_MUON_MOMENTUM_PARAMS) {
  Staged st = stage("muon_momentum_", c10::DeviceType::CPU, params, grads,
                    {{"momentum_buffers", momentum_buffers, true}, {"updates", updates, nesterov}}, {}, false,
                    grad_scale, found_inf, std::nullopt, 0.0, 0);
  if (skip_step(found_inf) || st.n == 0) return;
  const MuonMomentumArgs args = muon_momentum_args(momentum, nesterov, maximize, l1, l1_subgradient);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, st.dtype, "fusedreg_muon_momentum_cpu", [&] {
    using O = at::opmath_type<scalar_t>;
    using S = MuonMomentumScalars<O>;
    const S sc = make_muon_momentum<O>(args);
    const auto [has_scale, scale] = scale_of<O>(grad_scale);
    std::vector<Slot<scalar_t, O, 2, S>> slots;
    for (size_t i = 0; i < st.n; ++i) slots.push_back(make_slot<scalar_t, O, 2>(st, i, sc));
    // The loop writes p back as it read it: the same values.
    run_update(slots, {}, 0, has_scale, [&, scale = scale](const S& s, bool hs, auto& p, auto g, auto& st_) {
      muon_momentum_update(p, g, st_[0], st_[1], s, hs, scale);
    });
  });
  st.finish();
}

void muon_cpu(FUSEDREG_MUON_PARAMS) {
  Staged st = stage("muon_", c10::DeviceType::CPU, params, grads, {}, {}, false, grad_scale, found_inf, lr_tensor,
                    group_l1, group_dim);
  if (skip_step(found_inf) || st.n == 0) return;
  lr = lr_of(lr_tensor, lr);
  const MuonArgs args = muon_args(lr, lr_ratio, weight_decay, penalty_args(FUSEDREG_PENALTY_NAMES));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, st.dtype, "fusedreg_muon_cpu", [&] {
    using O = at::opmath_type<scalar_t>;
    run_closed_form<scalar_t, 0>(st, make_muon<O>(args), lr, group_l1, group_dim, l2, grad_scale,
                                 [](auto& p, auto u, auto&, const auto& s, bool hs, O scale) {
                                   muon_update(p, u, s, hs, scale);
                                 });
  });
  st.finish();
}

}  // namespace fusedreg

TORCH_LIBRARY_IMPL(fusedreg, CPU, m) {
  m.impl("muon_momentum_", &fusedreg::muon_momentum_cpu);
  m.impl("muon_", &fusedreg::muon_cpu);
}
