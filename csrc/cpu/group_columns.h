// The group prox of columns (group_dim 1) on the CPU (cpu/group.h), right after their param's update.
#pragma once

#include "group_rows.h"

namespace fusedreg {
namespace {  // internal linkage: see group.h

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
