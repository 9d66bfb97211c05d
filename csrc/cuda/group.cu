// Group lasso on CUDA, after the op's multi-tensor kernel and before the step counters advance: one block per
// group (a row or a column of one param), block reductions in double; formulas from fusedreg_math.h.
#include <cub/block/block_reduce.cuh>

#include <type_traits>

#include "multi_tensor.cuh"

namespace fusedreg {
namespace cuda {
namespace {

using Reduce = cub::BlockReduce<double, kThreads>;

struct NanMax {
  __device__ double operator()(double a, double b) const { return b > a || b != b ? b : a; }
};

// Blocks stride over the groups, so any number of groups fits one launch. Args: the op's (SgdArgs: the scalar
// step lr; AdamArgs, AdagradArgs: the metric prox, with the step-dependent factors from the step counter;
// FtrlArgs: the metric prox in q from the new accumulator, step 1).
template <typename T, typename O, typename Args>
__global__ void __launch_bounds__(kThreads)
    group_kernel(T* p, const O* x, const float* step_ptr, const float* found_inf, const double* lr_ptr, GroupShape sh,
                 Args args, double group_l1) {
  if (skipped(found_inf)) return;
  constexpr bool metric = !std::is_same_v<Args, SgdArgs>;
  constexpr bool ftrl = std::is_same_v<Args, FtrlArgs>;
  const int64_t n = sh.A * sh.K;
  args = with_lr(args, lr_ptr);
  double step = args.lr;
  O bdiv = O(1), eps = O(0);
  FtrlScalars<O> fs{};
  if constexpr (ftrl) {
    if (args.lr == 0) return;  // no step, as ftrl_kernel
    step = 1.0;                // FTRL's penalties are not scaled by lr (q holds it)
    fs = make_ftrl<O>(args);
  } else if constexpr (metric) {
    const double t = static_cast<double>(*step_ptr + 1.0f);  // the counter advances after this kernel
    if constexpr (std::is_same_v<Args, AdamArgs>) {
      bdiv = static_cast<O>(bc2_sqrt(args.beta2, t));
    } else {
      step = adagrad_clr(args.lr, args.lr_decay, t);
    }
    eps = static_cast<O>(args.eps);
  }
  if (step * group_l1 == 0) return;
  const double l2 = ftrl ? 0.0 : args.pen.l2;  // FTRL's l2 is in q
  const double c = group_c(step, group_l1, static_cast<double>(n), l2, metric);
  const O c_o = static_cast<O>(c), c2 = static_cast<O>(step * l2);
  const bool has_l2 = l2 != 0;
  auto val = [&](int64_t i) { return static_cast<double>(static_cast<O>(p[i])); };
  auto denom = [&](int64_t i) { return ftrl ? ftrl_denom(x[i], fs) : adam_denom(x[i], bdiv, eps); };
  auto a_of = [&](int64_t i) { return group_a(c_o, denom(i), c2, has_l2); };
  __shared__ typename Reduce::TempStorage tmp;
  __shared__ double shared[2];
  for (int64_t g = blockIdx.x; g < sh.G; g += gridDim.x) {
    // Element m of group g (m in [0, A*K)); rows (A == 1: contiguous) and K == 1 (columns of a 2-D param)
    // without the 64-bit division and modulo.
    auto at = [&](int64_t m) {
      return sh.A == 1 ? g * sh.K + m : sh.K == 1 ? m * sh.G + g : (m / sh.K * sh.G + g) * sh.K + m % sh.K;
    };
    if (!metric) {
      double ss = 0;
      for (int64_t m = threadIdx.x; m < n; m += blockDim.x) ss += val(at(m)) * val(at(m));
      const double total = Reduce(tmp).Sum(ss);
      if (threadIdx.x == 0) shared[0] = total;
      __syncthreads();
      const O f = static_cast<O>(group_factor(shared[0], c));
      for (int64_t m = threadIdx.x; m < n; m += blockDim.x) p[at(m)] = static_cast<T>(static_cast<O>(p[at(m)]) * f);
      __syncthreads();  // shared[] and tmp are reused by the next group
      continue;
    }
    MetricSums part;
    for (int64_t m = threadIdx.x; m < n; m += blockDim.x) part.add(val(at(m)), a_of(at(m)));
    MetricSums sums;
    sums.q = Reduce(tmp).Sum(part.q);
    __syncthreads();
    sums.nn = Reduce(tmp).Sum(part.nn);
    __syncthreads();
    sums.amax = Reduce(tmp).Reduce(part.amax, NanMax());
    if (threadIdx.x == 0) shared[0] = metric_start(sums);
    __syncthreads();
    double r = shared[0];
    // Every thread runs the driver on the block's sums (the same doubles in every thread), so all take the same
    // steps and stop together.
    double s = 0, t = 0;
    newton_solve(1, &r, &s, &t, [&] {
      __syncthreads();  // every thread has read shared[] (and finished with tmp) before they are written again
      double ps = 0, pt = 0;
      for (int64_t m = threadIdx.x; m < n; m += blockDim.x) newton_terms(val(at(m)), a_of(at(m)), r, ps, pt);
      const double s_sum = Reduce(tmp).Sum(ps);
      __syncthreads();
      const double t_sum = Reduce(tmp).Sum(pt);
      if (threadIdx.x == 0) {
        shared[0] = s_sum;
        shared[1] = t_sum;
      }
      __syncthreads();
      s = shared[0];
      t = shared[1];
    });
    for (int64_t m = threadIdx.x; m < n; m += blockDim.x) {
      const int64_t i = at(m);
      p[i] = static_cast<T>(static_cast<O>(p[i]) * static_cast<O>(metric_factor(r, a_of(i))));
    }
    __syncthreads();  // shared[] and tmp are reused by the next group
  }
}

}  // namespace

template <typename Args>
void group_prox(const Staged& st, int x_list, at::TensorList steps, const Args& args, double group_l1,
                int64_t group_dim, const float* found_inf, const double* lr, cudaStream_t stream) {
  for (size_t i = 0; i < st.n; ++i) {
    const at::Tensor& p = st.lists[0][i];
    // A device lr is not known here: launch, and the kernel returns at once when lr * group_l1 == 0.
    if (!has_groups(p, lr != nullptr ? 1.0 : args.lr, group_l1)) continue;
    const GroupShape sh = group_shape(p, group_dim);
    const auto blocks = static_cast<unsigned>(std::min<int64_t>(sh.G, INT32_MAX));
    const float* step = steps.empty() ? nullptr : steps[i].const_data_ptr<float>();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, st.dtype, "fusedreg_group_cuda", [&] {
      using O = at::opmath_type<scalar_t>;
      const O* x = x_list < 0 ? nullptr : st.lists[x_list][i].const_data_ptr<O>();
      group_kernel<scalar_t, O, Args><<<blocks, kThreads, 0, stream>>>(p.data_ptr<scalar_t>(), x, step, found_inf, lr,
                                                                        sh, args, group_l1);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
}

template void group_prox<SgdArgs>(const Staged&, int, at::TensorList, const SgdArgs&, double, int64_t, const float*,
                                  const double*, cudaStream_t);
template void group_prox<AdamArgs>(const Staged&, int, at::TensorList, const AdamArgs&, double, int64_t, const float*,
                                   const double*, cudaStream_t);
template void group_prox<AdagradArgs>(const Staged&, int, at::TensorList, const AdagradArgs&, double, int64_t,
                                      const float*, const double*, cudaStream_t);
template void group_prox<FtrlArgs>(const Staged&, int, at::TensorList, const FtrlArgs&, double, int64_t,
                                   const float*, const double*, cudaStream_t);

}  // namespace cuda
}  // namespace fusedreg
