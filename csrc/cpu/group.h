// The group-lasso prox on the CPU (formulas in fusedreg_math.h), which cpu/loop.h runs with an op's element loop:
// the jobs an op's call needs (add_group_job) and the group sums' helpers, here; the root of the metric prox
// (group_solve.h); the prox of one row right after the row's update (group_rows.h: RowSums fed by the update, then
// finish_row; group_prox_row for bf16/fp16; closed_form_row); and of every column of a param right after that
// param's update (group_columns.h: ColumnSums fed by the update, then column_roots, prepare_shrink and shrink_rows;
// group_prox_columns for bf16/fp16).
#pragma once

#include "vec_prims.h"  // first: declares the Vectorized primitives before fusedreg_math.h

#include <ATen/Parallel.h>
#include <c10/util/bit_cast.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <type_traits>
#include <vector>

#include "../ops.h"

namespace fusedreg {
// Internal linkage, as when every kernel was one file: each op's file gets its own copy, inlined as before.
namespace {

// The per-element denominators come from x (Adam's v_hat, Adagrad's sum) as adam_denom(x, bdiv, eps), with
// bdiv = sqrt(bc2) for Adam and 1 for Adagrad (metric_a), or (ftrl set) from Ftrl's new accumulator n' = x as
// ftrl_denom(x, *ftrl), its q; x == nullptr is no metric (SGD, or Adam/Adagrad with decoupled l1).
template <typename O>
struct GroupJob {
  size_t slot;
  GroupShape sh;
  double c;   // group_c(...)
  O c_o, c2;  // opmath(c), opmath(step*l2) for the metric
  bool has_l2;
  const O* x;
  O bdiv, eps;
  const FtrlScalars<O>* ftrl = nullptr;  // the op's scalars, alive for the call
};

// The denominator of element x (without the l2 term).
template <typename O, typename V>
FR_INLINE V denom_of(const GroupJob<O>& job, V x) {
  return job.ftrl != nullptr ? ftrl_denom(x, *job.ftrl) : adam_denom(x, V(job.bdiv), V(job.eps));
}

// The group job of slot i, if its param gets the group prox; x == nullptr without a metric.
template <typename O>
void add_group_job(std::vector<GroupJob<O>>& jobs, const Staged& st, size_t i, double step, double group_l1,
                   int64_t group_dim, double l2, const O* x, O bdiv, O eps, const FtrlScalars<O>* ftrl = nullptr) {
  const at::Tensor& p = st.lists[0][i];
  if (!has_groups(p, step, group_l1)) return;
  GroupJob<O> job;
  job.slot = i;
  job.sh = group_shape(p, group_dim);
  job.x = x;
  job.c = group_c(step, group_l1, static_cast<double>(job.sh.A * job.sh.K), l2, x != nullptr);
  job.c_o = static_cast<O>(job.c);
  job.c2 = static_cast<O>(step * l2);
  job.has_l2 = l2 != 0;
  job.bdiv = bdiv;
  job.eps = eps;
  job.ftrl = ftrl;
  jobs.push_back(job);
}

// Group sums in vectors of doubles: terms(k, s, t) adds element k.. to s and t, called with Vec<double>
// accumulators on whole vectors (loading with ld<V>) and with doubles on the tail.
using VD = Vec<double>;

template <typename V>
FR_INLINE V ld(const double* x) {
  if constexpr (std::is_same_v<V, double>) {
    return *x;
  } else {
    return V::loadu(x);
  }
}

FR_INLINE double hsum(const VD& x) {
  double b[VD::size()];
  x.store(b);
  double s = 0;
  for (int l = 0; l < VD::size(); ++l) s += b[l];
  return s;
}

template <typename F>
inline void row_sums(int64_t n, double& s, double& t, const F& terms) {
  VD sv(0.0), tv(0.0);
  int64_t k = 0;
  for (; k + VD::size() <= n; k += VD::size()) terms(k, sv, tv);
  s = hsum(sv);
  t = hsum(tv);
  for (; k < n; ++k) terms(k, s, t);
}

}  // namespace
}  // namespace fusedreg
