// The CPU kernels' shared element loop: at::vec::Vectorized over the math of fusedreg_math.h, one
// at::parallel_for over the flattened elements of the whole tensor list (Slot, process_range, for_each_element),
// with the group prox of cpu/group.h fused in (for_each_element_grouped); run_update picks the loop's
// instantiation; and the call's scalars every kernel reads (lr, found_inf, grad_scale, the step counters).
#pragma once

#include "vec_prims.h"  // first: declares the Vectorized primitives before fusedreg_math.h

#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <optional>
#include <type_traits>
#include <utility>
#include <vector>

#include "../ops.h"
#include "group_columns.h"  // and through it group_rows.h, group_solve.h, group.h

namespace fusedreg {
// Internal linkage, as when every kernel was one file: each op's file gets its own copy, inlined as before.
namespace {

template <typename T>
constexpr bool kReduced = std::is_same_v<T, c10::BFloat16> || std::is_same_v<T, c10::Half>;

// Work is split in units of kUnit elements of one tensor, so that thread boundaries fall on whole vectors.
constexpr int64_t kUnit = 64;
constexpr int64_t kGrainUnits = 32768 / kUnit;
// Row groups: the elements of the rows updated before their prox runs (each array's block stays in L2).
constexpr int64_t kRowBlock = 16384;

// One tensor's pointers (params, grads, NS optional state lists) and its scalars. n: the grad's elements. With
// sparse grads, rows: the param row of each of the n / K values rows (K elements each); else nullptr.
template <typename T, typename O, int NS, typename S>
struct Slot {
  T* p;
  const T* g;
  std::array<O*, NS> s;
  int64_t n;
  S sc;
  const int64_t* rows = nullptr;
  int64_t K = 0;
};

template <typename T, typename O, int NS, typename S>
Slot<T, O, NS, S> make_slot(const Staged& st, size_t i, const S& sc) {
  Slot<T, O, NS, S> sl;
  sl.p = st.lists[0][i].data_ptr<T>();
  sl.g = st.lists[1][i].const_data_ptr<T>();
  for (int k = 0; k < NS; ++k) {
    const at::Tensor& t = st.lists[2 + k][i];
    sl.s[k] = t.defined() ? t.data_ptr<O>() : nullptr;
  }
  sl.n = st.lists[1][i].numel();
  sl.sc = sc;
  if (!st.rows.empty()) {
    sl.rows = st.rows[i].const_data_ptr<int64_t>();
    sl.K = row_len(st.lists[0][i]);
  }
  return sl;
}

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

// Parallel over the concatenation of parts of the given sizes: f(t, b, e) for the run [b, e) of part t that a task
// takes (a task may span several parts).
template <typename F>
void for_each_span(const std::vector<int64_t>& sizes, int64_t grain, const F& f) {
  std::vector<int64_t> off(sizes.size() + 1, 0);
  for (size_t t = 0; t < sizes.size(); ++t) off[t + 1] = off[t] + sizes[t];
  if (off.back() == 0) return;
  at::parallel_for(0, off.back(), std::max<int64_t>(1, grain), [&](int64_t b, int64_t e) {
    size_t t = std::upper_bound(off.begin(), off.end(), b) - off.begin() - 1;
    for (; t < sizes.size() && off[t] < e; ++t)
      if (off[t] < off[t + 1]) f(t, std::max(b, off[t]) - off[t], std::min(e, off[t + 1]) - off[t]);
  });
}

// Runs f over every element of every slot, parallel over the flattened list.
template <typename T, typename O, int NS, typename S, typename F>
void for_each_element(const std::vector<Slot<T, O, NS, S>>& slots, const F& f) {
  std::vector<int64_t> units(slots.size());
  for (size_t t = 0; t < slots.size(); ++t) units[t] = (slots[t].n + kUnit - 1) / kUnit;
  for_each_span(units, kGrainUnits, [&](size_t t, int64_t b, int64_t e) {
    const auto& sl = slots[t];
    // A local copy of the scalars: stores through the float pointers cannot alias it, so the compiler keeps the
    // scalars in registers instead of reloading them after every store.
    const S sc = sl.sc;
    process_range(sl, b * kUnit, std::min(e * kUnit, sl.n), [&](auto& p, auto g, auto& s) { f(sc, p, g, s); });
  });
}

// Sparse grads: runs f over the rows present in each slot's grad, parallel over all those rows; each row runs
// process_range on the slot moved to it (param and state at row rows[j], grad at values row j), so a sparse
// step is the dense element loop on those rows, and no other element is read or written.
template <typename T, typename O, int NS, typename S, typename F>
void for_each_row(const std::vector<Slot<T, O, NS, S>>& slots, const F& f) {
  std::vector<int64_t> rows(slots.size());
  int64_t widest = 1;
  for (size_t t = 0; t < slots.size(); ++t) {
    rows[t] = slots[t].K ? slots[t].n / slots[t].K : 0;
    widest = std::max(widest, slots[t].K);
  }
  for_each_span(rows, kGrainUnits * kUnit / widest, [&](size_t t, int64_t b, int64_t e) {
    const auto& sl = slots[t];
    const S sc = sl.sc;
    const int64_t K = sl.K;
    for (int64_t j = b; j < e; ++j) {
      auto row = sl;
      const int64_t at = sl.rows[j] * K;
      row.p = sl.p + at;
      row.g = sl.g + j * K;
      for (int k = 0; k < NS; ++k) row.s[k] = sl.s[k] ? sl.s[k] + at : nullptr;
      row.n = K;
      process_range(row, 0, K, [&](auto& p, auto g, auto& s) { f(sc, p, g, s); });
    }
  });
}

// Runs f over every element of every slot, then the group prox of each job: row groups in the same parallel
// chunk as their row's update (the row is still in cache), column
// groups right after their own param's update (a column needs every row; the param is then still in the
// last-level cache when it fits there).
template <typename T, typename O, int NS, typename S, typename F>
void for_each_element_grouped(const std::vector<Slot<T, O, NS, S>>& slots, const std::vector<GroupJob<O>>& jobs,
                              int64_t group_dim, const F& f) {
  // The metric ops' updates return their denominators, which the row prox takes.
  constexpr bool kDenoms = !std::is_void_v<decltype(f(std::declval<const S&>(), std::declval<Vec<O>&>(),
                                                      std::declval<Vec<O>>(), std::declval<std::array<Vec<O>, NS>&>()))>;
  if (!slots.empty() && slots[0].rows) return for_each_row(slots, f);  // no group lasso with sparse grads
  if (jobs.empty()) return for_each_element(slots, f);
  std::vector<Slot<T, O, NS, S>> flat;
  std::vector<char> fused(slots.size(), 0);
  for (const auto& job : jobs) fused[job.slot] = 1;
  for (size_t i = 0; i < slots.size(); ++i)
    if (!fused[i]) flat.push_back(slots[i]);
  for_each_element(flat, f);
  if constexpr (std::is_same_v<T, O>) {
    if (group_dim == 0) {
      // Each row's update feeds its prox's sums (a vector at a time, from registers); the prox then shrinks the
      // row from L1. The rows of every job in one parallel region (a region is a fixed cost of the step).
      std::vector<int64_t> groups;
      int64_t widest = 1;
      for (const auto& job : jobs) groups.push_back(job.sh.G), widest = std::max(widest, job.sh.K);
      for_each_span(groups, kGrainUnits * kUnit / widest, [&](size_t t, int64_t b, int64_t e) {
        const GroupJob<O>& job = jobs[t];
        const auto& sl = slots[job.slot];
        const int64_t K = job.sh.K;
        const S sc = sl.sc;
        O* den = kDenoms ? row_panel<O>(K + Vec<O>::size()) : nullptr;
        for (int64_t g = b; g < e; ++g) {
          if (kDenoms && job.x == nullptr) {
            // A metric op's job without a metric (decoupled l1): SGD's prox, the denominators unused, from a pass
            // over the row just written (in L1). Fed by the update, the sums went through memory a vector at a
            // time and cost Adam's compute-bound step on one thread a third more.
            process_range(sl, g * K, (g + 1) * K, [&](auto& p, auto gr, auto& st) { f(sc, p, gr, st); });
            closed_form_row<T, O>(sl.p, job, g);
            continue;
          }
          RowSums<O> rs(job, den, K);
          process_range(sl, g * K, (g + 1) * K, [&](auto& p, auto gr, auto& st) {
            if constexpr (kDenoms) {
              const auto d = f(sc, p, gr, st);
              rs.add(p, d);
            } else {
              f(sc, p, gr, st);
              rs.add(p);
            }
          });
          finish_row<T, O>(sl.p, job, g, rs);
        }
      });
      return;
    }
    // Columns, a param at a time (its shrink then finds its param and state still in the last-level cache when they
    // fit there: one region per phase for all the params at once was slower): the update of each fixed block of
    // rows feeds that block's lane sums (ColumnSums), then the roots, then one pass over the param shrinks it.
    for (const auto& job : jobs) {
      const auto& sl = slots[job.slot];
      ColumnSums<O> cs(job);
      const int64_t per = std::max<int64_t>(1, job.sh.A / cs.nb * cs.R);  // elements a block
      at::parallel_for(0, cs.nb, std::max<int64_t>(1, kGrainUnits * kUnit / per), [&](int64_t b0, int64_t b1) {
        const S sc = sl.sc;
        const Vec<O> c = cs.c, c2 = cs.c2;
        const bool lo = cs.lo_needed;
        const int64_t step = cs.np * Vec<O>::size();
        const bool metric = kDenoms && job.x != nullptr;  // see the rows
        for (int64_t b = b0; b < b1; ++b) {
          auto part = cs.part(b);
          for (int64_t a = cs.row0(b); a < cs.row0(b + 1); ++a) {
            O* q = cs.at(part, 0);
            process_range(sl, a * cs.R, (a + 1) * cs.R, [&](auto& p, auto gr, auto& st) {
              if constexpr (kDenoms) {
                const auto d = f(sc, p, gr, st);
                if (metric) {
                  ColumnSums<O>::add(q, p, d, c, c2, lo);
                } else {
                  ColumnSums<O>::add(q, p);
                }
              } else {
                f(sc, p, gr, st);
                ColumnSums<O>::add(q, p);
              }
              q += step;
            });
            if ((a - cs.row0(b) + 1) % kPart == 0 || a + 1 == cs.row0(b + 1)) cs.flush(part);
          }
        }
      });
      at::parallel_for(0, job.sh.G, std::max<int64_t>(1, 1024 / job.sh.K),
                       [&](int64_t g0, int64_t g1) { column_roots(cs, g0, g1); });
      prepare_shrink<T, O>(sl.p, cs);
      at::parallel_for(0, job.sh.A, std::max<int64_t>(1, kGrainUnits * kUnit / cs.R),
                       [&](int64_t a0, int64_t a1) { shrink_rows<T, O>(sl.p, cs, a0, a1); });
    }
    return;
  }
  for (const auto& job : jobs) {
    const auto& sl = slots[job.slot];
    const GroupShape& sh = job.sh;
    if (group_dim == 0) {
      // bf16/fp16: the update runs a block of rows at a time (long runs for the hardware prefetchers), keeping the
      // denominators it returns (the metric ops') in a panel, then the prox of each of its rows, from L2.
      const int64_t block = std::max<int64_t>(1, kRowBlock / sh.K);
      const bool metric = kDenoms && job.x != nullptr;  // see the fp32/fp64 rows
      at::parallel_for(0, sh.G, std::max<int64_t>(1, kGrainUnits * kUnit / sh.K), [&](int64_t b, int64_t e) {
        const S sc = sl.sc;
        O* den = nullptr;
        for (int64_t g0 = b; g0 < e; g0 += block) {
          const int64_t g1 = std::min(e, g0 + block);
          if (metric) den = row_panel<O>((g1 - g0) * sh.K + 2 * Vec<T>::size());
          O* d = den;
          process_range(sl, g0 * sh.K, g1 * sh.K, [&](auto& p, auto gr, auto& st) {
            if constexpr (kDenoms) {
              const auto dv = f(sc, p, gr, st);
              if (d != nullptr) {
                dv.store(d);  // in element order: process_range calls f a vector at a time
                d += Vec<O>::size();
              }
            } else {
              f(sc, p, gr, st);
            }
          });
          for (int64_t g = g0; g < g1; ++g) group_prox_row<T, O>(sl.p, job, g, den ? den + (g - g0) * sh.K : nullptr);
        }
      });
    } else {
      // bf16/fp16: the sums are of the rounded values, from the written param, per column strip.
      for_each_element(std::vector<Slot<T, O, NS, S>>{sl}, f);
      group_prox_columns<T, O>(sl.p, job, kGrainUnits * kUnit);
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
                             [&](const S& s, auto& p, auto g, auto& st) { return update(common(s), false, p, g, st); });
  } else {
    for_each_element_grouped(slots, jobs, group_dim,
                             [&](const S& s, auto& p, auto g, auto& st) { return update(s, has_scale, p, g, st); });
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The call's scalars, read on the host.

// The op's lr: lr_tensor's value when given (it replaces the float; read on the host here, so any device).
inline double lr_of(const std::optional<at::Tensor>& lr_tensor, double lr) {
  return lr_tensor.has_value() ? lr_tensor->item<double>() : lr;
}

inline bool skip_step(const std::optional<at::Tensor>& found_inf) {
  return found_inf.has_value() && found_inf->item<double>() != 0;
}

template <typename O>
std::pair<bool, O> scale_of(const std::optional<at::Tensor>& grad_scale) {
  if (!grad_scale.has_value()) return {false, O(1)};
  return {true, static_cast<O>(grad_scale->item<double>())};
}

// Increments a float32 step tensor (as step.add_(1) does) and returns its new value.
inline double advance(const at::Tensor& step) {
  float* ptr = step.data_ptr<float>();
  *ptr = *ptr + 1.0f;
  return static_cast<double>(*ptr);
}

// ---------------------------------------------------------------------------------------------------------------
// The whole call of an op with NS state lists and no metric (SGD, Lion: 1; muon_: 0): update(p, g, states, scalars,
// has_scale, scale) over every element, with the group prox of SGD's closed form and the scalar step lr.
template <typename T, int NS, typename S, typename F>
void run_closed_form(const Staged& st, const S& sc, double lr, double group_l1, int64_t group_dim, double l2,
                     const std::optional<at::Tensor>& grad_scale, const F& update) {
  using O = at::opmath_type<T>;
  const auto [has_scale, scale] = scale_of<O>(grad_scale);
  std::vector<Slot<T, O, NS, S>> slots;
  std::vector<GroupJob<O>> jobs;
  for (size_t i = 0; i < st.n; ++i) {
    slots.push_back(make_slot<T, O, NS>(st, i, sc));
    add_group_job<O>(jobs, st, i, lr, group_l1, group_dim, l2, nullptr, O(1), O(0));
  }
  run_update(slots, jobs, group_dim, has_scale, [&, scale = scale](const S& s, bool hs, auto& p, auto g, auto& st_) {
    update(p, g, st_, s, hs, scale);
  });
}

}  // namespace
}  // namespace fusedreg
