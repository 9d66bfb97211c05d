// The group-lasso prox on the CPU (formulas in fusedreg_math.h): the jobs an op's call needs (add_group_job), the
// prox of one row right after the row's update (RowSums fed by the update, then finish_row; group_prox_row for
// bf16/fp16) and of every column after the whole update (ColumnSums fed by the update, then column_roots,
// prepare_shrink and shrink_rows; group_prox_columns for bf16/fp16). cpu/loop.h runs them with the op's element
// loop.
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
// a = opmath(c/D); a_ok: the smallest normal opmath value (below it c/D is not rounded within 2^-24).
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

// ---------------------------------------------------------------------------------------------------------------
// Rows, in vectors of opmath: one pass for the sums (no panels of doubles; only a = c/D is kept, in opmath), one
// for the factors.

// The lanes of an opmath vector as vectors of doubles, in order.
FR_INLINE std::array<VD, 1> widen(const VD& x) { return {x}; }
FR_INLINE std::array<VD, 2> widen(const Vec<float>& x) {
  float b[Vec<float>::size()];
  double d[Vec<float>::size()];
  x.store(b);
  for (int l = 0; l < Vec<float>::size(); ++l) d[l] = b[l];
  return {VD::loadu(d), VD::loadu(d + VD::size())};
}

// f(v, k, cnt) for elements k..k+cnt of p (cnt = a vector's width but at the tail), v their opmath values, zero
// past cnt.
template <typename T, typename O, typename F>
FR_INLINE void each_vec(const T* p, int64_t n, const F& f) {
  using V = Vec<O>;
  constexpr int64_t W = V::size();
  int64_t k = 0;
  if constexpr (std::is_same_v<T, O>) {
    for (; k + W <= n; k += W) f(V::loadu(p + k), k, W);
    if (k < n) f(V::loadu(p + k, n - k), k, n - k);
  } else {
    for (; k + 2 * W <= n; k += 2 * W) {
      const auto [lo, hi] = at::vec::convert_to_float<T>(Vec<T>::loadu(p + k));
      f(lo, k, W);
      f(hi, k + W, W);
    }
    if (k < n) {
      const auto [lo, hi] = at::vec::convert_to_float<T>(Vec<T>::loadu(p + k, n - k));
      f(lo, k, std::min(W, n - k));
      if (n - k > W) f(hi, k + W, n - k - W);
    }
  }
}

// p[k] = opmath(p[k]) * factor(k) (a vector of opmath factors for elements k..), cast back once.
template <typename T, typename O, typename F>
FR_INLINE void scale_row(T* p, int64_t n, const F& factor) {
  using V = Vec<O>;
  constexpr int64_t W = V::size();
  int64_t k = 0;
  if constexpr (std::is_same_v<T, O>) {
    for (; k + W <= n; k += W) (V::loadu(p + k) * factor(k)).store(p + k);
    if (k < n) (V::loadu(p + k, n - k) * factor(k)).store(p + k, n - k);
  } else {
    for (; k + 2 * W <= n; k += 2 * W) {
      const auto [lo, hi] = at::vec::convert_to_float<T>(Vec<T>::loadu(p + k));
      at::vec::convert_from_float<T>(lo * factor(k), hi * factor(k + W)).store(p + k);
    }
    if (k < n) {
      const auto [lo, hi] = at::vec::convert_to_float<T>(Vec<T>::loadu(p + k, n - k));
      at::vec::convert_from_float<T>(lo * factor(k), hi * factor(k + W)).store(p + k, n - k);
    }
  }
}

// max and min of a vector's lanes (NaN: see RowSums).
template <typename O>
FR_INLINE void lane_extremes(const Vec<O>& hi, const Vec<O>& lo, double& amax, double& amin) {
  O hb[Vec<O>::size()], lb[Vec<O>::size()];
  hi.store(hb);
  lo.store(lb);
  O h = hb[0], m = lb[0];
  for (int l = 1; l < Vec<O>::size(); ++l) {
    h = std::max(h, hb[l]);
    m = std::min(m, lb[l]);
  }
  amax = h;
  amin = m;
}

// Elements k.. of p (cnt of them, zero past) in opmath.
template <typename T, typename O>
FR_INLINE Vec<O> load_o(const T* p, int64_t cnt) {
  if constexpr (std::is_same_v<T, O>) {
    return cnt == Vec<O>::size() ? Vec<O>::loadu(p) : Vec<O>::loadu(p, cnt);
  } else {
    return std::get<0>(at::vec::convert_to_float<T>(Vec<T>::loadu(p, cnt)));
  }
}

// c/x, from the hardware's reciprocal estimate and one Newton step where the build has one (float: within about
// 2 ulps; 0, infinite or NaN x give NaN, which sends the row to the exact passes), else divided. The row prox's one
// pass takes a = c/(D + c2) this way: a division there, beside the update's own, cost a tenth of an AdamW step.
template <typename O>
FR_INLINE Vec<O> over(const Vec<O>& c, const Vec<O>& x) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<O, float>) {
    const __m512 r = _mm512_rcp14_ps(x);
    return Vec<O>(_mm512_mul_ps(c, _mm512_fmadd_ps(r, _mm512_fnmadd_ps(x, r, _mm512_set1_ps(1)), r)));
  }
