// fusedreg::lion_ on CUDA: lion_update (fusedreg_math.h) in one multi-tensor launch per up to 320 chunks, then the
// group prox of SGD's scalar step (group.cu; Lion has no metric).
#include <torch/library.h>

#include "multi_tensor.cuh"

namespace fusedreg {
namespace cuda {
namespace {

template <typename T, typename O>
__global__ void __launch_bounds__(kThreads)
    lion_kernel(TensorListMeta<3> meta, LionArgs args, const O* grad_scale, const float* found_inf,
                const double* lr) {
  if (skipped(found_inf)) return;
  const Chunk<T, O, 3> c(meta);
  const LionScalars<O> sc = make_lion<O>(with_lr(args, lr));
  const bool has_scale = grad_scale != nullptr;
  const O scale = has_scale ? *grad_scale : O(1);
  chunk_loop<T, O, 1>(c.p, c.g, c.s, c.len, [&](O& p, O g, O* s) { lion_update(p, g, s[0], sc, has_scale, scale); });
}

}  // namespace
}  // namespace cuda

void lion_cuda(FUSEDREG_LION_PARAMS) {
  Staged st = stage("lion_", c10::DeviceType::CUDA, params, grads, {{"exp_avgs", exp_avgs, true}}, {}, false,
                    grad_scale, found_inf, lr_tensor, group_l1, group_dim);
  if (st.n == 0) return;
  const c10::cuda::CUDAGuard guard(params[0].device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto dev = cuda::device_args(grad_scale, found_inf, lr_tensor, st.dtype);
  const LionArgs args = lion_args(lr, beta1, beta2, weight_decay, maximize, penalty_args(FUSEDREG_PENALTY_NAMES));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, st.dtype, "fusedreg_lion_cuda", [&] {
    using O = at::opmath_type<scalar_t>;
    cuda::multi_tensor_apply<3>(st.lists, {}, [&](const cuda::TensorListMeta<3>& meta, int blocks) {
      cuda::lion_kernel<scalar_t, O><<<blocks, cuda::kThreads, 0, stream>>>(meta, args, dev.scale_ptr<O>(),
                                                                            dev.inf_ptr(), dev.lr_ptr());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  cuda::group_prox(st, -1, {}, args, group_l1, group_dim, dev.inf_ptr(), dev.lr_ptr(), stream);
  st.finish();
}

}  // namespace fusedreg

TORCH_LIBRARY_IMPL(fusedreg, CUDA, m) { m.impl("lion_", &fusedreg::lion_cuda); }
