// Host-side declarations and argument checks shared by the CPU and CUDA kernels (no CUDA headers here).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <optional>
#include <utility>
#include <vector>

#include "fusedreg_math.h"

namespace fusedreg {

// The kernels' parameters, in the schema's order (fusedreg/_ops.py ARGS). Every op ends with the penalties:
// the elementwise ones (FUSEDREG_ELEMENTWISE_PARAMS, in fusedreg_math.h, which goes on to the math as
// penalty_args(FUSEDREG_PENALTY_NAMES), so that no kernel lists them), then these.
#define FUSEDREG_PENALTY_PARAMS                                                                           \
  FUSEDREG_ELEMENTWISE_PARAMS, double group_l1, int64_t group_dim, const std::optional<at::Tensor>&grad_scale, \
      const std::optional<at::Tensor>&found_inf, const std::optional<at::Tensor>&lr_tensor

// Sparse grads (fusedreg/_ops.py ROWS), the last argument of the ops whose math is row-separable.
#define FUSEDREG_ROWS_PARAM std::optional<at::TensorList> rows

// The rows list of a call: empty for dense grads (rows None or []).
inline at::TensorList rows_of(const std::optional<at::TensorList>& rows) {
  return rows.has_value() ? *rows : at::TensorList();
}

#define FUSEDREG_SGD_PARAMS                                                                          \
  at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers, double lr, double momentum, \
      double dampening, double weight_decay, bool nesterov, bool maximize, bool first_step,           \
      FUSEDREG_PENALTY_PARAMS, FUSEDREG_ROWS_PARAM

#define FUSEDREG_ADAM_PARAMS                                                                         \
  at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, at::TensorList exp_avg_sqs,   \
      at::TensorList max_exp_avg_sqs, at::TensorList state_steps, double lr, double beta1, double beta2, \
      double eps, double weight_decay, bool decoupled, bool amsgrad, bool maximize, FUSEDREG_PENALTY_PARAMS

#define FUSEDREG_ADAGRAD_PARAMS                                                                      \
  at::TensorList params, at::TensorList grads, at::TensorList state_sums, at::TensorList state_steps,   \
      double lr, double lr_decay, double weight_decay, double eps, bool maximize, FUSEDREG_PENALTY_PARAMS, \
      FUSEDREG_ROWS_PARAM

#define FUSEDREG_FTRL_PARAMS                                                                         \
  at::TensorList params, at::TensorList grads, at::TensorList accumulators, at::TensorList linears, double lr, \
      double lr_power, double beta, double l2_shrinkage, bool maximize, FUSEDREG_PENALTY_PARAMS,      \
      FUSEDREG_ROWS_PARAM

#define FUSEDREG_LION_PARAMS                                                                         \
  at::TensorList params, at::TensorList grads, at::TensorList exp_avgs, double lr, double beta1, double beta2, \
      double weight_decay, bool maximize, FUSEDREG_PENALTY_PARAMS

// muon_momentum_ takes only the gradient's preprocessing of the penalties (fusedreg/_ops.py).
#define FUSEDREG_MUON_MOMENTUM_PARAMS                                                                  \
  at::TensorList params, at::TensorList grads, at::TensorList momentum_buffers, at::TensorList updates,    \
      double momentum, bool nesterov, bool maximize, double l1, bool l1_subgradient,                    \
      const std::optional<at::Tensor>&grad_scale, const std::optional<at::Tensor>&found_inf

#define FUSEDREG_MUON_PARAMS \
  at::TensorList params, at::TensorList grads, double lr, double lr_ratio, double weight_decay, FUSEDREG_PENALTY_PARAMS

void sgd_cpu(FUSEDREG_SGD_PARAMS);
void adam_cpu(FUSEDREG_ADAM_PARAMS);
void adagrad_cpu(FUSEDREG_ADAGRAD_PARAMS);
void sgd_cuda(FUSEDREG_SGD_PARAMS);
void adam_cuda(FUSEDREG_ADAM_PARAMS);
void adagrad_cuda(FUSEDREG_ADAGRAD_PARAMS);
void ftrl_cpu(FUSEDREG_FTRL_PARAMS);
void ftrl_cuda(FUSEDREG_FTRL_PARAMS);
void lion_cpu(FUSEDREG_LION_PARAMS);
void lion_cuda(FUSEDREG_LION_PARAMS);
void muon_momentum_cpu(FUSEDREG_MUON_MOMENTUM_PARAMS);
void muon_cpu(FUSEDREG_MUON_PARAMS);
void muon_momentum_cuda(FUSEDREG_MUON_MOMENTUM_PARAMS);
void muon_cuda(FUSEDREG_MUON_PARAMS);

inline at::ScalarType opmath_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// One state list of an op: its name, its tensors, and whether it is in use (an unused list must be empty).
struct StateList {
  const char* name;
  at::TensorList tensors;
  bool used;
};

// The tensors of one call, checked and laid out for flat indexing: lists[0] params, lists[1] grads, then the
// state lists in order (an unused list holds undefined tensors). Where the tensors of one index do not share
// one dense layout, contiguous temporaries stand in and are copied back by finish(). With `rowmajor` (group
// lasso: rows and columns must be where the indexing expects them) params with dim >= 2 are made contiguous.
// With sparse grads (rows non-empty: distinct indices, in any order) every tensor is contiguous: element k of
// values row j (grads[i] flat at j*K + k) updates element rows[i][j]*K + k of the param and its state (K: the
// param's row length, row_len()).
struct Staged {
  std::vector<std::vector<at::Tensor>> lists;
  std::vector<at::Tensor> rows;  // empty: dense grads
  std::vector<std::pair<at::Tensor, at::Tensor>> writeback;  // (original, temporary)
  at::ScalarType dtype = at::kFloat;
  size_t n = 0;

