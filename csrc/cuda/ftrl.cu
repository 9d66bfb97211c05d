// fusedreg::ftrl_ on CUDA: ftrl_update (fusedreg_math.h) in multi-tensor launches, over the rows present with
// sparse grads, then the group prox in FTRL's metric q (group.cu).
#include <torch/library.h>

#include "multi_tensor.cuh"

namespace fusedreg {
namespace cuda {
namespace {

template <typename T, typename O, bool Rows>
__global__ void __launch_bounds__(kThreads)
    ftrl_kernel(TensorListMeta<4, Rows> meta, FtrlArgs args, const O* grad_scale, const float* found_inf,
                const double* lr) {
  if (skipped(found_inf)) return;
  args = with_lr(args, lr);
  if (args.lr == 0) return;  // no step (FTRL divides by lr), as the reference
  const Chunk<T, O, 4, Rows> c(meta);
  const FtrlScalars<O> sc = make_ftrl<O>(args);
  const bool has_scale = grad_scale != nullptr;
  const O scale = has_scale ? *grad_scale : O(1);
  for_chunk<T, O, 2>(c, meta, [&](O& p, O g, O* s) { ftrl_update(p, g, s[0], s[1], sc, has_scale, scale); });
}

}  // namespace
}  // namespace cuda

void ftrl_cuda(FUSEDREG_FTRL_PARAMS) {
  TORCH_CHECK(!l1_decoupled,
              "fusedreg::ftrl_: l1_decoupled is not defined for FTRL, whose l1 is its closed form's");
  Staged st = stage("ftrl_", c10::DeviceType::CUDA, params, grads,
                    {{"accumulators", accumulators, true}, {"linears", linears, true}}, {}, false, grad_scale,
                    found_inf, lr_tensor, group_l1, group_dim, rows_of(rows));
  if (st.n == 0) return;
  const c10::cuda::CUDAGuard guard(params[0].device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const auto dev = cuda::device_args(grad_scale, found_inf, lr_tensor, st.dtype);
  const FtrlArgs args = ftrl_args(lr, lr_power, beta, l2_shrinkage, maximize, penalty_args(FUSEDREG_PENALTY_NAMES));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, st.dtype, "fusedreg_ftrl_cuda", [&] {
    using O = at::opmath_type<scalar_t>;
    cuda::apply_staged<4>(st, {}, [&](const auto& meta, int blocks) {
      constexpr bool rows = std::decay_t<decltype(meta)>::kRows;
      cuda::ftrl_kernel<scalar_t, O, rows><<<blocks, cuda::kThreads, 0, stream>>>(meta, args, dev.scale_ptr<O>(),
                                                                                   dev.inf_ptr(), dev.lr_ptr());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  // x_list 2: the accumulators, as the update has written them (n')
  cuda::group_prox(st, 2, {}, args, group_l1, group_dim, dev.inf_ptr(), dev.lr_ptr(), stream);
  st.finish();
}

}  // namespace fusedreg

TORCH_LIBRARY_IMPL(fusedreg, CUDA, m) { m.impl("ftrl_", &fusedreg::ftrl_cuda); }
