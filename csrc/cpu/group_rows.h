// The group prox of rows (group_dim 0) on the CPU (cpu/group.h), right after each row's update while it is in
// cache.
#pragma once

#include "group_solve.h"

namespace fusedreg {
namespace {  // internal linkage: see group.h

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

}  // namespace
}  // namespace fusedreg