  void finish() {
    for (auto& wb : writeback) wb.first.copy_(wb.second);
  }
};

// Whether the m indices ix are distinct and in [0, n): sparse grads' rows, updated in parallel (a repeated row
// would race) and written through (one out of range would write outside the param). One bit per row.
inline bool distinct_rows(const int64_t* ix, int64_t m, int64_t n) {
  std::vector<uint64_t> seen(static_cast<size_t>((n + 63) / 64), 0);
  for (int64_t j = 0; j < m; ++j) {
    const int64_t r = ix[j];
    if (r < 0 || r >= n) return false;
    const uint64_t bit = uint64_t(1) << (r & 63);
    if (seen[r >> 6] & bit) return false;
    seen[r >> 6] |= bit;
  }
  return true;
}

// Elements per dim-0 row of p (the product of its other sizes).
inline int64_t row_len(const at::Tensor& p) {
  int64_t k = 1;
  for (int64_t d = 1; d < p.dim(); ++d) k *= p.size(d);
  return k;
}

inline Staged stage(const char* op, c10::DeviceType device_type, at::TensorList params, at::TensorList grads,
                    std::initializer_list<StateList> states, at::TensorList steps, bool has_steps,
                    const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf,
                    const std::optional<at::Tensor>& lr_tensor, double group_l1, int64_t group_dim,
                    at::TensorList rows = {}) {
  // Checked here, before any kernel runs: a bad group_dim found later would leave a half-done step.
  TORCH_CHECK(group_dim == 0 || group_dim == 1, "fusedreg::", op,
              ": group_dim must be 0 (rows) or 1 (columns), got ", group_dim);
  const bool rowmajor = group_l1 != 0;  // the group prox walks params in row-major order
  const bool sparse = !rows.empty();
  Staged st;
  const size_t n = params.size();
  st.n = n;
  TORCH_CHECK(grads.size() == n, "fusedreg::", op, ": got ", n, " params but ", grads.size(), " grads");
  if (sparse) {
    TORCH_CHECK(rows.size() == n, "fusedreg::", op, ": got ", n, " params but ", rows.size(), " rows");
    TORCH_CHECK(group_l1 == 0, "fusedreg::", op, ": group lasso (group_l1) does not support sparse grads (rows)");
  }
  for (const auto& s : states) {
    if (s.used) {
      TORCH_CHECK(s.tensors.size() == n, "fusedreg::", op, ": got ", n, " params but ", s.tensors.size(), " ",
                  s.name);
    } else {
      TORCH_CHECK(s.tensors.empty(), "fusedreg::", op, ": ", s.name,
                  " must be empty when the option that uses it is off");
    }
  }
  if (has_steps) {
    TORCH_CHECK(steps.size() == n, "fusedreg::", op, ": got ", n, " params but ", steps.size(), " state_steps");
  }
  if (n == 0) return st;
  const at::Tensor& p0 = params[0];
  const auto dtype = p0.scalar_type();
  const auto device = p0.device();
  st.dtype = dtype;
  TORCH_CHECK(device.type() == device_type, "fusedreg::", op, ": params must be on ",
              c10::DeviceTypeName(device_type), ", got ", device);
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kBFloat16 || dtype == at::kHalf,
              "fusedreg::", op, ": params must be float32, float64, bfloat16 or float16, got ", dtype);
  const auto odt = opmath_dtype(dtype);
  for (const auto* opt : {&grad_scale, &found_inf, &lr_tensor}) {
    if (opt->has_value()) {
      const at::Tensor& t = **opt;
      TORCH_CHECK(t.numel() == 1 && t.is_floating_point(), "fusedreg::", op,
                  ": grad_scale, found_inf and lr_tensor must be one-element floating tensors");
      if (device_type != c10::DeviceType::CPU) {
        TORCH_CHECK(t.device() == device, "fusedreg::", op, ": grad_scale/found_inf/lr_tensor must be on ", device,
                    ", got ", t.device());
      }
    }
  }

