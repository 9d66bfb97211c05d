// Group lasso on CUDA, after the op's multi-tensor kernel and before the step counters advance; formulas from
// fusedreg_math.h, group sums in double. Two kernels:
// - columns of a 2-D param (K == 1, A > 1): a block per 32 consecutive columns, its threads 16 rows x 32 columns
//   (4 x 32 for at most 16 rows), so a warp reads 32 consecutive columns of one row (coalesced); each column's
//   partial sums are added through shared memory in a fixed order (deterministic), and Newton runs on the 32
//   columns while any goes on;
// - every other group (rows, conv weights' K > 1): a block per group, its size from the group's (32, 128 or 512
//   threads: a 10-element group does not take 512), block reductions in double.
#include <cub/block/block_reduce.cuh>

#include <type_traits>

#include "multi_tensor.cuh"

namespace fusedreg {
namespace cuda {
namespace {

struct NanMax {
  __device__ double operator()(double a, double b) const { return b > a || b != b ? b : a; }
};

// The step's scalars of the prox (the same in every block) and the a_i of an element. Args: the op's (SgdArgs,
// LionArgs: the scalar step lr; AdamArgs, AdagradArgs: the metric prox, with the step-dependent factors from the step
// counter, or with decoupled l1 SGD's closed form with their scalar step; FtrlArgs: the metric prox in q from the
// new accumulator, step 1). live: false when the step changes nothing (found_inf, lr * group_l1 == 0).
template <typename O, typename Args>
struct GroupStep {
  static constexpr bool metric_op = !std::is_same_v<Args, SgdArgs> && !std::is_same_v<Args, LionArgs>;
  static constexpr bool ftrl = std::is_same_v<Args, FtrlArgs>;
  bool metric = false;
  double c = 0;
  O c_o = O(0), c2 = O(0), bdiv = O(1), eps = O(0);
  FtrlScalars<O> fs{};
  bool has_l2 = false, live = false;

  __device__ GroupStep(Args args, const float* step_ptr, const float* found_inf, const double* lr_ptr, int64_t n,
                       double group_l1) {
    if (skipped(found_inf)) return;
    args = with_lr(args, lr_ptr);
    double step = args.lr;
    if constexpr (ftrl) {
      if (args.lr == 0) return;  // no step, as ftrl_kernel
      step = 1.0;                // FTRL's penalties are not scaled by lr (q holds it)
      fs = make_ftrl<O>(args);
    } else if constexpr (metric_op) {
      const double t = static_cast<double>(*step_ptr + 1.0f);  // the counter advances after this kernel
      if constexpr (std::is_same_v<Args, AdamArgs>) {
        bdiv = static_cast<O>(bc2_sqrt(args.beta2, t));
      } else {
        step = adagrad_clr(args.lr, args.lr_decay, t);
      }
      eps = static_cast<O>(args.eps);
    }
    if (step * group_l1 == 0) return;
    metric = ftrl || (metric_op && group_metric(args.pen));
    const double l2 = ftrl ? 0.0 : metric_op ? group_l2(args.pen) : args.pen.l2;  // FTRL's l2 is in q
    c = group_c(step, group_l1, static_cast<double>(n), l2, metric);
    c_o = static_cast<O>(c);
    c2 = static_cast<O>(step * l2);
    has_l2 = l2 != 0;
    live = true;
  }

