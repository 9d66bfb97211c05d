// The root of the metric group prox (cpu/group.h): from the group's moments in one pass where the series allows,
// else the reference's exact passes (Newton's), on panels of doubles.
#pragma once

#include "group.h"

namespace fusedreg {
namespace {  // internal linkage: see group.h

// ---------------------------------------------------------------------------------------------------------------
// The metric prox in one pass: the root r from the group's moments sum v^2 a^k (k <= 3), without Newton's passes,
// when every a of the group is small next to r; the exact passes (as the reference runs them) otherwise.

// The series in u = a/r of sum v^2/(r + a)^2 = r^-2 sum v^2 (1 - 2u + 3u^2 - 4u^3 + ...), cut after u^3, is used
// when every u <= 1/2 (the remainder of each element's alternating series is then below its first left-out
// term) and those terms, 5 sum v^2 a^4 / r^4, are below kSeriesTol of sum v^2: r is then off by half that
// (relative) and the factor r/(r + a) by less, far below opmath's rounding for float (bf16, fp16) and within
// fp64's.
template <typename O>
constexpr double kSeriesTol = std::is_same_v<O, double> ? 1e-15 : 1e-9;
// The zero test from sum (v*D)^2 / c^2 (D = c/a's denominator: no division an element) is within 2^-23 (relative)
// of the reference's sum (v/a)^2 with a = opmath(c/D); nearer to 1 than this, the exact test decides.
constexpr double kZeroBand = 1e-6;
// moment_root's answer when the exact passes must decide.
constexpr double kExact = -2;
// Vectors summed in opmath before a row's sums take them in doubles (RowSums).
constexpr int kPart = 16;
// See finish_row's factor.
template <typename O>
constexpr double kPolyU = std::is_same_v<O, double> ? 2e-4 : 1e-2;
// A row is surely kept, without its sum (v/a)^2, where ||v||^2 > kSure max a^2: the sum is at least ||v||^2/max a^2.
constexpr double kSure = 1 + 1e-4;

struct Moments {
  double q = 0, nn = 0, m1 = 0, m2 = 0, m3 = 0, m4 = 0, amax = 0, amin = INFINITY;
};

// One element's v^2 a^k, k = 0..3, to nn, m1, m2, m3; returns v^2 a^3. V: a scalar or a vector.
template <typename V>
FR_INLINE V power_terms(V v, V a, V& nn, V& m1, V& m2, V& m3) {
  const V w = v * v;
  nn += w;
  const V w1 = w * a;
  m1 += w1;
  const V w2 = w1 * a;
  m2 += w2;
  const V w3 = w2 * a;
  m3 += w3;
  return w3;
}

// One element's moment terms: (v*D)^2 to q, v^2 to nn, v^2 a^k to mk. V: double or a vector of doubles.
template <typename V>
FR_INLINE void moment_terms(V v, V d, V a, V& q, V& nn, V& m1, V& m2, V& m3, V& m4) {
  const V vd = v * d;
  q += vd * vd;
  m4 += power_terms(v, a, nn, m1, m2, m3) * a;
}

// r of the metric prox from the group's moments, -1 for a group the prox zeroes, or kExact. c: the opmath c of
// a = opmath(c/D). A group with an a below the smallest normal opmath value (where c/D is not rounded within 2^-24)
// goes to the exact passes.
template <typename O>
inline double moment_root(const Moments& m, double c) {
  const double q = m.q / (c * c);
  if (!(m.amin >= static_cast<double>(std::numeric_limits<O>::min())) || !(m.amax < INFINITY) ||
      !(m.nn < INFINITY) || !(q < INFINITY))
    return kExact;
  if (q <= 1 - kZeroBand) return -1;
  if (!(q > 1 + kZeroBand)) return kExact;
  // ||v|| less the v^2-weighted mean of a: at or below the root (Jensen on 1/x^2), so the bounds below hold at r.
  double r = std::sqrt(m.nn) - m.m1 / m.nn;
  if (!(r > 0) || !(m.amax <= 0.5 * r)) return kExact;
  const double u0 = 1 / r;
  if (!(5 * m.m4 * (u0 * u0) * (u0 * u0) <= kSeriesTol<O> * m.nn)) return kExact;
  // r^2 = nn - 2 m1/r + 3 m2/r^2 - 4 m3/r^3: each round shrinks the error by about 2 (mean a)/r (at most 1/2 here),
  // so a round moving r by under Newton's tolerance leaves it within that of the root. (Run to equality, the
  // rounds went on to the cap, a third of an AdamW rows step's prox.)
  for (int i = 0; i < 6; ++i) {
    const double u = 1 / r;
    const double next = std::sqrt(m.nn - u * (2 * m.m1 - u * (3 * m.m2 - u * (4 * m.m3))));
    const bool done = std::abs(next - r) <= kMetricTol * next;
    r = next;
    if (done) break;
  }
  return r;
}

// v, D and a = opmath(c/D) of n elements (x: their denominators' inputs) into double panels; D and a as group_a
// rounds them. The branch on l2 is outside the loop so that the loop (a sqrt and two divisions) vectorizes.
template <typename T, typename O>
inline void metric_panels(const GroupJob<O>& job, const T* __restrict p, const O* __restrict x, int64_t n,
                          double* __restrict v, double* __restrict d, double* __restrict a) {
  const O c = job.c_o, c2 = job.c2, bdiv = job.bdiv, eps = job.eps;
  if (job.ftrl != nullptr) {  // its l2 is in q
    for (int64_t k = 0; k < n; ++k) {
      const O dk = denom_of(job, x[k]);
      v[k] = static_cast<double>(static_cast<O>(p[k]));
      d[k] = static_cast<double>(dk);
      a[k] = static_cast<double>(c / dk);
    }
  } else if (job.has_l2) {
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

// Row panels, one set per thread: v, D, a of the row (or of a column strip's row), and the scale factors.
struct Panels {
  std::vector<double> v, d, a, vb, db, ab, xv, xd, xa;  // x*: exact_columns' (its callers hold the others)
  double* get(std::vector<double>& b, int64_t n) {
    if (static_cast<int64_t>(b.size()) < n) b.resize(n);
    return b.data();
  }
};
inline Panels& panels() {
  thread_local Panels pn;
  return pn;
}
// A thread's panel of the denominators of a block of rows (cpu/loop.h), in opmath.
template <typename O>
O* row_panel(int64_t n) {
  thread_local std::vector<O> b;
  if (static_cast<int64_t>(b.size()) < n) b.resize(n);
  return b.data();
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

}  // namespace
}  // namespace fusedreg
