// The group-lasso prox on the CPU (formulas in fusedreg_math.h): the jobs an op's call needs (add_group_job), the
// prox of one row right after the row's update (group_prox_row) and of every column after the whole update
// (group_prox_columns). cpu/loop.h runs them with the op's element loop.
#pragma once

#include "vec_prims.h"  // first: declares the Vectorized primitives before fusedreg_math.h

#include <ATen/Parallel.h>
#include <c10/util/bit_cast.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
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

// ---------------------------------------------------------------------------------------------------------------
// The metric prox in one pass: the root r from the group's moments sum v^2 a^k (k <= 3), without Newton's passes,
// when every a of the group is small next to r; the exact passes (as the reference runs them) otherwise.

// Below this max a / r the series in a/r of sum v^2/(r + a)^2 leaves out at most 5 (a/r)^4 of it: r is off by
// ~2.5e-12 (relative) and the factor r/(r + a) by ~1e-3 times that, far below opmath's rounding.
constexpr double kSeriesRatio = 1e-3;
// The zero test from sum (v*D)^2 / c^2 (D = c/a's denominator: no division an element) is within 2^-23 (relative)
// of the reference's sum (v/a)^2 with a = opmath(c/D); nearer to 1 than this, the exact test decides.
constexpr double kZeroBand = 1e-6;
// moment_root's answer when the exact passes must decide.
constexpr double kExact = -2;

struct Moments {
  double q = 0, nn = 0, m1 = 0, m2 = 0, m3 = 0, amax = 0, amin = INFINITY;
};

// One element's moment terms: (v*D)^2 to q, v^2 to nn, v^2 a^k to mk. V: double or a vector of doubles.
template <typename V>
FR_INLINE void moment_terms(V v, V d, V a, V& q, V& nn, V& m1, V& m2, V& m3) {
  const V vd = v * d;
  q += vd * vd;
  const V w = v * v;
  nn += w;
  const V wa = w * a;
  m1 += wa;
  const V wa2 = wa * a;
  m2 += wa2;
  m3 += wa2 * a;
}

// r of the metric prox from the group's moments, -1 for a group the prox zeroes, or kExact. c: the opmath c of
// a = opmath(c/D); a_ok: the smallest normal opmath value (below it c/D is not rounded within 2^-24).
inline double moment_root(const Moments& m, double c, double a_ok) {
  const double q = m.q / (c * c);
  if (!(m.amin >= a_ok) || !(m.amax < INFINITY) || !(m.nn < INFINITY) || !(q < INFINITY)) return kExact;
  if (q <= 1 - kZeroBand) return -1;
  if (!(q > 1 + kZeroBand)) return kExact;
  // ||v|| less the v^2-weighted mean of a: at or below the root (Jensen on 1/x^2), within (a/r)^2 of it.
  double r = std::sqrt(m.nn) - m.m1 / m.nn;
  if (!(r > 0) || !(m.amax <= kSeriesRatio * r)) return kExact;
  // r^2 = sum v^2 (1 + a/r)^-2 = nn - 2 m1/r + 3 m2/r^2 - 4 m3/r^3: each round shrinks the error by a/r.
  for (int i = 0; i < 4; ++i) {
    const double u = 1 / r;
    r = std::sqrt(m.nn - u * (2 * m.m1 - u * (3 * m.m2 - u * (4 * m.m3))));
  }
  return r;
}

// r/(r + a) = 1/(1 + u) with u = a/r <= kSeriesRatio, to u^6 (no division an element).
template <typename V>
FR_INLINE V series_factor(V u) {
  const V one(1.0);
  return one - u * (one - u * (one - u * (one - u * (one - u))));
}

// v, D and a = opmath(c/D) of n elements (x: their denominators' inputs) into double panels; D and a as group_a
// rounds them. The branch on l2 is outside the loop so that the loop (a sqrt and two divisions) vectorizes.
template <typename T, typename O>
inline void metric_panels(const GroupJob<O>& job, const T* __restrict p, const O* __restrict x, int64_t n,
                          double* __restrict v, double* __restrict d, double* __restrict a) {
  const O c = job.c_o, c2 = job.c2, bdiv = job.bdiv, eps = job.eps;
  if (job.has_l2) {
    for (int64_t k = 0; k < n; ++k) {
      const O dk = adam_denom(x[k], bdiv, eps) + c2;
      v[k] = static_cast<double>(static_cast<O>(p[k]));
      d[k] = static_cast<double>(dk);
      a[k] = static_cast<double>(c / dk);
    }
  } else {
    for (int64_t k = 0; k < n; ++k) {
      const O dk = adam_denom(x[k], bdiv, eps);
      v[k] = static_cast<double>(static_cast<O>(p[k]));
      d[k] = static_cast<double>(dk);
      a[k] = static_cast<double>(c / dk);
    }
  }
}