  __device__ double a(O x) const {
    return group_a(c_o, ftrl ? ftrl_denom(x, fs) : adam_denom(x, bdiv, eps), c2, has_l2);
  }
};

// One block of kBlock threads per group; blocks stride over the groups, so any number of groups fits one launch.
template <int kBlock, typename T, typename O, typename Args>
__global__ void __launch_bounds__(kBlock)
    group_kernel(T* p, const O* x, const float* step_ptr, const float* found_inf, const double* lr_ptr, GroupShape sh,
                 Args args, double group_l1) {
  using Reduce = cub::BlockReduce<double, kBlock>;
  const int64_t n = sh.A * sh.K;
  const GroupStep<O, Args> gs(args, step_ptr, found_inf, lr_ptr, n, group_l1);
  if (!gs.live) return;
  const double c = gs.c;
  auto val = [&](int64_t i) { return static_cast<double>(static_cast<O>(p[i])); };
  auto a_of = [&](int64_t i) { return gs.a(x[i]); };
  __shared__ typename Reduce::TempStorage tmp;
  __shared__ double shared[2];
  for (int64_t g = blockIdx.x; g < sh.G; g += gridDim.x) {
    // Element m of group g (m in [0, A*K)); rows (A == 1: contiguous) and K == 1 (columns of a 2-D param)
    // without the 64-bit division and modulo.
    auto at = [&](int64_t m) {
      return sh.A == 1 ? g * sh.K + m : sh.K == 1 ? m * sh.G + g : (m / sh.K * sh.G + g) * sh.K + m % sh.K;
    };
    if (!gs.metric) {
      double ss = 0;
      for (int64_t m = threadIdx.x; m < n; m += kBlock) ss += val(at(m)) * val(at(m));
      const double total = Reduce(tmp).Sum(ss);
      if (threadIdx.x == 0) shared[0] = total;
      __syncthreads();
      const O f = static_cast<O>(group_factor(shared[0], c));
      for (int64_t m = threadIdx.x; m < n; m += kBlock) p[at(m)] = static_cast<T>(static_cast<O>(p[at(m)]) * f);
      __syncthreads();  // shared[] and tmp are reused by the next group
      continue;
    }
    MetricSums part;
    for (int64_t m = threadIdx.x; m < n; m += kBlock) part.add(val(at(m)), a_of(at(m)));
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
      for (int64_t m = threadIdx.x; m < n; m += kBlock) newton_terms(val(at(m)), a_of(at(m)), r, ps, pt);
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
    for (int64_t m = threadIdx.x; m < n; m += kBlock) {
      const int64_t i = at(m);
      p[i] = static_cast<T>(static_cast<O>(p[i]) * static_cast<O>(metric_factor(r, a_of(i))));
    }
    __syncthreads();  // shared[] and tmp are reused by the next group
  }
}

// The columns of a 2-D param (A rows of G columns, K == 1): threadIdx.x = ty * kCols + tx handles column
// j0 + tx at rows ty, ty + kColRows, ...; kColRows 16 (512 threads), or 4 for at most 16 rows.
constexpr int kCols = 32;

// Column tx's sum of the block's partials red[0..kColRows)[tx], in row-lane order (deterministic).
template <int kColRows>
__device__ inline double column_sum(double (*red)[kCols + 1], int tx) {
  double s = 0;
  for (int k = 0; k < kColRows; ++k) s += red[k][tx];
  return s;
}

template <int kColRows, typename T, typename O, typename Args>
__global__ void __launch_bounds__(kColRows * kCols)
    group_cols_kernel(T* p, const O* x, const float* step_ptr, const float* found_inf, const double* lr_ptr,
                      GroupShape sh, Args args, double group_l1) {
  const int64_t rows = sh.A, cols = sh.G;
  const GroupStep<O, Args> gs(args, step_ptr, found_inf, lr_ptr, rows, group_l1);
  if (!gs.live) return;
  const int tx = threadIdx.x % kCols, ty = threadIdx.x / kCols;
  // Partials of every thread (+1: no bank conflicts on the column sums), and each column's factor or root.
  __shared__ double red0[kColRows][kCols + 1], red1[kColRows][kCols + 1], red2[kColRows][kCols + 1];
  __shared__ double col[kCols];
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kCols;
  for (int64_t j0 = static_cast<int64_t>(blockIdx.x) * kCols; j0 < cols; j0 += stride) {
    const int64_t j = j0 + tx;
    const bool valid = j < cols;
    if (!gs.metric) {
      double ss = 0;
      if (valid)
        for (int64_t m = ty; m < rows; m += kColRows) {
          const double v = static_cast<double>(static_cast<O>(p[m * cols + j]));
          ss += v * v;
        }
      red0[ty][tx] = ss;
      __syncthreads();
      if (ty == 0) col[tx] = group_factor(column_sum<kColRows>(red0, tx), gs.c);
      __syncthreads();
      const O f = static_cast<O>(col[tx]);
      if (valid)
        for (int64_t m = ty; m < rows; m += kColRows) {
          const int64_t i = m * cols + j;
          p[i] = static_cast<T>(static_cast<O>(p[i]) * f);
        }
      __syncthreads();  // red0 and col are reused by the next columns
      continue;
    }
    MetricSums part;
    if (valid)
      for (int64_t m = ty; m < rows; m += kColRows) {
        const int64_t i = m * cols + j;
        part.add(static_cast<double>(static_cast<O>(p[i])), gs.a(x[i]));
      }
    red0[ty][tx] = part.q;
    red1[ty][tx] = part.nn;
    red2[ty][tx] = part.amax;
    __syncthreads();
    if (ty == 0) {
      MetricSums sums;
      for (int k = 0; k < kColRows; ++k) {
        MetricSums o;
        o.q = red0[k][tx];
        o.nn = red1[k][tx];
        o.amax = red2[k][tx];
        sums.merge(o);
      }
      col[tx] = valid ? metric_start(sums) : -1.0;
    }
    // newton_solve's iteration on the block's columns (col[] holds their r): every kept column steps until no
    // column's step is above the tolerance; the any-reduction keeps every thread in the same loop.
    int active = __syncthreads_or(ty == 0 && col[tx] >= 0);
    for (int it = 0; it < kMetricMaxIter && active; ++it) {
      const double r = col[tx];
      double ps = 0, pt = 0;
      if (valid && r >= 0)
        for (int64_t m = ty; m < rows; m += kColRows) {
          const int64_t i = m * cols + j;
          newton_terms(static_cast<double>(static_cast<O>(p[i])), gs.a(x[i]), r, ps, pt);
        }
      red0[ty][tx] = ps;
      red1[ty][tx] = pt;
      __syncthreads();
      bool more = false;
      if (ty == 0 && r >= 0) {
        double rr = r;
        more = newton_step(column_sum<kColRows>(red0, tx), column_sum<kColRows>(red1, tx), rr);
        col[tx] = rr;
      }
      active = __syncthreads_or(more);  // also orders col[] and red*[] between the iterations
    }
    const double r = col[tx];
    if (valid)
      for (int64_t m = ty; m < rows; m += kColRows) {
        const int64_t i = m * cols + j;
        p[i] = static_cast<T>(static_cast<O>(p[i]) * static_cast<O>(metric_factor(r, gs.a(x[i]))));
      }
    __syncthreads();  // red*[] and col[] are reused by the next columns
  }
}

template <int kColRows, typename T, typename O, typename Args>
void launch_cols(T* p, const O* x, const float* step, const float* found_inf, const double* lr, const GroupShape& sh,
                 const Args& args, double group_l1, cudaStream_t stream) {
  const auto blocks = static_cast<unsigned>(std::min<int64_t>((sh.G + kCols - 1) / kCols, INT32_MAX));
  group_cols_kernel<kColRows, T, O, Args><<<blocks, kColRows * kCols, 0, stream>>>(p, x, step, found_inf, lr, sh, args,
                                                                                  group_l1);
}

template <int kBlock, typename T, typename O, typename Args>
void launch_groups(T* p, const O* x, const float* step, const float* found_inf, const double* lr, const GroupShape& sh,
                   const Args& args, double group_l1, cudaStream_t stream) {
  const auto blocks = static_cast<unsigned>(std::min<int64_t>(sh.G, INT32_MAX));
  group_kernel<kBlock, T, O, Args><<<blocks, kBlock, 0, stream>>>(p, x, step, found_inf, lr, sh, args, group_l1);
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
    const int64_t n = sh.A * sh.K;
    const float* step = steps.empty() ? nullptr : steps[i].const_data_ptr<float>();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, st.dtype, "fusedreg_group_cuda", [&] {
      using O = at::opmath_type<scalar_t>;
      scalar_t* pp = p.data_ptr<scalar_t>();
      const O* x = x_list < 0 ? nullptr : st.lists[x_list][i].const_data_ptr<O>();
      if (sh.K == 1 && sh.A > 16) {
        launch_cols<kThreads / kCols>(pp, x, step, found_inf, lr, sh, args, group_l1, stream);
      } else if (sh.K == 1 && sh.A > 1) {  // at most 4 rows a thread
        launch_cols<4>(pp, x, step, found_inf, lr, sh, args, group_l1, stream);
      } else if (n <= 4 * 32) {  // at most 4 elements a thread
        launch_groups<32>(pp, x, step, found_inf, lr, sh, args, group_l1, stream);
      } else if (n <= 4 * 128) {
        launch_groups<128>(pp, x, step, found_inf, lr, sh, args, group_l1, stream);
      } else {
        launch_groups<kThreads>(pp, x, step, found_inf, lr, sh, args, group_l1, stream);
      }
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
template void group_prox<LionArgs>(const Staged&, int, at::TensorList, const LionArgs&, double, int64_t,
                                   const float*, const double*, cudaStream_t);

}  // namespace cuda
}  // namespace fusedreg
