// CPU kernels: at::vec::Vectorized over the math of fusedreg_math.h, one at::parallel_for over the flattened
// elements of the whole tensor list.
#include "vec_prims.h"  // first: declares the Vectorized primitives before fusedreg_math.h

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
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

PenaltyArgs penalty_args(double l1, bool l1_subgradient, double l2, double l0, bool nonneg) {
  return PenaltyArgs{l1, l2, l0, l1_subgradient, nonneg};
}

}  // namespace

void sgd_cpu(FUSEDREG_SGD_PARAMS) {
  const bool has_momentum = momentum != 0;
  Staged st = stage("sgd_", c10::DeviceType::CPU, params, grads, {{"momentum_buffers", momentum_buffers, has_momentum}},
                    {}, false, grad_scale, found_inf);
  if (skip_step(found_inf) || st.n == 0) return;
  const SgdArgs args{lr, momentum, dampening, weight_decay, nesterov, maximize, first_step,
                     penalty_args(l1, l1_subgradient, l2, l0, nonneg)};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, st.dtype, "fusedreg_sgd_cpu", [&] {
    using O = at::opmath_type<scalar_t>;
    using S = SgdScalars<O>;
    const S sc = make_sgd<O>(args);
    const auto [has_scale, scale] = scale_of<O>(grad_scale);
    std::vector<Slot<scalar_t, O, 1, S>> slots;
    for (size_t i = 0; i < st.n; ++i) slots.push_back(make_slot<scalar_t, O, 1>(st, i, sc));
    for_each_element(slots, [&, has_scale = has_scale, scale = scale](const S& s, auto& p, auto g, auto& st_) {
      sgd_update(p, g, st_[0], s, has_scale, scale);
    });
  });
  st.finish();
}

void adam_cpu(FUSEDREG_ADAM_PARAMS) {
  Staged st = stage("adam_", c10::DeviceType::CPU, params, grads,
                    {{"exp_avgs", exp_avgs, true}, {"exp_avg_sqs", exp_avg_sqs, true},
                     {"max_exp_avg_sqs", max_exp_avg_sqs, amsgrad}},
                    state_steps, true, grad_scale, found_inf);
  if (skip_step(found_inf)) return;
  const AdamArgs args{lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad, maximize,
                      penalty_args(l1, l1_subgradient, l2, l0, nonneg)};
  std::vector<double> steps(st.n);
  for (size_t i = 0; i < st.n; ++i) steps[i] = advance(state_steps[i]);
  if (st.n == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, st.dtype, "fusedreg_adam_cpu", [&] {
    using O = at::opmath_type<scalar_t>;
    using S = AdamScalars<O>;
    const auto [has_scale, scale] = scale_of<O>(grad_scale);
    std::vector<Slot<scalar_t, O, 3, S>> slots;
    for (size_t i = 0; i < st.n; ++i) slots.push_back(make_slot<scalar_t, O, 3>(st, i, make_adam<O>(args, steps[i])));
    for_each_element(slots, [&, has_scale = has_scale, scale = scale](const S& s, auto& p, auto g, auto& st_) {
      adam_update(p, g, st_[0], st_[1], st_[2], s, has_scale, scale);
    });
  });
  st.finish();
}

void adagrad_cpu(FUSEDREG_ADAGRAD_PARAMS) {
  Staged st = stage("adagrad_", c10::DeviceType::CPU, params, grads, {{"state_sums", state_sums, true}},
                    state_steps, true, grad_scale, found_inf);
  if (skip_step(found_inf)) return;
  const AdagradArgs args{lr, lr_decay, weight_decay, eps, maximize, penalty_args(l1, l1_subgradient, l2, l0, nonneg)};
  std::vector<double> steps(st.n);
  for (size_t i = 0; i < st.n; ++i) steps[i] = advance(state_steps[i]);
  if (st.n == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, st.dtype, "fusedreg_adagrad_cpu", [&] {
    using O = at::opmath_type<scalar_t>;
    using S = AdagradScalars<O>;
    const auto [has_scale, scale] = scale_of<O>(grad_scale);
    std::vector<Slot<scalar_t, O, 1, S>> slots;
    for (size_t i = 0; i < st.n; ++i)
      slots.push_back(make_slot<scalar_t, O, 1>(st, i, make_adagrad<O>(args, steps[i])));
    for_each_element(slots, [&, has_scale = has_scale, scale = scale](const S& s, auto& p, auto g, auto& st_) {
      adagrad_update(p, g, st_[0], s, has_scale, scale);
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