template <typename O>
constexpr double kNormal = static_cast<double>(std::numeric_limits<O>::min());

// Row panels, one set per thread: v, D, a of the row (or of a column strip's row), and the scale factors.
struct Panels {
  std::vector<double> v, d, a;
  double* get(std::vector<double>& b, int64_t n) {
    if (static_cast<int64_t>(b.size()) < n) b.resize(n);
    return b.data();
  }
};
inline Panels& panels() {
  thread_local Panels pn;
  return pn;
}

// The exact metric prox of one group from its v and a: the reference's first pass, Newton's passes from the
// larger of metric_start and the Jensen bound (both at or below the root), r/(r + a).
inline double exact_root(int64_t n, const double* __restrict v, const double* __restrict a) {
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
  if (r >= 0) {
    double m1 = 0, unused = 0;
    row_sums(n, m1, unused, [&](int64_t k, auto& sk, auto&) {
      using V = std::decay_t<decltype(sk)>;
      const V vk = ld<V>(v + k);
      sk += vk * vk * ld<V>(a + k);
    });
    const double jensen = std::sqrt(first.nn) - m1 / first.nn;
    r = jensen > r ? jensen : r;
  }
  double s = 0, t = 0;
  newton_solve(1, &r, &s, &t, [&] {
    const double rk = r;
    row_sums(n, s, t, [&](int64_t k, auto& sk, auto& tk) {
      using V = std::decay_t<decltype(sk)>;
      newton_terms(ld<V>(v + k), ld<V>(a + k), V(rk), sk, tk);
    });
  });
  return r;
}

// The group prox of row g (group_dim 0: K contiguous elements), right after the row's update, while it is in cache.
template <typename T, typename O>
void group_prox_row(T* p, const GroupJob<O>& job, int64_t g) {
  const int64_t n = job.sh.K;
  p += g * n;
  if (job.x == nullptr) {
    double s = 0, t = 0;
    double* __restrict v = panels().get(panels().v, n);
    for (int64_t k = 0; k < n; ++k) v[k] = static_cast<double>(static_cast<O>(p[k]));
    row_sums(n, s, t, [&](int64_t k, auto& sk, auto&) {
      using V = std::decay_t<decltype(sk)>;
      const V vk = ld<V>(v + k);
      sk += vk * vk;
    });
    const O f = static_cast<O>(group_factor(s, job.c));
    for (int64_t k = 0; k < n; ++k) p[k] = static_cast<T>(static_cast<O>(p[k]) * f);
    return;
  }
  Panels& pn = panels();
  double* __restrict v = pn.get(pn.v, n);
  double* __restrict d = pn.get(pn.d, n);
  double* __restrict a = pn.get(pn.a, n);
  metric_panels(job, p, job.x + g * n, n, v, d, a);
  Moments m;
  {
    VD q(0.0), nn(0.0), m1(0.0), m2(0.0), m3(0.0), amax(0.0), amin(INFINITY);
    int64_t k = 0;
    for (; k + VD::size() <= n; k += VD::size()) {
      const VD ak = VD::loadu(a + k);
      moment_terms(VD::loadu(v + k), VD::loadu(d + k), ak, q, nn, m1, m2, m3);
      amax = at::vec::maximum(amax, ak);
      amin = at::vec::minimum(amin, ak);
    }
    m.q = hsum(q), m.nn = hsum(nn), m.m1 = hsum(m1), m.m2 = hsum(m2), m.m3 = hsum(m3);
    double hb[VD::size()], lb[VD::size()];
    amax.store(hb);
    amin.store(lb);
    for (int l = 0; l < VD::size(); ++l) {
      m.amax = hb[l] > m.amax || hb[l] != hb[l] ? hb[l] : m.amax;
      m.amin = lb[l] < m.amin || lb[l] != lb[l] ? lb[l] : m.amin;
    }
    for (; k < n; ++k) {
      moment_terms(v[k], d[k], a[k], m.q, m.nn, m.m1, m.m2, m.m3);
      m.amax = a[k] > m.amax || a[k] != a[k] ? a[k] : m.amax;
      m.amin = a[k] < m.amin || a[k] != a[k] ? a[k] : m.amin;
    }
  }
  double r = moment_root(m, static_cast<double>(job.c_o), kNormal<O>);
  if (r == kExact) {
    r = exact_root(n, v, a);
    if (r >= 0) {
      for (int64_t k = 0; k < n; ++k) p[k] = static_cast<T>(static_cast<O>(p[k]) * static_cast<O>(r / (r + a[k])));
      return;
    }
  }
  if (r < 0) {
    for (int64_t k = 0; k < n; ++k) p[k] = static_cast<T>(static_cast<O>(p[k]) * O(0));
    return;
  }
  const double rinv = 1 / r;
  for (int64_t k = 0; k < n; ++k) p[k] = static_cast<T>(static_cast<O>(p[k]) * static_cast<O>(series_factor(a[k] * rinv)));
}

