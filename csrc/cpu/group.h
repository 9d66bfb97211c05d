// The group-lasso prox on the CPU (formulas in fusedreg_math.h): the jobs an op's call needs (add_group_job), the
// prox of one row right after the row's update (group_prox_row) and of every column after the whole update
// (group_prox_columns). cpu/loop.h runs them with the op's element loop.
#pragma once

#include "vec_prims.h"  // first: declares the Vectorized primitives before fusedreg_math.h

#include <ATen/Parallel.h>
#include <c10/util/bit_cast.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "../ops.h"

namespace fusedreg {
// Internal linkage, as when every kernel was one file: each op's file gets its own copy, inlined as before.
namespace {

// The per-element denominators come from x (Adam's v_hat, Adagrad's sum) as adam_denom(x, bdiv, eps), with
// bdiv = sqrt(bc2) for Adam and 1 for Adagrad (metric_a); x == nullptr is SGD (no metric).
template <typename O>
struct GroupJob {
  size_t slot;
  GroupShape sh;
  double c;   // group_c(...)
  O c_o, c2;  // opmath(c), opmath(step*l2) for the metric
  bool has_l2;
  const O* x;
  O bdiv, eps;
};

// The group job of slot i, if its param gets the group prox; x == nullptr for SGD.
template <typename O>
void add_group_job(std::vector<GroupJob<O>>& jobs, const Staged& st, size_t i, double step, double group_l1,
                   int64_t group_dim, double l2, const O* x, O bdiv, O eps) {
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

// a_i of the metric prox for elements [i0, i0 + n) of the param, into a (double or opmath). The branch on l2 is
// outside the loop so that the loop (a sqrt and two divisions an element) vectorizes.
template <typename O, typename D>
inline void metric_a(const GroupJob<O>& job, int64_t i0, int64_t n, D* __restrict a) {
  const O* __restrict x = job.x + i0;
  const O c = job.c_o, c2 = job.c2, bdiv = job.bdiv, eps = job.eps;
  if (job.has_l2)
    for (int64_t k = 0; k < n; ++k) a[k] = static_cast<D>(group_a(c, adam_denom(x[k], bdiv, eps), c2, true));
  else
    for (int64_t k = 0; k < n; ++k) a[k] = static_cast<D>(group_a(c, adam_denom(x[k], bdiv, eps), c2, false));
}

// The group prox of row g (group_dim 0: K contiguous elements), right after the row's update, while it is in cache.
template <typename T, typename O>
void group_prox_row(T* p, const GroupJob<O>& job, int64_t g) {
  const int64_t n = job.sh.K;
  p += g * n;
  // v and a_i once per element, in double: Newton's passes read this copy.
  thread_local std::vector<double> vbuf, abuf;
  vbuf.resize(n);
  double* __restrict v = vbuf.data();
  for (int64_t k = 0; k < n; ++k) v[k] = static_cast<double>(static_cast<O>(p[k]));
  double s = 0, t = 0;
  if (job.x == nullptr) {
    row_sums(n, s, t, [&](int64_t k, auto& sk, auto&) {
      using V = std::decay_t<decltype(sk)>;
      const V vk = ld<V>(v + k);
      sk += vk * vk;
    });
    const O f = static_cast<O>(group_factor(s, job.c));
    for (int64_t k = 0; k < n; ++k) p[k] = static_cast<T>(static_cast<O>(p[k]) * f);
    return;
  }
  abuf.resize(n);
  double* __restrict a = abuf.data();
  metric_a(job, g * n, n, a);
  // q = sum (v/a)^2, ||v||^2 and max a (NaN-propagating, as MetricSums): vectors, then the tail into `first`,
  // then the vectors' lanes merged in.
  MetricSums first;
  VD qv(0.0), nv(0.0), mv(0.0);
  int64_t k = 0;
  for (; k + VD::size() <= n; k += VD::size()) {
    const VD ak = VD::loadu(a + k);
    metric_terms(VD::loadu(v + k), ak, qv, nv);
    mv = at::vec::maximum(mv, ak);
  }
  for (; k < n; ++k) first.add(v[k], a[k]);
  double mb[VD::size()];
  mv.store(mb);
  MetricSums vec;
  vec.q = hsum(qv);
  vec.nn = hsum(nv);
  for (int l = 0; l < VD::size(); ++l) vec.amax = mb[l] > vec.amax || mb[l] != mb[l] ? mb[l] : vec.amax;
  first.merge(vec);
  double r = metric_start(first);
  newton_solve(1, &r, &s, &t, [&] {
    const double rk = r;
    row_sums(n, s, t, [&](int64_t k, auto& sk, auto& tk) {
      using V = std::decay_t<decltype(sk)>;
      newton_terms(ld<V>(v + k), ld<V>(a + k), V(rk), sk, tk);
    });
  });
  if (r < 0) {
    for (int64_t k = 0; k < n; ++k) p[k] = static_cast<T>(static_cast<O>(p[k]) * O(0));
    return;
  }
  for (int64_t k = 0; k < n; ++k) p[k] = static_cast<T>(static_cast<O>(p[k]) * static_cast<O>(r / (r + a[k])));
}

// f(g, j) for the elements of one row of a (A, G, K) param: j the offset in the row, g its column (j / K). The
// K == 1 loop (every 2-D param) is a plain loop over g, so that it vectorizes.
template <typename F>
inline void for_row(int64_t G, int64_t K, const F& f) {
  if (K == 1) {
    for (int64_t g = 0; g < G; ++g) f(g, g);
  } else {
    for (int64_t g = 0, j = 0; g < G; ++g)
      for (int64_t k = 0; k < K; ++k, ++j) f(g, j);
  }
}

// The group prox of every column (group_dim 1) of one param, after its whole update, in row-major sweeps: a
// column is strided, so each sweep reads whole rows and keeps per-column sums s, t (and max m), per block of rows
// (fixed blocks, combined in order: the result does not depend on the thread count). grain: the element loop's
// elements per parallel task.
template <typename T, typename O>
void group_prox_columns(T* p, const GroupJob<O>& job, int64_t grain) {
  const int64_t A = job.sh.A, G = job.sh.G, K = job.sh.K, row = G * K;
  const int64_t blocks = std::min<int64_t>(A, 32);
  std::vector<double> part(blocks * 3 * G), s(G), t(G), m(G);
  // Per block, f(a, s, t, m) for each of its rows a, with the block's G-long s, t, m; then s, t summed and m maxed.
  auto sweep = [&](const auto& f) {
    std::fill(part.begin(), part.end(), 0.0);
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b) {
        double* bs = part.data() + b * 3 * G;
        for (int64_t a = b * A / blocks; a < (b + 1) * A / blocks; ++a) f(a, bs, bs + G, bs + 2 * G);
      }
    });
    std::fill(s.begin(), s.end(), 0.0);
    std::fill(t.begin(), t.end(), 0.0);
    std::fill(m.begin(), m.end(), 0.0);
    for (int64_t b = 0; b < blocks; ++b)
      for (int64_t g = 0; g < G; ++g) {
        const double* bs = part.data() + b * 3 * G;
        s[g] += bs[g];
        t[g] += bs[G + g];
        m[g] = bs[2 * G + g] > m[g] ? bs[2 * G + g] : m[g];
      }
  };
  // p[i] = p[i] * factor(g, i) over every row, in parallel.
  auto scale = [&](const auto& factor) {
    at::parallel_for(0, A, std::max<int64_t>(1, grain / row), [&](int64_t a0, int64_t a1) {
      for (int64_t a = a0; a < a1; ++a) {
        T* __restrict pr = p + a * row;
        for_row(G, K, [&](int64_t g, int64_t j) {
          pr[j] = static_cast<T>(static_cast<O>(pr[j]) * factor(g, a * row + j));
        });
      }
    });
  };
  auto val = [&](int64_t i) { return static_cast<double>(static_cast<O>(p[i])); };
  if (job.x == nullptr) {
    sweep([&](int64_t a, double* __restrict bs, double*, double*) {
      for_row(G, K, [&](int64_t g, int64_t j) { bs[g] += val(a * row + j) * val(a * row + j); });
    });
    std::vector<O> f(G);
    for (int64_t g = 0; g < G; ++g) f[g] = static_cast<O>(group_factor(s[g], job.c));
    scale([&](int64_t g, int64_t) { return f[g]; });
    return;
  }
  // a_i once, kept in opmath (it is rounded there): one transient the size of the param. max a here does not
  // propagate NaN: a NaN a_i makes q NaN, and metric_start zeroes such a column whatever max a is.
  std::vector<O> abuf(A * row);
  O* __restrict av = abuf.data();
  sweep([&](int64_t a, double* __restrict bq, double* __restrict bn, double* __restrict bm) {
    metric_a(job, a * row, row, av + a * row);
    for_row(G, K, [&](int64_t g, int64_t j) {
      const double ai = static_cast<double>(av[a * row + j]);
      metric_terms(val(a * row + j), ai, bq[g], bn[g]);
      bm[g] = ai > bm[g] ? ai : bm[g];
    });
  });
  std::vector<double> r(G), rk(G);
  for (int64_t g = 0; g < G; ++g) {
    MetricSums first;
    first.q = s[g];
    first.nn = t[g];
    first.amax = m[g];
    r[g] = metric_start(first);
  }
  // A zeroed column (r < 0) is swept too, at r = 0, to keep the sweep branch-free; its terms go unused.
  newton_solve(G, r.data(), s.data(), t.data(), [&] {
    for (int64_t g = 0; g < G; ++g) rk[g] = r[g] < 0 ? 0.0 : r[g];
    const double* __restrict rp = rk.data();
    sweep([&](int64_t a, double* __restrict bs, double* __restrict bt, double*) {
      for_row(G, K, [&](int64_t g, int64_t j) {
        newton_terms(val(a * row + j), static_cast<double>(av[a * row + j]), rp[g], bs[g], bt[g]);
      });
    });
  });
  // metric_factor without a branch (a division under one is not vectorized): divide at r = 0 in a zeroed
  // column, then clear the bits of its factor.
  std::vector<uint64_t> keep(G);
  for (int64_t g = 0; g < G; ++g) {
    rk[g] = r[g] < 0 ? 0.0 : r[g];
    keep[g] = r[g] < 0 ? 0 : ~uint64_t(0);
  }
  const double* __restrict rp = rk.data();
  const uint64_t* __restrict kp = keep.data();
  scale([&](int64_t g, int64_t i) {
    const double f = rp[g] / (rp[g] + static_cast<double>(av[i]));
    return static_cast<O>(c10::bit_cast<double>(c10::bit_cast<uint64_t>(f) & kp[g]));
  });
}

}  // namespace
}  // namespace fusedreg