#elif defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<O, float>) {
    const __m256 r = _mm256_rcp_ps(x);
    return Vec<O>(_mm256_mul_ps(c, _mm256_fmadd_ps(r, _mm256_fnmadd_ps(x, r, _mm256_set1_ps(1)), r)));
  }
#endif
  return c / x;
}

// sqrt(x) from the hardware's reciprocal square root estimate and one Newton step where the build has one (float:
// within a few ulps; 0 at 0), else the exact root. shrink_rows takes Adam's and Adagrad's D this way: a square
// root and a division an element made its pass compute-bound on one thread.
template <typename O>
FR_INLINE Vec<O> fast_sqrt(const Vec<O>& x) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<O, float>) {
    const __m512 r = _mm512_rsqrt14_ps(x);
    const __m512 s = _mm512_mul_ps(x, r);
    const __m512 e = _mm512_fnmadd_ps(s, _mm512_mul_ps(r, _mm512_set1_ps(0.5f)), _mm512_set1_ps(0.5f));
    const __m512 t = _mm512_fmadd_ps(s, e, s);
    return Vec<O>(_mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_NEQ_UQ), t));
  }
#endif
  return x.sqrt();
}

// The sums of one row's prox, taken a vector at a time in element order (by the update itself, or by a pass over
// the written row): sum v^2 without a metric; with one, a = c/(D + c2) (within 2 ulps: over()) into the panel in
// place of D, sum v^2 a^k (k <= 3), max and min a. sum (v/a)^2 is only needed where ||v|| is near max a (below,
// it is at least ||v||^2 / max a^2), and sum v^2 a^4 only for the series' remainder, which max a * sum v^2 a^3
// bounds. The last vector may be partial: its lanes past the row count as v = 0, a = 0.
template <typename O>
struct RowSums {
  using V = Vec<O>;
  static constexpr int64_t W = V::size();
  int64_t n, k = 0;
  O* ap;  // the row's D, then a
  // + 0 without l2 is exact. (Written as `if (has_l2) d = d + c2` in add(), GCC 12's AVX-512 build added c2 to
  // lane 0 only; test_group caught it.)
  V c, c2;
  // The metric sums run in opmath vectors over kPart vectors at a time, then in doubles: a part's relative error
  // (below kPart ulps of float) moves r by half that, and the factor r/(r + a) by a/r times less (a/r is below
  // 1e-2 on the one-pass path), far inside an ulp. Without a metric, v^2 is summed in doubles.
  V pn = V(O(0)), p1 = pn, p2 = pn, p3 = pn;
  // Plain max and min: a NaN or infinite a makes sum v^2 a NaN or infinite, which moment_root sends to the exact
  // passes.
  V hi = V(O(0)), lo = V(std::numeric_limits<O>::infinity());
  VD nn = VD(0.0), nn2 = nn, m1 = nn, m2 = nn, m3 = nn;
  int part = 0;

  RowSums(const GroupJob<O>& job, O* den, int64_t len)
      : n(len), ap(den), c(job.c_o), c2(job.has_l2 ? job.c2 : O(0)) {}

  // Without a metric.
  FR_INLINE void add(V v) {
    if (n - k < W) v = V::set(V(O(0)), v, n - k);
    const auto h = widen(v);
    nn += h[0] * h[0];
    if constexpr (h.size() > 1) nn2 += h[1] * h[1];  // two chains of adds, not one
    k += W;
  }
  // With one: d, the update's denominators of these elements.
  FR_INLINE void add(V v, const V& d) {
    V a = over(c, d + c2);
    V low = a;
    if (n - k < W) {
      const int64_t cnt = n - k;
      v = V::set(V(O(0)), v, cnt);
      a = V::set(V(O(0)), a, cnt);
      low = V::set(V(std::numeric_limits<O>::infinity()), a, cnt);
      a.store(ap + k, cnt);  // past the row: another row's denominators
    } else {
      a.store(ap + k);
    }
    hi = at::vec::clamp_min(hi, a);
    lo = at::vec::clamp_max(lo, low);
    power_terms(v, a, pn, p1, p2, p3);
    k += W;
    if (++part == kPart) flush();
  }
  void flush() {
    for (const VD& h : widen(pn)) nn += h;
    for (const VD& h : widen(p1)) m1 += h;
    for (const VD& h : widen(p2)) m2 += h;
    for (const VD& h : widen(p3)) m3 += h;
    pn = p1 = p2 = p3 = V(O(0));
    part = 0;
  }
  double sumsq() const { return hsum(nn + nn2); }
  Moments moments() {
    flush();
    Moments m;
    m.nn = hsum(nn), m.m1 = hsum(m1), m.m2 = hsum(m2), m.m3 = hsum(m3);
    lane_extremes(hi, lo, m.amax, m.amin);
    m.m4 = m.amax * m.m3;
    return m;
  }
};