// The column strip of a (A, G, K) param that one task takes: about 1 MiB of opmath param and state, and at most
// 256 elements of a row (its lane arrays stay in L1/L2). Fixed by the shape: no result depends on the thread count.
inline int64_t strip_groups(const GroupShape& sh) {
  const int64_t w = std::clamp<int64_t>(131072 / std::max<int64_t>(sh.A, 1), 16, 256);
  return std::max<int64_t>(1, w / std::max<int64_t>(sh.K, 1));
}

// The group prox of columns g0..g1 (group_dim 1) of one param, after its update: every sum of a column is made by
// one task, over the rows in order (the result does not depend on the thread count). Per element lane j of the
// strip's row (column g0 + j/K), lane sums over the rows, then each column's K lanes in order.
template <typename T, typename O>
void column_strip(T* p, const GroupJob<O>& job, int64_t g0, int64_t g1) {
  const int64_t A = job.sh.A, K = job.sh.K, row = job.sh.G * K, j0 = g0 * K, W = (g1 - g0) * K, ng = g1 - g0;
  thread_local std::vector<double> lanes;
  const int64_t nl = job.x == nullptr ? 2 : 10;
  if (static_cast<int64_t>(lanes.size()) < nl * W + 6 * ng) lanes.resize(nl * W + 6 * ng);
  double* L = lanes.data();
  std::fill(L, L + nl * W + 6 * ng, 0.0);
  auto lane = [&](int i) { return L + i * W; };
  double* grp = L + nl * W;  // per column: r, rinv, keep, exact, and two sums
  auto seg = [&](int64_t a) { return p + a * row + j0; };
  if (job.x == nullptr) {
    double* __restrict nn = lane(0);
    double* __restrict f = lane(1);
    for (int64_t a = 0; a < A; ++a) {
      const T* __restrict pr = seg(a);
      for (int64_t j = 0; j < W; ++j) {
        const double v = static_cast<double>(static_cast<O>(pr[j]));
        nn[j] += v * v;
      }
    }
    for (int64_t g = 0; g < ng; ++g) {
      double s = 0;
      for (int64_t k = 0; k < K; ++k) s += nn[g * K + k];
      const double fg = static_cast<double>(static_cast<O>(group_factor(s, job.c)));
      for (int64_t k = 0; k < K; ++k) f[g * K + k] = fg;
    }
    for (int64_t a = 0; a < A; ++a) {
      T* __restrict pr = seg(a);
      for (int64_t j = 0; j < W; ++j) pr[j] = static_cast<T>(static_cast<O>(pr[j]) * static_cast<O>(f[j]));
    }
    return;
  }
  Panels& pn = panels();
  double* __restrict v = pn.get(pn.v, W);
  double* __restrict d = pn.get(pn.d, W);
  double* __restrict av = pn.get(pn.a, W);
  const O* x = job.x;
  auto load = [&](int64_t a) { metric_panels(job, seg(a), x + a * row + j0, W, v, d, av); };
  double *q = lane(0), *nn = lane(1), *m1 = lane(2), *m2 = lane(3), *m3 = lane(4), *hi = lane(5), *lo = lane(6);
  for (int64_t j = 0; j < W; ++j) lo[j] = INFINITY;
  for (int64_t a = 0; a < A; ++a) {
    load(a);
    for (int64_t j = 0; j < W; ++j) {
      moment_terms(v[j], d[j], av[j], q[j], nn[j], m1[j], m2[j], m3[j]);
      hi[j] = av[j] > hi[j] || av[j] != av[j] ? av[j] : hi[j];
      lo[j] = av[j] < lo[j] || av[j] != av[j] ? av[j] : lo[j];
    }
  }
  double *r = grp, *rinv = grp + ng, *keep = grp + 2 * ng, *exact = grp + 3 * ng;
  bool any_exact = false;
  for (int64_t g = 0; g < ng; ++g) {
    Moments m;
    for (int64_t k = 0, j = g * K; k < K; ++k, ++j) {
      m.q += q[j], m.nn += nn[j], m.m1 += m1[j], m.m2 += m2[j], m.m3 += m3[j];
      m.amax = hi[j] > m.amax || hi[j] != hi[j] ? hi[j] : m.amax;
      m.amin = lo[j] < m.amin || lo[j] != lo[j] ? lo[j] : m.amin;
    }
    r[g] = moment_root(m, static_cast<double>(job.c_o), kNormal<O>);
    exact[g] = r[g] == kExact;
    any_exact = any_exact || exact[g];
  }
  if (any_exact) {
    // The reference's passes for the exact columns: ||v/a||^2 and max a (NaN-propagating), then Newton's.
    double *eq = lane(7), *s = lane(8), *t = lane(9);
    for (int64_t a = 0; a < A; ++a) {
      load(a);
      for (int64_t j = 0; j < W; ++j) {
        const double xq = v[j] / av[j];
        eq[j] += xq * xq;
      }
    }
    double *rs = grp + 4 * ng, *ss = grp + 5 * ng;
    std::vector<double> ts(ng);
    for (int64_t g = 0; g < ng; ++g) {
      rs[g] = -1;
      if (!exact[g]) continue;
      MetricSums first;
      double sm1 = 0;
      for (int64_t k = 0, j = g * K; k < K; ++k, ++j) {
        first.q += eq[j], first.nn += nn[j], sm1 += m1[j];
        first.amax = hi[j] > first.amax || hi[j] != hi[j] ? hi[j] : first.amax;
      }
      rs[g] = metric_start(first);
      const double jensen = std::sqrt(first.nn) - sm1 / first.nn;
      if (rs[g] >= 0 && jensen > rs[g]) rs[g] = jensen;
    }
    std::vector<double> rl(W);
    newton_solve(ng, rs, ss, ts.data(), [&] {
      for (int64_t j = 0; j < W; ++j) {
        rl[j] = rs[j / K] < 0 ? 0.0 : rs[j / K];
        s[j] = 0, t[j] = 0;
      }
      for (int64_t a = 0; a < A; ++a) {
        load(a);
        for (int64_t j = 0; j < W; ++j) newton_terms(v[j], av[j], rl[j], s[j], t[j]);
      }
      for (int64_t g = 0; g < ng; ++g) {
        ss[g] = 0, ts[g] = 0;
        for (int64_t k = 0, j = g * K; k < K; ++k, ++j) ss[g] += s[j], ts[g] += t[j];
      }
    });
    for (int64_t g = 0; g < ng; ++g)
      if (exact[g]) r[g] = rs[g];
  }
  // Per lane: the series factor's 1/r and keep (0 in a zeroed column), or the exact factor.
  double *lr = lane(0), *lk = lane(1), *lx = lane(2), *lrr = lane(3);
  for (int64_t g = 0; g < ng; ++g) {
    rinv[g] = r[g] > 0 ? 1 / r[g] : 0.0;
    keep[g] = r[g] < 0 ? 0.0 : 1.0;
    for (int64_t k = 0, j = g * K; k < K; ++k, ++j) lr[j] = rinv[g], lk[j] = keep[g], lx[j] = exact[g], lrr[j] = r[g];
  }
  for (int64_t a = 0; a < A; ++a) {
    load(a);
    T* __restrict pr = seg(a);
    if (!any_exact) {
      for (int64_t j = 0; j < W; ++j)
        pr[j] = static_cast<T>(static_cast<O>(pr[j]) * static_cast<O>(series_factor(av[j] * lr[j]) * lk[j]));
    } else {
      for (int64_t j = 0; j < W; ++j) {
        const double f = lx[j] != 0 ? metric_factor(lrr[j], av[j]) : series_factor(av[j] * lr[j]) * lk[j];
        pr[j] = static_cast<T>(static_cast<O>(pr[j]) * static_cast<O>(f));
      }
    }
  }
}

// The group prox of every column (group_dim 1) of one param, right after its own update (it is still in the
// last-level cache when it fits there), one column strip per task. grain: the element loop's elements per task.
template <typename T, typename O>
void group_prox_columns(T* p, const GroupJob<O>& job, int64_t grain) {
  const int64_t wg = strip_groups(job.sh), strips = (job.sh.G + wg - 1) / wg;
  const int64_t per = std::max<int64_t>(1, job.sh.A * wg * job.sh.K);
  at::parallel_for(0, strips, std::max<int64_t>(1, grain / per), [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) column_strip<T, O>(p, job, b * wg, std::min(job.sh.G, (b + 1) * wg));
  });
}

}  // namespace
}  // namespace fusedreg
