// fusedreg::sgd_ on CUDA: sgd_update (fusedreg_math.h) in one multi-tensor launch per up to 320 chunks, then the
// group prox of SGD's scalar step (group.cu).
#include <torch/library.h>

#include "multi_tensor.cuh"

namespace fusedreg {
namespace cuda {
namespace {

template <typename T, typename O, bool Rows>
__global__ void __launch_bounds__(kThreads)
    sgd_kernel(TensorListMeta<3, Rows> meta, SgdArgs args, const O* grad_scale, const float* found_inf,
               const double* lr) {
  if (skipped(found_inf)) return;
  const Chunk<T, O, 3, Rows> c(meta);
  const SgdScalars<O> sc = make_sgd<O>(with_lr(args, lr));
  const bool has_scale = grad_scale != nullptr;
  const O scale = has_scale ? *grad_scale : O(1);
  for_chunk<T, O, 1>(c, meta, [&](O& p, O g, O* s) { sgd_update(p, g, s[0], sc, has_scale, scale); });
}

}  // namespace
}  // namespace cuda

void sgd_cuda(FUSEDREG_SGD_PARAMS) {
  const bool has_momentum = momentum != 0;
  Staged st = stage("sgd_", c10::DeviceType::CUDA, params, grads,
                    {{"momentum_buffers", momentum_buffers, has_momentum}}, {}, false, grad_scale, found_inf,
                    lr_tensor, group_l1, group_dim, rows_of(rows));
  if (st.n == 0) return;
  const c10::cuda::CUDAGuard guard(params[0].device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto dev = cuda::device_args(grad_scale, found_inf, lr_tensor, st.dtype);
  const SgdArgs args = sgd_args(lr, momentum, dampening, weight_decay, nesterov, maximize, first_step,
                                penalty_args(FUSEDREG_PENALTY_NAMES));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, st.dtype, "fusedreg_sgd_cuda", [&] {
    using O = at::opmath_type<scalar_t>;
    cuda::apply_staged<3>(st, {}, [&](const auto& meta, int blocks) {
      constexpr bool rows = std::decay_t<decltype(meta)>::kRows;
      cuda::sgd_kernel<scalar_t, O, rows><<<blocks, cuda::kThreads, 0, stream>>>(meta, args, dev.scale_ptr<O>(),
                                                                                  dev.inf_ptr(), dev.lr_ptr());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  cuda::group_prox(st, -1, {}, args, group_l1, group_dim, dev.inf_ptr(), dev.lr_ptr(), stream);
  st.finish();
}

}  // namespace fusedreg

TORCH_LIBRARY_IMPL(fusedreg, CUDA, m) { m.impl("sgd_", &fusedreg::sgd_cuda); }