  st.lists.resize(2 + states.size());
  for (auto& l : st.lists) l.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = params[i];
    TORCH_CHECK(p.defined() && p.layout() == at::kStrided, "fusedreg::", op, ": params[", i,
                "] must be a defined strided tensor");
    TORCH_CHECK(p.scalar_type() == dtype && p.device() == device, "fusedreg::", op,
                ": all params of one call must share dtype and device; params[0] is ", dtype, " on ", device,
                ", params[", i, "] is ", p.scalar_type(), " on ", p.device());
    const at::Tensor& g = grads[i];
    TORCH_CHECK(g.defined() && g.layout() == at::kStrided, "fusedreg::", op, ": grads[", i,
                "] must be a defined strided tensor");
    bool same_layout;
    if (sparse) {
      const at::Tensor& r = rows[i];
      TORCH_CHECK(r.defined() && r.scalar_type() == at::kLong && r.dim() == 1 && r.device() == device &&
                      p.dim() >= 1,
                  "fusedreg::", op, ": rows[", i, "] must be a 1-D int64 tensor on ", device,
                  " (params[", i, "] with dim >= 1)");
      std::vector<int64_t> want = p.sizes().vec();
      want[0] = r.size(0);
      TORCH_CHECK(g.scalar_type() == dtype && g.device() == device && g.sizes() == at::IntArrayRef(want),
                  "fusedreg::", op, ": grads[", i, "] must be the ", dtype, " values of rows[", i, "], shape ",
                  at::IntArrayRef(want), ", got ", g.scalar_type(), " ", g.sizes());
      at::Tensor rc = r.contiguous();
      if (device_type == c10::DeviceType::CPU) {
        // On CUDA the kernels check the range, and the callers (fusedreg.functional) pass distinct rows.
        TORCH_CHECK(distinct_rows(rc.const_data_ptr<int64_t>(), rc.numel(), p.size(0)), "fusedreg::", op, ": rows[",
                    i, "] must be distinct indices in [0, ", p.size(0), ") (a coalesced sparse grad's)");
      }
      st.rows.push_back(std::move(rc));
      same_layout = p.is_contiguous() && g.is_contiguous();
    } else {
      TORCH_CHECK(g.scalar_type() == dtype && g.device() == device && g.sizes() == p.sizes(), "fusedreg::", op,
                  ": grads[", i, "] must match params[", i, "] in dtype, device and shape");
      same_layout = p.is_non_overlapping_and_dense() && g.is_non_overlapping_and_dense() &&
                    g.strides() == p.strides() && (!rowmajor || p.dim() < 2 || p.is_contiguous());
    }
    for (const auto& s : states) {
      if (!s.used) continue;
      const at::Tensor& t = s.tensors[i];
      TORCH_CHECK(t.defined() && t.layout() == at::kStrided, "fusedreg::", op, ": ", s.name, "[", i,
                  "] must be a defined strided tensor");
      TORCH_CHECK(t.scalar_type() == odt && t.device() == device && t.sizes() == p.sizes(), "fusedreg::", op,
                  ": ", s.name, "[", i, "] must be ", odt, " on ", device, " with the shape of params[", i,
                  "], got ", t.scalar_type(), " on ", t.device(), " with shape ", t.sizes());
      same_layout = same_layout && (sparse ? t.is_contiguous()
                                           : t.is_non_overlapping_and_dense() && t.strides() == p.strides());
    }
    if (has_steps) {
      const at::Tensor& s = steps[i];
      TORCH_CHECK(s.defined() && s.numel() == 1 && s.scalar_type() == at::kFloat && s.device() == device,
                  "fusedreg::", op, ": state_steps[", i, "] must be a one-element float32 tensor on ", device);
    }
    auto put = [&](size_t k, const at::Tensor& t, bool mutated) {
      if (same_layout || !t.defined()) {
        st.lists[k].push_back(t);
        return;
      }
      at::Tensor c = t.contiguous();  // sparse: the row indexing needs every tensor contiguous
      if (mutated && !c.is_same(t)) st.writeback.emplace_back(t, c);
      st.lists[k].push_back(c);
    };
    put(0, p, true);
    put(1, g, false);
    size_t k = 2;
    for (const auto& s : states) {
      put(k++, s.used ? s.tensors[i] : at::Tensor(), true);
    }
  }
  return st;
}

// A param with dim >= 2 as (A, G, K): element k of group g in outer slice a sits at (a*G + g)*K + k. Rows
// (group_dim 0) are A = 1, G = size(0), K = the rest; columns (group_dim 1) A = size(0), G = size(1), K = the rest.
struct GroupShape {
  int64_t A, G, K;
};

inline GroupShape group_shape(const at::Tensor& p, int64_t group_dim) {
  const int64_t d0 = p.size(0), d1 = p.size(1);
  const int64_t rest = d0 * d1 == 0 ? 0 : p.numel() / (d0 * d1);
  return group_dim == 0 ? GroupShape{1, d0, d1 * rest} : GroupShape{d0, d1, rest};
}

// Whether a param gets the group prox at this step (stage() has checked group_dim).
inline bool has_groups(const at::Tensor& p, double step, double group_l1) {
  return group_l1 != 0 && step * group_l1 != 0 && p.dim() >= 2 && p.numel() > 0;
}

}  // namespace fusedreg
