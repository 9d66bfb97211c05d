// fusedreg::muon_momentum_ and fusedreg::muon_ on CUDA (Muon, before and after its orthogonalization):
// muon_momentum_update and muon_update (fusedreg_math.h) in multi-tensor launches, muon_ then the group prox of
// SGD's scalar step lr (group.cu, with SgdArgs: the same closed form).
#include <torch/library.h>

#include "multi_tensor.cuh"

namespace fusedreg {
namespace cuda {
namespace {

template <typename T, typename O>
__global__ void __launch_bounds__(kThreads)
    muon_momentum_kernel(TensorListMeta<4> meta, MuonMomentumArgs args, const O* grad_scale, const float* found_inf) {
  if (skipped(found_inf)) return;
  const Chunk<T, O, 4> c(meta);
  const MuonMomentumScalars<O> sc = make_muon_momentum<O>(args);
  const bool has_scale = grad_scale != nullptr;
  const O scale = has_scale ? *grad_scale : O(1);
  // The loop writes p back as it read it: the same values.
  chunk_loop<T, O, 2>(c.p, c.g, c.s, c.len,
                      [&](O& p, O g, O* s) { muon_momentum_update(p, g, s[0], s[1], sc, has_scale, scale); });
}

template <typename T, typename O>
__global__ void __launch_bounds__(kThreads)
    muon_kernel(TensorListMeta<2> meta, MuonArgs args, const O* grad_scale, const float* found_inf, const double* lr) {
  if (skipped(found_inf)) return;
  const Chunk<T, O, 2> c(meta);
  const MuonScalars<O> sc = make_muon<O>(with_lr(args, lr));
  const bool has_scale = grad_scale != nullptr;
  const O scale = has_scale ? *grad_scale : O(1);
  chunk_loop<T, O, 0>(c.p, c.g, c.s, c.len, [&](O& p, O u, O*) { muon_update(p, u, sc, has_scale, scale); });
}

}  // namespace
}  // namespace cuda

void muon_momentum_cuda(FUSEDREG_MUON_MOMENTUM_PARAMS) {
  Staged st = stage("muon_momentum_", c10::DeviceType::CUDA, params, grads,
                    {{"momentum_buffers", momentum_buffers, true}, {"updates", updates, nesterov}}, {}, false,
                    grad_scale, found_inf, std::nullopt, 0.0, 0);
  if (st.n == 0) return;
  const c10::cuda::CUDAGuard guard(params[0].device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto dev = cuda::device_args(grad_scale, found_inf, std::nullopt, st.dtype);
  const MuonMomentumArgs args = muon_momentum_args(momentum, nesterov, maximize, l1, l1_subgradient);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, st.dtype, "fusedreg_muon_momentum_cuda", [&] {
    using O = at::opmath_type<scalar_t>;
    cuda::multi_tensor_apply<4>(st.lists, {}, [&](const cuda::TensorListMeta<4>& meta, int blocks) {
      cuda::muon_momentum_kernel<scalar_t, O><<<blocks, cuda::kThreads, 0, stream>>>(meta, args, dev.scale_ptr<O>(),
                                                                                     dev.inf_ptr());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  st.finish();
}

void muon_cuda(FUSEDREG_MUON_PARAMS) {
  Staged st = stage("muon_", c10::DeviceType::CUDA, params, grads, {}, {}, false, grad_scale, found_inf, lr_tensor,
                    group_l1, group_dim);
  if (st.n == 0) return;
  const c10::cuda::CUDAGuard guard(params[0].device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto dev = cuda::device_args(grad_scale, found_inf, lr_tensor, st.dtype);
  const PenaltyArgs pen = penalty_args(FUSEDREG_PENALTY_NAMES);
  const MuonArgs args = muon_args(lr, lr_ratio, weight_decay, pen);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, st.dtype, "fusedreg_muon_cuda", [&] {
    using O = at::opmath_type<scalar_t>;
    cuda::multi_tensor_apply<2>(st.lists, {}, [&](const cuda::TensorListMeta<2>& meta, int blocks) {
      cuda::muon_kernel<scalar_t, O><<<blocks, cuda::kThreads, 0, stream>>>(meta, args, dev.scale_ptr<O>(),
                                                                             dev.inf_ptr(), dev.lr_ptr());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  // The group step is SGD's closed form with step lr: SgdArgs carries lr (the device lr replaces it) and the
  // penalties' l2; its other fields are not read there.
  const SgdArgs group = sgd_args(lr, 0.0, 0.0, 0.0, false, false, false, pen);
  cuda::group_prox(st, -1, {}, group, group_l1, group_dim, dev.inf_ptr(), dev.lr_ptr(), stream);
  st.finish();
}

}  // namespace fusedreg

TORCH_LIBRARY_IMPL(fusedreg, CUDA, m) {
  m.impl("muon_momentum_", &fusedreg::muon_momentum_cuda);
  m.impl("muon_", &fusedreg::muon_cuda);
}
