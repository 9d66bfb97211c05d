// fusedreg::adam_ on CUDA (Adam and AdamW): adam_update (fusedreg_math.h) in multi-tensor launches, then the
// group prox in Adam's metric (group.cu) and the step counters (steps.cu).
#include <torch/library.h>

#include "multi_tensor.cuh"

namespace fusedreg {
namespace cuda {
namespace {

template <typename T, typename O>
__global__ void __launch_bounds__(kThreads)
    adam_kernel(TensorListMeta<5> meta, AdamArgs args, const O* grad_scale, const float* found_inf,
                const double* lr) {
  if (skipped(found_inf)) return;
  const Chunk<T, O, 5> c(meta);
  // Bias corrections in double from the step on the device, once per block.
  __shared__ AdamScalars<O> shared;
  if (threadIdx.x == 0) shared = make_adam<O>(with_lr(args, lr), static_cast<double>(*meta.step[c.t] + 1.0f));
  __syncthreads();
  const AdamScalars<O> sc = shared;
  const bool has_scale = grad_scale != nullptr;
  const O scale = has_scale ? *grad_scale : O(1);
  chunk_loop<T, O, 3>(c.p, c.g, c.s, c.len,
                      [&](O& p, O g, O* s) { adam_update(p, g, s[0], s[1], s[2], sc, has_scale, scale); });
}

}  // namespace
}  // namespace cuda

void adam_cuda(FUSEDREG_ADAM_PARAMS) {
  Staged st = stage("adam_", c10::DeviceType::CUDA, params, grads,
                    {{"exp_avgs", exp_avgs, true}, {"exp_avg_sqs", exp_avg_sqs, true},
                     {"max_exp_avg_sqs", max_exp_avg_sqs, amsgrad}},
                    state_steps, true, grad_scale, found_inf, lr_tensor, group_l1, group_dim);
  if (st.n == 0) return;
  const c10::cuda::CUDAGuard guard(params[0].device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto dev = cuda::device_args(grad_scale, found_inf, lr_tensor, st.dtype);
  const AdamArgs args = adam_args(lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad, maximize,
                                  penalty_args(FUSEDREG_PENALTY_NAMES));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, st.dtype, "fusedreg_adam_cuda", [&] {
    using O = at::opmath_type<scalar_t>;
    cuda::multi_tensor_apply<5>(st.lists, state_steps, [&](const cuda::TensorListMeta<5>& meta, int blocks) {
      cuda::adam_kernel<scalar_t, O><<<blocks, cuda::kThreads, 0, stream>>>(meta, args, dev.scale_ptr<O>(),
                                                                             dev.inf_ptr(), dev.lr_ptr());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  cuda::group_prox(st, amsgrad ? 4 : 3, state_steps, args, group_l1, group_dim, dev.inf_ptr(), dev.lr_ptr(),
                   stream);
  cuda::advance_steps(state_steps, dev.inf_ptr(), stream);
  st.finish();
}

}  // namespace fusedreg

TORCH_LIBRARY_IMPL(fusedreg, CUDA, m) { m.impl("adam_", &fusedreg::adam_cuda); }