// The group prox of row g (group_dim 0: K contiguous elements) from its sums, right after the row's update, while
// it is in cache.
template <typename T, typename O>
void finish_row(T* p, const GroupJob<O>& job, int64_t g, RowSums<O>& rs) {
  using V = Vec<O>;
  const int64_t n = job.sh.K;
  p += g * n;
  if (job.x == nullptr) {
    const V f(static_cast<O>(group_factor(rs.sumsq(), job.c)));
    scale_row<T, O>(p, n, [&](int64_t) { return f; });
    return;
  }
  const O* ap = rs.ap;
  Moments m = rs.moments();
  const double cd = static_cast<double>(job.c_o);
  if (m.nn > kSure * m.amax * m.amax) {
    m.q = cd * cd * (m.nn / (m.amax * m.amax));  // a lower bound of sum (v/a)^2 * c^2, above 1 + kZeroBand
  } else {
    VD q(0.0);
    each_vec<T, O>(p, n, [&](const V& v, int64_t k, int64_t) {
      const auto vw = widen(v);
      const auto aw = widen(V::loadu(ap + k));
      for (size_t h = 0; h < vw.size(); ++h) {
        const VD t = vw[h] / aw[h];  // past the row 0/0: masked below
        q += VD::blendv(t * t, VD(0.0), vw[h] == VD(0.0));
      }
    });
    m.q = hsum(q) * cd * cd;
  }
  double r = moment_root<O>(m, cd);
  if (r == kExact) {
    Panels& pn = panels();
    double* __restrict v = pn.get(pn.v, n);
    double* __restrict d = pn.get(pn.d, n);
    double* __restrict a = pn.get(pn.ab, n);
    metric_panels(job, p, job.x + g * n, n, v, d, a);
    r = exact_root(n, v, a);
    if (r >= 0) {
      for (int64_t k = 0; k < n; ++k) p[k] = static_cast<T>(static_cast<O>(p[k]) * static_cast<O>(r / (r + a[k])));
      return;
    }
  }
  if (r < 0) {
    scale_row<T, O>(p, n, [&](int64_t) { return V(O(0)); });
    return;
  }
  // The factor r/(r + a) = 1/(1 + u), u = a/r, in opmath, within an ulp or two of the reference's rounded double:
  // where every u is below kPolyU, as 1 - u + u^2 - u^3 + u^4 (no division; the rest is below u^5, under half an
  // ulp of 1), else divided.
  if (m.amax <= kPolyU<O> * r) {
    const V nir(static_cast<O>(-1 / r)), one(O(1));
    scale_row<T, O>(p, n, [&](int64_t k) {
      const V nu = V::loadu(ap + k) * nir;
      return fr_fmadd(nu, fr_fmadd(nu, fr_fmadd(nu, one + nu, one), one), one);
    });
    return;
  }
  const V ro(static_cast<O>(r));
  scale_row<T, O>(p, n, [&](int64_t k) { return ro / (ro + V::loadu(ap + k)); });
}

// The group prox of row g from a pass over the written row: for bf16/fp16 params, whose sums are of the rounded
// values (the update's are in opmath). den: the row's denominators (metric), which it overwrites.
template <typename T, typename O>
void group_prox_row(T* p, const GroupJob<O>& job, int64_t g, O* den) {
  using V = Vec<O>;
  const int64_t n = job.sh.K;
  RowSums<O> rs(job, den, n);
  each_vec<T, O>(p + g * n, n, [&](const V& v, int64_t k, int64_t) {
    if (job.x == nullptr) {
      rs.add(v);
    } else {
      rs.add(v, V::loadu(den + k));
    }
  });
  finish_row<T, O>(p, job, g, rs);
}

// SGD's closed form on row g (no metric) from a pass over the written row, for a metric op's job without a metric
// (decoupled l1): the sums RowSums::add(v) takes, in the same order, but in locals the compiler keeps in registers
// (RowSums' members stayed on the stack, each vector's add waiting on the last one's store).
template <typename T, typename O>
void closed_form_row(T* p, const GroupJob<O>& job, int64_t g) {
  using V = Vec<O>;
  const int64_t n = job.sh.K;
  p += g * n;
  VD nn(0.0), nn2(0.0);
  each_vec<T, O>(p, n, [&](V v, int64_t, int64_t cnt) {
    if (cnt < V::size()) v = V::set(V(O(0)), v, cnt);
    const auto h = widen(v);
    nn += h[0] * h[0];
    if constexpr (h.size() > 1) nn2 += h[1] * h[1];
  });
  const V f(static_cast<O>(group_factor(hsum(nn + nn2), job.c)));
  scale_row<T, O>(p, n, [&](int64_t) { return f; });
}

