// fusedreg._C.lists_ok: the optimizers' per-step input check (fusedreg.functional.check_tensors) as one C++ pass.
//
// It answers only "would check_tensors pass?", and it answers true only when the Python walk surely would: any
// doubt (a tensor subclass, an unusual device, anything the walk would reject) is false, and the caller then
// runs the walk, which finds the error and words it. So the errors are written once, in Python, and this file
// only makes the common case cheap: on 34 params with Adam state the walk costs ~0.3 ms per step, this ~20 us.
#include <ATen/MemoryOverlap.h>
#include <ATen/core/Tensor.h>
#include <torch/csrc/utils/pybind.h>

#include "ops.h"

#include <algorithm>
#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

namespace fusedreg {
namespace {

using Maybe = std::optional<at::Tensor>;

// A plain dense strided tensor whose attributes read here as they do in Python (no __torch_dispatch__ subclass or
// functional wrapper) and whose storage gives a data_ptr.
bool plain(const at::Tensor& t) {
  return t.defined() && t.layout() == at::kStrided && t.has_storage() && !t.key_set().has(c10::DispatchKey::Python) &&
         !t.key_set().has(c10::DispatchKey::Functionalize);
}

bool lists_ok(const std::vector<at::Tensor>& params, const std::vector<Maybe>& grads,
              const std::vector<std::vector<Maybe>>& states, int64_t steps, const std::vector<bool>& may_miss) {
  const size_t n = params.size();
  if (grads.size() != n || may_miss.size() != states.size()) return false;
  for (const auto& ts : states) {
    if (ts.size() != n) return false;
  }
  // Every tensor updated in place (params and state, not grads), by (device, data_ptr): each must appear once.
  std::vector<std::pair<int64_t, uintptr_t>> written;
  written.reserve(n * (1 + states.size()));
  auto once = [&](const at::Tensor& t) {
    if (!t.is_contiguous() && at::has_internal_overlap(t) == at::MemOverlap::Yes) return false;
    if (t.numel() != 0) {
      const auto d = t.device();
      written.emplace_back((static_cast<int64_t>(d.type()) << 16) | (d.index() + 1),
                           reinterpret_cast<uintptr_t>(t.data_ptr()));
    }
    return true;
  };
  for (size_t i = 0; i < n; ++i) {
    const at::Tensor& p = params[i];
    if (!plain(p) || !at::isFloatingType(p.scalar_type()) || p.device().is_meta()) return false;
    const Maybe& g = grads[i];
    if (!g || !plain(*g) || g->scalar_type() != p.scalar_type() || g->device() != p.device() ||
        g->sizes() != p.sizes()) {
      return false;
    }
    if (!once(p)) return false;
    const auto opmath = p.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
    for (size_t k = 0; k < states.size(); ++k) {
      const Maybe& t = states[k][i];
      if (!t) {
        if (may_miss[k]) continue;
        return false;
      }
      if (!plain(*t) || t->device() != p.device()) return false;
      const bool ok = static_cast<int64_t>(k) == steps
                          ? t->numel() == 1 && t->scalar_type() == at::kFloat
                          : t->sizes() == p.sizes() && t->scalar_type() == opmath;
      if (!ok || !once(*t)) return false;
    }
  }
  std::sort(written.begin(), written.end());
  return std::adjacent_find(written.begin(), written.end()) == written.end();
}

// fusedreg._C.distinct_rows: whether a sparse grad's row indices (an int64 1-D contiguous CPU tensor) are distinct
// and in [0, n), so that they go to the kernels as they are, without coalesce()'s sort (fusedreg.functional).
bool distinct(const at::Tensor& index, int64_t n) {
  return plain(index) && index.device().is_cpu() && index.scalar_type() == at::kLong && index.dim() == 1 &&
         index.is_contiguous() && distinct_rows(index.const_data_ptr<int64_t>(), index.numel(), n);
}

}  // namespace

void bind_lists_ok(pybind11::module_& m) {
  m.def("distinct_rows", &distinct, pybind11::arg("index"), pybind11::arg("n"),
        "True when the int64 1-D contiguous CPU tensor `index` holds distinct values in [0, n) (else False).");
  m.def("lists_ok", &lists_ok, pybind11::arg("params"), pybind11::arg("grads"), pybind11::arg("states"),
        pybind11::arg("steps"), pybind11::arg("may_miss"),
        "True only when fusedreg.functional.check_tensors surely passes: params, grads, the state lists (the one "
        "at index `steps` holds step counters, -1 for none) and, per state list, whether None entries are allowed.");
}

}  // namespace fusedreg
