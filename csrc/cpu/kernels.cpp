// CPU kernels: at::vec::Vectorized over the math of fusedreg_math.h, one at::parallel_for over the flattened
// elements of the whole tensor list.
#include "vec_prims.h"  // first: declares the Vectorized primitives before fusedreg_math.h

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/util/bit_cast.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <type_traits>

#include "../ops.h"

namespace fusedreg {
namespace {

template <typename T>
constexpr bool kReduced = std::is_same_v<T, c10::BFloat16> || std::is_same_v<T, c10::Half>;

// Work is split in units of kUnit elements of one tensor, so that thread boundaries fall on whole vectors.
constexpr int64_t kUnit = 64;
constexpr int64_t kGrainUnits = 32768 / kUnit;

// One tensor's pointers (params, grads, NS optional state lists) and its scalars.
template <typename T, typename O, int NS, typename S>
struct Slot {
  T* p;
  const T* g;
  std::array<O*, NS> s;
  int64_t n;
  S sc;
};

template <bool Full, typename V, typename Ptr>
inline V load(Ptr ptr, int64_t cnt) {
  if constexpr (Full) {
    return V::loadu(ptr);
  } else {
    return V::loadu(ptr, cnt);
  }
}

template <bool Full, typename V, typename Ptr>
inline void store(const V& v, Ptr ptr, int64_t cnt) {
  if constexpr (Full) {
    v.store(ptr);
  } else {
    v.store(ptr, cnt);
  }
}

// Applies f(p, g, states) to elements [lb, le) of one tensor, a block of vectors at a time; the tail is a
// partial block (zero-padded loads, partial stores), so every element runs the same vector code.
template <typename T, typename O, int NS, typename S, typename F>
void process_range(const Slot<T, O, NS, S>& sl, int64_t lb, int64_t le, const F& f) {
  using V = Vec<O>;
  constexpr int64_t W = V::size();
  if constexpr (!kReduced<T>) {
    static_assert(std::is_same_v<T, O>);
    auto block = [&](auto full_tag, int64_t i, int64_t cnt) {
      constexpr bool Full = decltype(full_tag)::value;
      V p = load<Full, V>(sl.p + i, cnt);
      V g = load<Full, V>(sl.g + i, cnt);
      std::array<V, NS> s;
      for (int k = 0; k < NS; ++k) s[k] = sl.s[k] ? load<Full, V>(sl.s[k] + i, cnt) : V(O(0));
      f(p, g, s);
      store<Full>(p, sl.p + i, cnt);
      for (int k = 0; k < NS; ++k)
        if (sl.s[k]) store<Full>(s[k], sl.s[k] + i, cnt);
    };
    int64_t i = lb;
    for (; i + W <= le; i += W) block(std::true_type{}, i, W);
    if (i < le) block(std::false_type{}, i, le - i);
  } else {
    using VT = Vec<T>;
    constexpr int64_t W2 = VT::size();
    static_assert(W2 == 2 * W);
    auto block = [&](auto full_tag, int64_t i, int64_t cnt) {
      constexpr bool Full = decltype(full_tag)::value;
      const int64_t c0 = std::min(cnt, W), c1 = cnt - c0;
      auto [p0, p1] = at::vec::convert_to_float<T>(load<Full, VT>(sl.p + i, cnt));
      auto [g0, g1] = at::vec::convert_to_float<T>(load<Full, VT>(sl.g + i, cnt));
      std::array<V, NS> s0, s1;
      for (int k = 0; k < NS; ++k) {
        s0[k] = sl.s[k] ? load<Full, V>(sl.s[k] + i, c0) : V(O(0));
        s1[k] = sl.s[k] && c1 > 0 ? load<Full, V>(sl.s[k] + i + W, c1) : V(O(0));
      }
      f(p0, g0, s0);
      f(p1, g1, s1);
      store<Full>(at::vec::convert_from_float<T>(p0, p1), sl.p + i, cnt);
      for (int k = 0; k < NS; ++k) {
        if (!sl.s[k]) continue;
        store<Full>(s0[k], sl.s[k] + i, c0);
        if (c1 > 0) store<Full>(s1[k], sl.s[k] + i + W, c1);
      }
    };
    int64_t i = lb;
    for (; i + W2 <= le; i += W2) block(std::true_type{}, i, W2);
    if (i < le) block(std::false_type{}, i, le - i);
  }
}

// Runs f over every element of every slot, parallel over the flattened list.
template <typename T, typename O, int NS, typename S, typename F>
void for_each_element(const std::vector<Slot<T, O, NS, S>>& slots, const F& f) {
  std::vector<int64_t> off(slots.size() + 1, 0);  // unit offsets
  for (size_t t = 0; t < slots.size(); ++t) off[t + 1] = off[t] + (slots[t].n + kUnit - 1) / kUnit;
  const int64_t total = off.back();
  if (total == 0) return;
  at::parallel_for(0, total, kGrainUnits, [&](int64_t b, int64_t e) {
    size_t t = std::upper_bound(off.begin(), off.end(), b) - off.begin() - 1;
    for (; t < slots.size() && off[t] < e; ++t) {
      const auto& sl = slots[t];
      const int64_t lb = (std::max(b, off[t]) - off[t]) * kUnit;
      const int64_t le = std::min((std::min(e, off[t + 1]) - off[t]) * kUnit, sl.n);
      // A local copy of the scalars: stores through the float pointers cannot alias it, so the compiler keeps
      // the scalars in registers instead of reloading them after every store.
      const S sc = sl.sc;
      if (lb < le) process_range(sl, lb, le, [&](auto& p, auto g, auto& s) { f(sc, p, g, s); });
    }
  });
}

// ---------------------------------------------------------------------------------------------------------------
// Group lasso (fusedreg_math.h): the group prox of one param, by rows (group_prox_row) or by columns
// (group_prox_columns).

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
  // The first pass in vectors, the tail into `first`, then the vectors' lanes merged in.
  MetricSums first;
  VD qv(0.0), nv(0.0), mv(0.0);
  int64_t k = 0;
  for (; k + VD::size() <= n; k += VD::size()) metric_terms(VD::loadu(v + k), VD::loadu(a + k), qv, nv, mv);
  for (; k < n; ++k) first.add(v[k], a[k]);
  double mb[VD::size()];
  mv.store(mb);
  MetricSums vec;
  vec.q = hsum(qv);
  vec.nn = hsum(nv);
  for (int l = 0; l < VD::size(); ++l) vec.amax = fr_max(vec.amax, mb[l]);
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
// (fixed blocks, combined in order: the result does not depend on the thread count).
template <typename T, typename O>
void group_prox_columns(T* p, const GroupJob<O>& job) {
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
    at::parallel_for(0, A, std::max<int64_t>(1, kGrainUnits * kUnit / row), [&](int64_t a0, int64_t a1) {
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
  // a_i once, kept in opmath (it is rounded there): one transient the size of the param. The blocks' max a are
  // merged without NaN: a NaN a_i makes q NaN, and metric_start zeroes such a column whatever max a is.
  std::vector<O> abuf(A * row);
  O* __restrict av = abuf.data();
  sweep([&](int64_t a, double* __restrict bq, double* __restrict bn, double* __restrict bm) {
    metric_a(job, a * row, row, av + a * row);
    for_row(G, K, [&](int64_t g, int64_t j) {
      metric_terms(val(a * row + j), static_cast<double>(av[a * row + j]), bq[g], bn[g], bm[g]);
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

// Runs f over every element of every slot, then the group prox of each job: row groups in the same parallel
// chunk as their row's update (the row is still in cache), column groups in row-major sweeps after the whole
// update (a column needs every row).
template <typename T, typename O, int NS, typename S, typename F>
void for_each_element_grouped(const std::vector<Slot<T, O, NS, S>>& slots, const std::vector<GroupJob<O>>& jobs,
                              int64_t group_dim, const F& f) {
  if (jobs.empty()) return for_each_element(slots, f);
  std::vector<Slot<T, O, NS, S>> flat;
  std::vector<char> fused(slots.size(), 0);
  if (group_dim == 0)
    for (const auto& job : jobs) fused[job.slot] = 1;
  for (size_t i = 0; i < slots.size(); ++i)
    if (!fused[i]) flat.push_back(slots[i]);
  for_each_element(flat, f);
  for (const auto& job : jobs) {
    const auto& sl = slots[job.slot];
    const GroupShape& sh = job.sh;
    if (group_dim == 0) {
      at::parallel_for(0, sh.G, std::max<int64_t>(1, kGrainUnits * kUnit / sh.K), [&](int64_t b, int64_t e) {
        const S sc = sl.sc;
        for (int64_t g = b; g < e; ++g) {
          process_range(sl, g * sh.K, (g + 1) * sh.K, [&](auto& p, auto gr, auto& st) { f(sc, p, gr, st); });
          group_prox_row<T, O>(sl.p, job, g);
        }
      });
    } else {
      group_prox_columns<T, O>(sl.p, job);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The options most calls leave off (maximize, the rare penalties of fusedreg_math.h, amsgrad, grad scaling,
// Adam's large-beta1 lerp form) are fixed off at compile time in a second instantiation of the element loop:
// testing them per vector cost 5-8% of a single-thread AdamW + L1 step (measured). The math is the same.
template <typename S>
constexpr bool kIsAdam = false;
template <typename O>
constexpr bool kIsAdam<AdamScalars<O>> = true;

template <typename S>
FR_INLINE bool is_common(const S& s) {
  const bool common = !s.gp.maximize && !has_rare(s.pen);
  if constexpr (kIsAdam<S>) {
    return common && !s.amsgrad && s.lerp_small;
  } else {
    return common;
  }
}
template <typename S>
FR_INLINE S common(S s) {
  s.gp.maximize = false;
  clear_rare(s.pen);
  if constexpr (kIsAdam<S>) {
    s.amsgrad = false;
    s.lerp_small = true;
  }
  return s;
}

// Runs update(scalars, has_scale, p, g, states) over every element (for_each_element_grouped), through the
// common instantiation when the call allows it. The flags are the same in every slot (only step-dependent
// scalars differ), so slots[0] decides.
template <typename T, typename O, int NS, typename S, typename F>
void run_update(const std::vector<Slot<T, O, NS, S>>& slots, const std::vector<GroupJob<O>>& jobs, int64_t group_dim,
                bool has_scale, const F& update) {
  if (!has_scale && is_common(slots[0].sc)) {
    for_each_element_grouped(slots, jobs, group_dim,
                             [&](const S& s, auto& p, auto g, auto& st) { update(common(s), false, p, g, st); });
  } else {
    for_each_element_grouped(slots, jobs, group_dim,
                             [&](const S& s, auto& p, auto g, auto& st) { update(s, has_scale, p, g, st); });
  }
}

// The group job of slot i, if its param gets the group prox; x == nullptr for SGD.
template <typename O>
void add_group_job(std::vector<GroupJob<O>>& jobs, const Staged& st, size_t i, double step, double group_l1, int64_t group_dim, double l2, const O* x, O bdiv, O eps) {
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

template <typename T, typename O, int NS, typename S>
Slot<T, O, NS, S> make_slot(const Staged& st, size_t i, const S& sc) {
  Slot<T, O, NS, S> sl;
  sl.p = st.lists[0][i].data_ptr<T>();
  sl.g = st.lists[1][i].const_data_ptr<T>();
  for (int k = 0; k < NS; ++k) {
    const at::Tensor& t = st.lists[2 + k][i];
    sl.s[k] = t.defined() ? t.data_ptr<O>() : nullptr;
  }
  sl.n = st.lists[0][i].numel();
  sl.sc = sc;
  return sl;
}

// The op's lr: lr_tensor's value when given (it replaces the float; read on the host here, so any device).
double lr_of(const std::optional<at::Tensor>& lr_tensor, double lr) {
  return lr_tensor.has_value() ? lr_tensor->item<double>() : lr;
}

bool skip_step(const std::optional<at::Tensor>& found_inf) {
  return found_inf.has_value() && found_inf->item<double>() != 0;
}

template <typename O>
std::pair<bool, O> scale_of(const std::optional<at::Tensor>& grad_scale) {
  if (!grad_scale.has_value()) return {false, O(1)};
  return {true, static_cast<O>(grad_scale->item<double>())};
}

// Increments a float32 step tensor (as step.add_(1) does) and returns its new value.
double advance(const at::Tensor& step) {
  float* ptr = step.data_ptr<float>();
  *ptr = *ptr + 1.0f;
  return static_cast<double>(*ptr);
}

}  // namespace

void sgd_cpu(FUSEDREG_SGD_PARAMS) {
  const bool has_momentum = momentum != 0;
  Staged st = stage("sgd_", c10::DeviceType::CPU, params, grads, {{"momentum_buffers", momentum_buffers, has_momentum}},
                    {}, false, grad_scale, found_inf, lr_tensor, group_l1, group_dim);
  if (skip_step(found_inf) || st.n == 0) return;
  lr = lr_of(lr_tensor, lr);
  const SgdArgs args = sgd_args(lr, momentum, dampening, weight_decay, nesterov, maximize, first_step,
                                penalty_args(FUSEDREG_PENALTY_NAMES));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, st.dtype, "fusedreg_sgd_cpu", [&] {
    using O = at::opmath_type<scalar_t>;
    using S = SgdScalars<O>;
    const S sc = make_sgd<O>(args);
    const auto [has_scale, scale] = scale_of<O>(grad_scale);
    std::vector<Slot<scalar_t, O, 1, S>> slots;
    std::vector<GroupJob<O>> jobs;
    for (size_t i = 0; i < st.n; ++i) {
      slots.push_back(make_slot<scalar_t, O, 1>(st, i, sc));
      add_group_job<O>(jobs, st, i, lr, group_l1, group_dim, l2, nullptr, O(1), O(0));
    }
    run_update(slots, jobs, group_dim, has_scale, [&, scale = scale](const S& s, bool hs, auto& p, auto g, auto& st_) {
      sgd_update(p, g, st_[0], s, hs, scale);
    });
  });
  st.finish();
}

void adam_cpu(FUSEDREG_ADAM_PARAMS) {
  Staged st = stage("adam_", c10::DeviceType::CPU, params, grads,
                    {{"exp_avgs", exp_avgs, true}, {"exp_avg_sqs", exp_avg_sqs, true},
                     {"max_exp_avg_sqs", max_exp_avg_sqs, amsgrad}},
                    state_steps, true, grad_scale, found_inf, lr_tensor, group_l1, group_dim);
  if (skip_step(found_inf)) return;
  lr = lr_of(lr_tensor, lr);
  const AdamArgs args = adam_args(lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad, maximize,
                                  penalty_args(FUSEDREG_PENALTY_NAMES));
  std::vector<double> steps(st.n);
  for (size_t i = 0; i < st.n; ++i) steps[i] = advance(state_steps[i]);
  if (st.n == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, st.dtype, "fusedreg_adam_cpu", [&] {
    using O = at::opmath_type<scalar_t>;
    using S = AdamScalars<O>;
    const auto [has_scale, scale] = scale_of<O>(grad_scale);
    std::vector<Slot<scalar_t, O, 3, S>> slots;
    std::vector<GroupJob<O>> jobs;
    for (size_t i = 0; i < st.n; ++i) {
      const S sc = make_adam<O>(args, steps[i]);
      slots.push_back(make_slot<scalar_t, O, 3>(st, i, sc));
      const auto& sl = slots.back();
      add_group_job<O>(jobs, st, i, lr, group_l1, group_dim, l2, amsgrad ? sl.s[2] : sl.s[1], sc.bc2_sqrt, sc.eps);
    }
    run_update(slots, jobs, group_dim, has_scale, [&, scale = scale](const S& s, bool hs, auto& p, auto g, auto& st_) {
      adam_update(p, g, st_[0], st_[1], st_[2], s, hs, scale);
    });
  });
  st.finish();
}

void adagrad_cpu(FUSEDREG_ADAGRAD_PARAMS) {
  Staged st = stage("adagrad_", c10::DeviceType::CPU, params, grads, {{"state_sums", state_sums, true}},
                    state_steps, true, grad_scale, found_inf, lr_tensor, group_l1, group_dim);
  if (skip_step(found_inf)) return;
  lr = lr_of(lr_tensor, lr);
  const AdagradArgs args =
      adagrad_args(lr, lr_decay, weight_decay, eps, maximize, penalty_args(FUSEDREG_PENALTY_NAMES));
  std::vector<double> steps(st.n);
  for (size_t i = 0; i < st.n; ++i) steps[i] = advance(state_steps[i]);
  if (st.n == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, st.dtype, "fusedreg_adagrad_cpu", [&] {
    using O = at::opmath_type<scalar_t>;
    using S = AdagradScalars<O>;
    const auto [has_scale, scale] = scale_of<O>(grad_scale);
    std::vector<Slot<scalar_t, O, 1, S>> slots;
    std::vector<GroupJob<O>> jobs;
    for (size_t i = 0; i < st.n; ++i) {
      const S sc = make_adagrad<O>(args, steps[i]);
      slots.push_back(make_slot<scalar_t, O, 1>(st, i, sc));
      add_group_job<O>(jobs, st, i, adagrad_clr(lr, lr_decay, steps[i]), group_l1, group_dim, l2, slots.back().s[0],
                       O(1), sc.eps);
    }
    run_update(slots, jobs, group_dim, has_scale, [&, scale = scale](const S& s, bool hs, auto& p, auto g, auto& st_) {
      adagrad_update(p, g, st_[0], s, hs, scale);
    });
  });
  st.finish();
}

}  // namespace fusedreg

TORCH_LIBRARY_IMPL(fusedreg, CPU, m) {
  m.impl("sgd_", &fusedreg::sgd_cpu);
  m.impl("adam_", &fusedreg::adam_cpu);
  m.impl("adagrad_", &fusedreg::adagrad_cpu);
}