// The columns one task takes: 256 elements of each row (one column for K >= 256, its run taken in chunks of 256),
// so that its lane arrays stay in L1/L2 and each row's piece is a run of cache lines. Fixed by the shape: no result depends on the thread count.
constexpr int64_t kStripElems = 256;
inline int64_t strip_groups(const GroupShape& sh) {
  return std::max<int64_t>(1, kStripElems / std::max<int64_t>(sh.K, 1));
}

// A strip's rows lie a row apart, in different pages, where the hardware prefetchers stop: the strip loops
// prefetch the piece this many rows ahead.
constexpr int64_t kStripAhead = 8;
// The rows a strip's first pass takes at a time.
constexpr int64_t kStripRows = 4;

inline void prefetch_piece(const void* base, int64_t bytes) {
  const char* c = static_cast<const char*>(base);
  for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(c + o, 1, 3);
}

// The reference's passes for the columns g0 + g (g < ng) with exact[g] set (few, unless the prox is strong): each
// column's v and a gathered once into a thread's panels (its elements are strided), then exact_root on them; their
// roots into r[g]. In parallel over the columns.
template <typename T, typename O>
void exact_columns(const T* p, const GroupJob<O>& job, int64_t g0, int64_t ng, const double* exact, double* r) {
  const int64_t A = job.sh.A, K = job.sh.K, row = job.sh.G * K, n = A * K;
  std::vector<int64_t> ex;
  for (int64_t g = 0; g < ng; ++g)
    if (exact[g]) ex.push_back(g);
  at::parallel_for(0, static_cast<int64_t>(ex.size()), 1, [&](int64_t e0, int64_t e1) {
    Panels& pn = panels();
    double* __restrict v = pn.get(pn.xv, n);
    double* __restrict d = pn.get(pn.xd, n);
    double* __restrict a = pn.get(pn.xa, n);
    for (int64_t e = e0; e < e1; ++e) {
      const int64_t at = (g0 + ex[e]) * K;
      for (int64_t i = 0; i < A; ++i)
        metric_panels(job, p + i * row + at, job.x + i * row + at, K, v + i * K, d + i * K, a + i * K);
      r[ex[e]] = exact_root(n, v, a);
    }
  });
}

