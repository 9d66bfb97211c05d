// fusedreg::adagrad_ on CUDA: adagrad_update (fusedreg_math.h) in multi-tensor launches, then the group prox in
// Adagrad's metric (group.cu) and the step counters (steps.cu).
#include <torch/library.h>

#include "multi_tensor.cuh"

namespace fusedreg {
namespace cuda {
namespace {

template <typename T, typename O, bool Rows>
__global__ void __launch_bounds__(kThreads)
    adagrad_kernel(TensorListMeta<3, Rows> meta, AdagradArgs args, const O* grad_scale, const float* found_inf,
                   const double* lr) {
  if (skipped(found_inf)) return;
  const Chunk<T, O, 3, Rows> c(meta);
  __shared__ AdagradScalars<O> shared;  // clr from the step on the device, once per block
  if (threadIdx.x == 0) shared = make_adagrad<O>(with_lr(args, lr), static_cast<double>(*meta.step[c.t] + 1.0f));
  __syncthreads();
  const AdagradScalars<O> sc = shared;
  const bool has_scale = grad_scale != nullptr;
  const O scale = has_scale ? *grad_scale : O(1);
  for_chunk<T, O, 1>(c, meta, [&](O& p, O g, O* s) { adagrad_update(p, g, s[0], sc, has_scale, scale); });
}

}  // namespace
}  // namespace cuda

void adagrad_cuda(FUSEDREG_ADAGRAD_PARAMS) {
  Staged st = stage("adagrad_", c10::DeviceType::CUDA, params, grads, {{"state_sums", state_sums, true}},
                    state_steps, true, grad_scale, found_inf, lr_tensor, group_l1, group_dim, rows_of(rows));
  if (st.n == 0) return;
  const c10::cuda::CUDAGuard guard(params[0].device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto dev = cuda::device_args(grad_scale, found_inf, lr_tensor, st.dtype);
  const AdagradArgs args =
      adagrad_args(lr, lr_decay, weight_decay, eps, maximize, penalty_args(FUSEDREG_PENALTY_NAMES));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, st.dtype, "fusedreg_adagrad_cuda", [&] {
    using O = at::opmath_type<scalar_t>;
    cuda::apply_staged<3>(st, state_steps, [&](const auto& meta, int blocks) {
      constexpr bool rows = std::decay_t<decltype(meta)>::kRows;
      cuda::adagrad_kernel<scalar_t, O, rows><<<blocks, cuda::kThreads, 0, stream>>>(
          meta, args, dev.scale_ptr<O>(), dev.inf_ptr(), dev.lr_ptr());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  cuda::group_prox(st, 2, state_steps, args, group_l1, group_dim, dev.inf_ptr(), dev.lr_ptr(), stream);
  cuda::advance_steps(state_steps, dev.inf_ptr(), stream);
  st.finish();
}

}  // namespace fusedreg

TORCH_LIBRARY_IMPL(fusedreg, CUDA, m) { m.impl("adagrad_", &fusedreg::adagrad_cuda); }