// The group prox of columns g0..g1 (group_dim 1) of one param, after its update: every sum of a column is made by
// one task, over the rows in order (the result does not depend on the thread count). Per element lane j of the
// strip's row (column g0 + j/K), lane sums over the rows, then each column's K lanes in order.
template <typename T, typename O>
void column_strip(T* p, const GroupJob<O>& job, int64_t g0, int64_t g1) {
  const int64_t A = job.sh.A, K = job.sh.K, row = job.sh.G * K, j0 = g0 * K, W = (g1 - g0) * K, ng = g1 - g0;
  // Lanes per chunk: the whole strip, or (one column with K > kStripElems) K's run in chunks, whose lane sums
  // are added to the column's in order.
  const int64_t C = std::min(W, kStripElems);
  thread_local std::vector<double> lanes;
  const int64_t nl = job.x == nullptr ? 2 : 8;
  if (static_cast<int64_t>(lanes.size()) < nl * C + 2 * ng) lanes.resize(nl * C + 2 * ng);
  double* L = lanes.data();
  std::fill(L, L + nl * C + 2 * ng, 0.0);
  auto lane = [&](int i) { return L + i * C; };
  double* grp = L + nl * C;  // per column: r, exact
  int64_t jc = 0, Wc = C;    // the chunk: lanes jc.. of the strip's row piece
  auto seg = [&](int64_t a) { return p + a * row + j0 + jc; };
  if (job.x == nullptr) {
    double* __restrict nn = lane(0);
    double* __restrict f = lane(1);
    double* ssq = grp;
    for (jc = 0; jc < W; jc += C) {
      Wc = std::min(C, W - jc);
      std::fill(nn, nn + Wc, 0.0);
      for (int64_t a = 0; a < A; ++a) {
        if (a + kStripAhead < A) prefetch_piece(seg(a + kStripAhead), Wc * sizeof(T));
        const T* __restrict pr = seg(a);
        for (int64_t j = 0; j < Wc; ++j) {
          const double v = static_cast<double>(static_cast<O>(pr[j]));
          nn[j] += v * v;
        }
      }
      for (int64_t j = 0; j < Wc; ++j) ssq[(jc + j) / K] += nn[j];
    }
    for (jc = 0; jc < W; jc += C) {
      Wc = std::min(C, W - jc);
      for (int64_t j = 0; j < Wc; ++j)
        f[j] = static_cast<double>(static_cast<O>(group_factor(ssq[(jc + j) / K], job.c)));
      for (int64_t a = 0; a < A; ++a) {
        if (a + kStripAhead < A) prefetch_piece(seg(a + kStripAhead), Wc * sizeof(T));
        T* __restrict pr = seg(a);
        for (int64_t j = 0; j < Wc; ++j) pr[j] = static_cast<T>(static_cast<O>(pr[j]) * static_cast<O>(f[j]));
      }
    }
    return;
  }
  Panels& pn = panels();
  double* __restrict v = pn.get(pn.v, C);
  double* __restrict d = pn.get(pn.d, C);
  double* __restrict av = pn.get(pn.a, C);
  const O* x = job.x;
  auto xseg = [&](int64_t a) { return x + a * row + j0 + jc; };
  auto load = [&](int64_t a) {
    if (a + kStripAhead < A) {
      prefetch_piece(seg(a + kStripAhead), Wc * sizeof(T));
      prefetch_piece(xseg(a + kStripAhead), Wc * sizeof(O));
    }
    metric_panels(job, seg(a), xseg(a), Wc, v, d, av);
  };
  double *__restrict q = lane(0), *__restrict nn = lane(1), *__restrict m1 = lane(2), *__restrict m2 = lane(3),
         *__restrict m3 = lane(4), *__restrict m4 = lane(5), *__restrict hi = lane(6), *__restrict lo = lane(7);
  // kStripRows rows at a time, so that the lane sums are loaded and stored once per kStripRows rows; each lane
  // still adds its rows in order.
  double* __restrict vb = pn.get(pn.vb, kStripRows * C);
  double* __restrict db = pn.get(pn.db, kStripRows * C);
  double* __restrict ab = pn.get(pn.ab, kStripRows * C);
  std::vector<Moments> mom(ng);
  for (jc = 0; jc < W; jc += C) {
    Wc = std::min(C, W - jc);
    std::fill(L, L + nl * C, 0.0);
    for (int64_t j = 0; j < Wc; ++j) lo[j] = INFINITY;
    for (int64_t a0 = 0; a0 < A; a0 += kStripRows) {
      const int64_t nr = std::min(kStripRows, A - a0);
      for (int64_t i = 0; i < nr; ++i) {
        const int64_t a = a0 + i;
        if (a + kStripAhead < A) {
          prefetch_piece(seg(a + kStripAhead), Wc * sizeof(T));
          prefetch_piece(xseg(a + kStripAhead), Wc * sizeof(O));
        }
        metric_panels(job, seg(a), xseg(a), Wc, vb + i * Wc, db + i * Wc, ab + i * Wc);
      }
      // In vectors, then the tail as scalars: the same operations (no contraction), so a lane's sum does not
      // depend on where it falls.
      int64_t j = 0;
      for (; j + VD::size() <= Wc; j += VD::size()) {
        VD qj = VD::loadu(q + j), nj = VD::loadu(nn + j), aj = VD::loadu(m1 + j), bj = VD::loadu(m2 + j),
           cj = VD::loadu(m3 + j), dj = VD::loadu(m4 + j), hj = VD::loadu(hi + j), lj = VD::loadu(lo + j);
        for (int64_t i = 0; i < nr; ++i) {
          const VD ak = VD::loadu(ab + i * Wc + j);
          moment_terms(VD::loadu(vb + i * Wc + j), VD::loadu(db + i * Wc + j), ak, qj, nj, aj, bj, cj, dj);
          hj = at::vec::clamp_min(hj, ak);  // a NaN a makes q NaN, which moment_root sends to the exact passes
          lj = at::vec::clamp_max(lj, ak);
        }
        qj.store(q + j), nj.store(nn + j), aj.store(m1 + j), bj.store(m2 + j), cj.store(m3 + j), dj.store(m4 + j);
        hj.store(hi + j), lj.store(lo + j);
      }
      for (; j < Wc; ++j)
        for (int64_t i = 0; i < nr; ++i) {
          const int64_t o = i * Wc + j;
          moment_terms(vb[o], db[o], ab[o], q[j], nn[j], m1[j], m2[j], m3[j], m4[j]);
          hi[j] = ab[o] > hi[j] ? ab[o] : hi[j];
          lo[j] = ab[o] < lo[j] ? ab[o] : lo[j];
        }
    }
    for (int64_t j = 0; j < Wc; ++j) {
      Moments& m = mom[(jc + j) / K];
      m.q += q[j], m.nn += nn[j], m.m1 += m1[j], m.m2 += m2[j], m.m3 += m3[j], m.m4 += m4[j];
      m.amax = hi[j] > m.amax || hi[j] != hi[j] ? hi[j] : m.amax;
      m.amin = lo[j] < m.amin || lo[j] != lo[j] ? lo[j] : m.amin;
    }
  }
  double *r = grp, *exact = grp + ng;
  bool any_exact = false;
  for (int64_t g = 0; g < ng; ++g) {
    r[g] = moment_root<O>(mom[g], static_cast<double>(job.c_o));
    exact[g] = r[g] == kExact;
    any_exact = any_exact || exact[g];
  }
  if (any_exact) exact_columns<T, O>(p, job, g0, ng, exact, r);
  // Per lane: opmath r (0 in a zeroed column: a > 0 there, so the factor is 0), and the exact columns' r.
  double *__restrict lr = lane(0), *__restrict lx = lane(1), *__restrict lrr = lane(2);
  for (jc = 0; jc < W; jc += C) {
    Wc = std::min(C, W - jc);
    for (int64_t j = 0; j < Wc; ++j) {
      const int64_t g = (jc + j) / K;
      lr[j] = static_cast<double>(static_cast<O>(r[g] < 0 ? 0.0 : r[g]));
      lx[j] = exact[g];
      lrr[j] = r[g];
    }
    for (int64_t a = 0; a < A; ++a) {
      load(a);
      T* __restrict pr = seg(a);
      if (!any_exact) {
        for (int64_t j = 0; j < Wc; ++j) {
          const O ro = static_cast<O>(lr[j]);
          pr[j] = static_cast<T>(static_cast<O>(pr[j]) * (ro / (ro + static_cast<O>(av[j]))));
        }
      } else {
        for (int64_t j = 0; j < Wc; ++j) {
          const O ro = static_cast<O>(lr[j]);
          const O f = lx[j] != 0 ? static_cast<O>(metric_factor(lrr[j], av[j])) : ro / (ro + static_cast<O>(av[j]));
          pr[j] = static_cast<T>(static_cast<O>(pr[j]) * f);
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Columns summed by the update itself (fp32/fp64 params; cpu/loop.h): the update runs kColumnBlocks fixed blocks of
// rows, each of which keeps its own lane sums over its rows in order (lane j of a row: column j / K); the totals
// then add the blocks in order, so no sum depends on the thread count. Within a block, a thread sums kPart rows at a
// time in opmath (its Part, which stays in L1), then adds them to the block's sums in doubles: the same bound on a
// part's error as RowSums' (doubles loaded and stored by every vector of the update cost half an AdamW step). The
// block sums are kColumnBlocks rows of lanes per sum, at most kColumnBlocks and one per kColumnBlockRows rows (so
// they stay under a sixth of an fp32 param: 40 bytes a lane a block against 4 a row). Then one pass over the param
// (and its state, for a) shrinks it.
constexpr int64_t kColumnBlocks = 16;
constexpr int64_t kColumnBlockRows = 64;

template <typename O>
struct ColumnSums {
  using V = Vec<O>;
  static constexpr int64_t W = V::size();
  const GroupJob<O>& job;
  int64_t R, nb, ns;  // lanes (a row), blocks, sums per block
  // min a only matters where a = c/(D + c2) could fall below the normal range (moment_root). Adam's and Adagrad's
  // finite D are at most sqrt(max)/bdiv + eps: min a is kept only where c over that could be (and for Ftrl).
  bool lo_needed;
  int64_t np;                          // vectors per W lanes in a Part
  std::unique_ptr<double[]> sums;      // per block: nn [, m1, m2, m3] lanes (each block's first flush writes them)
  std::unique_ptr<O[]> ext;            // per block (metric): max a, min a lanes
  V c, c2;
  // The roots (column_roots) and what the shrink needs (prepare_shrink).
  std::vector<double> r, exact, amax;
  bool any_exact = false, poly = false;
  std::vector<O> ro;
  std::vector<int64_t> exact_lanes;

  static bool needs_lo(const GroupJob<O>& j) {
    if (j.x == nullptr) return false;
    if (j.ftrl != nullptr) return true;
    const double dmax = std::sqrt(static_cast<double>(std::numeric_limits<O>::max())) / static_cast<double>(j.bdiv) +
                        static_cast<double>(j.eps) + static_cast<double>(j.has_l2 ? j.c2 : O(0));
    return !(static_cast<double>(j.c_o) / dmax >= 4 * static_cast<double>(std::numeric_limits<O>::min()));
  }

  explicit ColumnSums(const GroupJob<O>& j)
      : job(j), R(j.sh.G * j.sh.K), nb(std::clamp<int64_t>(j.sh.A / kColumnBlockRows, 1, kColumnBlocks)),
        ns(j.x == nullptr ? 1 : 4), lo_needed(needs_lo(j)), np(j.x == nullptr ? 1 : lo_needed ? 6 : 5),
        sums(std::make_unique_for_overwrite<double[]>(nb * ns * R)),
        ext(std::make_unique_for_overwrite<O[]>(j.x == nullptr ? 0 : nb * 2 * R)), c(j.c_o),
        c2(j.has_l2 ? j.c2 : O(0)), r(j.sh.G), exact(j.sh.G, 0.0), amax(j.sh.G) {}
  int64_t row0(int64_t b) const { return b * job.sh.A / nb; }
  double* lane(int64_t b, int64_t i) { return sums.get() + (b * ns + i) * R; }
  O* hi(int64_t b) { return ext.get() + (2 * b) * R; }
  O* lo(int64_t b) { return ext.get() + (2 * b + 1) * R; }

  // A thread's sums of up to kPart rows of block b, in opmath: per W lanes, np vectors (sum v^2 [, v^2 a^k
  // k = 1..3, max a, min a]). The last W lanes may run past the row; those lanes are never flushed.
  struct Part {
    O* q;
    int64_t b;
    bool first = true;  // no flush yet
  };
  Part part(int64_t b) {
    thread_local std::vector<O> buf;
    const int64_t n = (R + W - 1) / W * np * W;
    if (static_cast<int64_t>(buf.size()) < n) buf.resize(n);
    Part pt{buf.data(), b};
    clear(pt);
    return pt;
  }
  void clear(Part& pt) {
    for (int64_t k = 0; k < R; k += W) {
      O* q = pt.q + k * np;
      for (int64_t i = 0; i < np; ++i) V(i == 5 ? std::numeric_limits<O>::infinity() : O(0)).store(q + i * W);
    }
  }
  // The Part's sums into its block's, in lane order; then a fresh Part.
  void flush(Part& pt) {
    for (int64_t k = 0; k < R; k += W) {
      const O* q = pt.q + k * np;
      const int64_t cnt = std::min(W, R - k);
      for (int64_t i = 0; i < ns; ++i) {
        double* s = lane(pt.b, i) + k;
        if (cnt == W) {
          const auto h = widen(V::loadu(q + i * W));
          for (size_t j = 0; j < h.size(); ++j) {
            double* sj = s + j * VD::size();
            (pt.first ? h[j] : VD::loadu(sj) + h[j]).store(sj);
          }
        } else {
          for (int64_t l = 0; l < cnt; ++l) s[l] = (pt.first ? 0.0 : s[l]) + static_cast<double>(q[i * W + l]);
        }
      }
      if (np == 1) continue;
      O *h = hi(pt.b) + k, *m = lo(pt.b) + k;
      // NaN: see RowSums
      for (int64_t l = 0; l < cnt; ++l) h[l] = pt.first ? q[4 * W + l] : std::max(h[l], q[4 * W + l]);
      for (int64_t l = 0; l < cnt; ++l)
        m[l] = !lo_needed ? std::numeric_limits<O>::infinity() : pt.first ? q[5 * W + l] : std::min(m[l], q[5 * W + l]);
    }
    pt.first = false;
    clear(pt);
  }

  // The W lanes at q (a Part's, from at()): v (the update's new values) and, with a metric, d (its denominators).
  // Static, with the scalars passed in: the caller keeps them (and q's base) in registers, where members would be
  // reloaded after every store.
  O* at(const Part& pt, int64_t k) const { return pt.q + k * np; }
  static FR_INLINE void add(O* q, const V& v) { (V::loadu(q) + v * v).store(q); }
  static FR_INLINE void add(O* q, const V& v, const V& d, const V& c, const V& c2, bool lo) {
    const V a = over(c, d + c2);
    V n0 = V::loadu(q), s1 = V::loadu(q + W), s2 = V::loadu(q + 2 * W), s3 = V::loadu(q + 3 * W);
    power_terms(v, a, n0, s1, s2, s3);
    n0.store(q), s1.store(q + W), s2.store(q + 2 * W), s3.store(q + 3 * W);
    at::vec::clamp_min(V::loadu(q + 4 * W), a).store(q + 4 * W);
    if (lo) at::vec::clamp_max(V::loadu(q + 5 * W), a).store(q + 5 * W);
  }
};

// The prox of every column from the sums, in three parts that cpu/loop.h runs over all the column jobs at once
// (column_roots, prepare_shrink, shrink_rows): roots (the exact passes for the columns that need them), then one
// pass over the param: factor r/(r + a) per element, a = c/(D + c2) from the state (exact columns: the reference's
// a and factor).

// The roots of columns g0..g1: each column's sums are its lanes' totals over the blocks in order, then its K lanes
// in order.
template <typename O>
void column_roots(ColumnSums<O>& cs, int64_t g0, int64_t g1) {
  const GroupJob<O>& job = cs.job;
  const int64_t K = job.sh.K;
  const bool metric = job.x != nullptr;
  const int64_t j0 = g0 * K, nl = (g1 - g0) * K;
  std::vector<double> tot(4 * nl, 0.0);
  std::vector<O> hi(nl, O(0)), lo(nl, std::numeric_limits<O>::infinity());
  for (int64_t b = 0; b < cs.nb; ++b) {
    for (int64_t i = 0; i < cs.ns; ++i) {
      const double* l = cs.lane(b, i) + j0;
      double* t = tot.data() + i * nl;
      for (int64_t j = 0; j < nl; ++j) t[j] += l[j];
    }
    for (int64_t j = 0; j < nl && metric; ++j) {
      hi[j] = std::max(hi[j], cs.hi(b)[j0 + j]);  // NaN: see RowSums
      lo[j] = std::min(lo[j], cs.lo(b)[j0 + j]);
    }
  }
  for (int64_t g = g0; g < g1; ++g) {
    Moments m;
    for (int64_t j = (g - g0) * K; j < (g - g0 + 1) * K; ++j) {
      m.nn += tot[j], m.m1 += tot[nl + j], m.m2 += tot[2 * nl + j], m.m3 += tot[3 * nl + j];
      m.amax = std::max(m.amax, static_cast<double>(hi[j]));
      m.amin = std::min(m.amin, static_cast<double>(lo[j]));
    }
    cs.amax[g] = m.amax;
    if (!metric) {
      cs.r[g] = group_factor(m.nn, job.c);  // SGD: the factor itself
      continue;
    }
    m.m4 = m.amax * m.m3;
    const double cd = static_cast<double>(job.c_o);
    // sum (v/a)^2 is at least ||v||^2 / max a^2; a column not surely kept takes the exact passes
    const bool sure = m.nn > kSure * m.amax * m.amax;
    m.q = cd * cd * (m.nn / (m.amax * m.amax));
    cs.r[g] = m.nn == 0 ? -1.0 : sure ? moment_root<O>(m, cd) : kExact;  // a zero column stays zero
    cs.exact[g] = cs.r[g] == kExact;
  }
}

// After every column's root: the exact columns' roots, then per lane the opmath r (SGD: the factor), or NaN for the
// lanes of exact columns, which the vector pass leaves alone (factor 1) for the scalar one. The factor is a
// polynomial where every column allows it (finish_row).
template <typename T, typename O>
void prepare_shrink(const T* p, ColumnSums<O>& cs) {
  const GroupJob<O>& job = cs.job;
  const int64_t G = job.sh.G, K = job.sh.K;
  const bool metric = job.x != nullptr;
  cs.any_exact = std::find(cs.exact.begin(), cs.exact.end(), 1.0) != cs.exact.end();
  if (cs.any_exact) exact_columns<T, O>(p, job, 0, G, cs.exact.data(), cs.r.data());
  cs.poly = metric;
  for (int64_t g = 0; g < G; ++g)
    cs.poly = cs.poly && (cs.exact[g] || (cs.r[g] > 0 && cs.amax[g] <= kPolyU<O> * cs.r[g]));
  cs.ro.resize(cs.R);
  for (int64_t j = 0; j < cs.R; ++j) {
    const int64_t g = j / K;
    const double rg = metric ? (cs.r[g] < 0 ? 0.0 : cs.r[g]) : cs.r[g];
    cs.ro[j] = cs.exact[g] ? std::numeric_limits<O>::quiet_NaN() : static_cast<O>(cs.poly ? -1 / rg : rg);
    if (cs.exact[g]) cs.exact_lanes.push_back(j);
  }
}

// Rows a0..a1 of the param, shrunk.
template <typename T, typename O>
void shrink_rows(T* p, const ColumnSums<O>& cs, int64_t a0, int64_t a1) {
  using V = Vec<O>;
  constexpr int64_t W = V::size();
  const GroupJob<O>& job = cs.job;
  const int64_t K = job.sh.K, R = cs.R;
  const bool metric = job.x != nullptr, poly = cs.poly, any_exact = cs.any_exact;
  const V c(job.c_o), c2(job.has_l2 ? job.c2 : O(0)), one(O(1));
  // Adam's and Adagrad's a from fast_sqrt (a few ulps from the sums' a: the factor r/(r + a) moves by a/(r + a)
  // of that, under an ulp; a zeroed column's factor is 0 whatever a is).
  const bool fast = metric && job.ftrl == nullptr;
  const V ibdiv(O(1) / job.bdiv), ec2 = V(job.eps) + c2;
  const O* ro = cs.ro.data();
  for (int64_t a = a0; a < a1; ++a) {
    T* pr = p + a * R;
    const O* xr = metric ? job.x + a * R : nullptr;
    for (int64_t j = 0; j < R; j += W) {
      const int64_t cnt = std::min(W, R - j);
      const V rv = V::loadu(ro + j, cnt);
      V f = rv;  // SGD: the factor
      if (metric) {
        const V xv = cnt == W ? V::loadu(xr + j) : V::loadu(xr + j, cnt);
        const V a = over(c, fast ? fr_fmadd(fast_sqrt<O>(xv), ibdiv, ec2) : denom_of(job, xv) + c2);
        if (poly) {
          const V nu = a * rv;
          f = fr_fmadd(nu, fr_fmadd(nu, fr_fmadd(nu, one + nu, one), one), one);
        } else {
          f = V::blendv(rv / (rv + a), V(O(0)), rv == V(O(0)));  // a zeroed column: 0, whatever a is
        }
        if (any_exact) f = V::blendv(f, one, rv != rv);
      }
      const V out = V::loadu(pr + j, cnt) * f;
      if (cnt == W) {
        out.store(pr + j);
      } else {
        out.store(pr + j, cnt);
      }
    }
    for (const int64_t j : cs.exact_lanes) {
      const double rg = cs.r[j / K];
      const O dk = job.has_l2 ? denom_of(job, xr[j]) + job.c2 : denom_of(job, xr[j]);
      const O f = static_cast<O>(metric_factor(rg, static_cast<double>(job.c_o / dk)));
      pr[j] = static_cast<T>(static_cast<O>(pr[j]) * f);
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
