// What the CUDA kernels share: multi-tensor launches (the scheme of ATen's MultiTensorApply.cuh, written for
// fusedreg), the scalars read on the device (DeviceArgs), and the passes enqueued after an op's kernel (group_prox
// in group.cu, advance_steps in steps.cu). Each launch covers up to kMaxBlocks chunks of kChunk elements from up to
// max_tensors<N>() tensors, all addresses passed by value in the kernel arguments (under the 4 KB limit). Each
// block runs one chunk, with kILP-wide vector loads and stores when every pointer of the tensor is aligned for
// them. 64-bit indexing.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <type_traits>
#include <vector>

#include "../fusedreg_math.h"
#include "../ops.h"

namespace fusedreg {
namespace cuda {

constexpr int64_t kChunk = 65536;
constexpr int kThreads = 512;
constexpr int kILP = 4;
constexpr int kMaxBlocks = 320;

template <int N>
constexpr int max_tensors() {
  return N <= 2 ? 64 : (N == 3 ? 48 : (N == 4 ? 36 : 30));
}

// N lists (params, grads, states); addr[k][t] is nullptr for an unused state list. numel: the grad's elements.
// Rows (sparse grads, Staged::rows): per tensor the param row of each values row, the row length and the
// param's dim 0; fewer tensors per launch so that the arguments stay under 4 KB.
template <int N, bool Rows = false>
struct TensorListMeta {
  static constexpr bool kRows = Rows;
  static constexpr int kTensors = max_tensors<Rows ? N + 3 : N>();
  static constexpr int kRowSlots = Rows ? kTensors : 1;
  void* addr[N][kTensors];
  int64_t numel[kTensors];
  const float* step[kTensors];  // the step counter before this call, or nullptr
  const int64_t* rows[kRowSlots];
  int64_t row_len[kRowSlots];
  int64_t nrows[kRowSlots];
  unsigned char block_to_tensor[kMaxBlocks];
  int block_to_chunk[kMaxBlocks];
};

// Packs the tensors of `lists` (N lists of equal length; an undefined tensor means "unused") into launches;
// launch(meta, blocks) enqueues one kernel. With Rows, chunks cover the grads (the rows' values) and `rows`
// holds each tensor's row indices, which must be distinct (blocks update rows in parallel): the kernels check their
// range but not that (it would need the indices on the host, a sync); the Python path makes them distinct
// (fusedreg.functional._coalesced; tests/test_sparse.py steps uncoalesced grads with repeated rows through it).
template <int N, bool Rows = false, typename Launch>
void multi_tensor_apply(const std::vector<std::vector<at::Tensor>>& lists, at::TensorList steps,
                        const Launch& launch, at::TensorList rows = {}) {
  TORCH_INTERNAL_ASSERT(lists.size() == N && (!Rows || rows.size() == lists[0].size()));
  using Meta = TensorListMeta<N, Rows>;
  Meta meta;
  int nt = 0, nb = 0;
  const size_t n = lists[0].size();
  auto copy_slot = [&](int to, int from) {
    for (int k = 0; k < N; ++k) meta.addr[k][to] = meta.addr[k][from];
    meta.numel[to] = meta.numel[from];
    meta.step[to] = meta.step[from];
    if constexpr (Rows) {
      meta.rows[to] = meta.rows[from];
      meta.row_len[to] = meta.row_len[from];
      meta.nrows[to] = meta.nrows[from];
    }
  };
  for (size_t t = 0; t < n; ++t) {
    const int64_t numel = lists[1][t].numel();
    if (numel == 0) continue;
    for (int k = 0; k < N; ++k) {
      const at::Tensor& x = lists[k][t];
      meta.addr[k][nt] = x.defined() ? const_cast<void*>(x.const_data_ptr()) : nullptr;
    }
    meta.numel[nt] = numel;
    meta.step[nt] = steps.empty() ? nullptr : steps[t].const_data_ptr<float>();
    if constexpr (Rows) {
      meta.rows[nt] = rows[t].const_data_ptr<int64_t>();
      meta.row_len[nt] = row_len(lists[0][t]);
      meta.nrows[nt] = lists[0][t].size(0);
    }
    ++nt;
    const int64_t chunks = (numel + kChunk - 1) / kChunk;
    for (int64_t c = 0; c < chunks; ++c) {
      meta.block_to_tensor[nb] = static_cast<unsigned char>(nt - 1);
      meta.block_to_chunk[nb] = static_cast<int>(c);
      ++nb;
      const bool last_chunk = c == chunks - 1;
      if (nb == kMaxBlocks || (nt == Meta::kTensors && last_chunk)) {
        launch(meta, nb);
        nb = 0;
        if (last_chunk) {
          nt = 0;
        } else {  // the rest of this tensor goes on in the next launch, as its tensor 0
          copy_slot(0, nt - 1);
          nt = 1;
        }
      }
    }
  }
  if (nb > 0) launch(meta, nb);
}

// multi_tensor_apply over a staged call, sparse (Rows) when it has rows: launch(meta, blocks) is called with a
// TensorListMeta<N> or a TensorListMeta<N, true> (Meta::kRows tells which).
template <int N, typename Launch>
void apply_staged(const Staged& st, at::TensorList steps, const Launch& launch) {
  if (st.rows.empty()) {
    multi_tensor_apply<N>(st.lists, steps, launch);
  } else {
    multi_tensor_apply<N, true>(st.lists, steps, launch, st.rows);
  }
}

template <typename T>
struct alignas(sizeof(T) * kILP) Pack {
  T v[kILP];
};

template <typename T>
__device__ inline bool is_aligned(const void* p) {
  return reinterpret_cast<uintptr_t>(p) % (sizeof(T) * kILP) == 0;
}

// Runs f(p, g, s) (opmath values; s: NS states) on elements [0, len) of one chunk of one tensor. A null state
// pointer is read as 0 and not written.
template <typename T, typename O, int NS, typename F>
__device__ inline void chunk_loop(T* p, const T* g, O* const* s, int64_t len, const F& f) {
  bool vec = is_aligned<T>(p) && is_aligned<T>(g);
#pragma unroll
  for (int k = 0; k < NS; ++k) vec = vec && (s[k] == nullptr || is_aligned<O>(s[k]));
  int64_t start = 0;
  if (vec) {
    const int64_t nvec = len / kILP;
    for (int64_t i = threadIdx.x; i < nvec; i += blockDim.x) {
      Pack<T> pp = reinterpret_cast<const Pack<T>*>(p)[i];
      const Pack<T> gp = reinterpret_cast<const Pack<T>*>(g)[i];
      Pack<O> sp[NS > 0 ? NS : 1];
#pragma unroll
      for (int k = 0; k < NS; ++k) {
        if (s[k] != nullptr) {
          sp[k] = reinterpret_cast<const Pack<O>*>(s[k])[i];
        } else {
#pragma unroll
          for (int j = 0; j < kILP; ++j) sp[k].v[j] = O(0);
        }
      }
#pragma unroll
      for (int j = 0; j < kILP; ++j) {
        O pv = static_cast<O>(pp.v[j]);
        O sv[NS > 0 ? NS : 1];
#pragma unroll
        for (int k = 0; k < NS; ++k) sv[k] = sp[k].v[j];
        f(pv, static_cast<O>(gp.v[j]), sv);
        pp.v[j] = static_cast<T>(pv);
#pragma unroll
        for (int k = 0; k < NS; ++k) sp[k].v[j] = sv[k];
      }
      reinterpret_cast<Pack<T>*>(p)[i] = pp;
#pragma unroll
      for (int k = 0; k < NS; ++k)
        if (s[k] != nullptr) reinterpret_cast<Pack<O>*>(s[k])[i] = sp[k];
    }
    start = nvec * kILP;
  }
  for (int64_t i = start + threadIdx.x; i < len; i += blockDim.x) {
    O pv = static_cast<O>(p[i]);
    O sv[NS > 0 ? NS : 1];
#pragma unroll
    for (int k = 0; k < NS; ++k) sv[k] = s[k] != nullptr ? s[k][i] : O(0);
    f(pv, static_cast<O>(g[i]), sv);
    p[i] = static_cast<T>(pv);
#pragma unroll
    for (int k = 0; k < NS; ++k)
      if (s[k] != nullptr) s[k][i] = sv[k];
  }
}

// The chunk of block blockIdx.x: its tensor, its offset, its length, its pointers (with Rows: the param's and
// state's at their start, the grad's at the chunk).
template <typename T, typename O, int N, bool Rows = false>
struct Chunk {
  int t;
  int64_t off;
  int64_t len;
  T* p;
  const T* g;
  O* s[N - 2 > 0 ? N - 2 : 1];

  __device__ explicit Chunk(const TensorListMeta<N, Rows>& meta) {
    t = meta.block_to_tensor[blockIdx.x];
    off = static_cast<int64_t>(meta.block_to_chunk[blockIdx.x]) * kChunk;
    len = meta.numel[t] - off < kChunk ? meta.numel[t] - off : kChunk;
    const int64_t at = Rows ? 0 : off;
    p = static_cast<T*>(meta.addr[0][t]) + at;
    g = static_cast<const T*>(meta.addr[1][t]) + off;
#pragma unroll
    for (int k = 2; k < N; ++k) s[k - 2] = meta.addr[k][t] ? static_cast<O*>(meta.addr[k][t]) + at : nullptr;
  }
};

// Runs f(p, g, s) on every element of the chunk: chunk_loop, or with Rows each values element j*K + k on the
// param and state element rows[j]*K + k (the same math, through the row index).
template <typename T, typename O, int NS, int N, bool Rows, typename F>
__device__ inline void for_chunk(const Chunk<T, O, N, Rows>& c, const TensorListMeta<N, Rows>& meta, const F& f) {
  if constexpr (!Rows) {
    chunk_loop<T, O, NS>(c.p, c.g, c.s, c.len, f);
  } else {
    const int64_t* rows = meta.rows[c.t];
    const int64_t K = meta.row_len[c.t], nrows = meta.nrows[c.t];
    for (int64_t i = threadIdx.x; i < c.len; i += blockDim.x) {
      const int64_t e = c.off + i;
      const int64_t j = e / K;
      const int64_t r = rows[j];
      CUDA_KERNEL_ASSERT(r >= 0 && r < nrows && "fusedreg: a row index is out of range");
      const int64_t at = r * K + (e - j * K);
      O pv = static_cast<O>(c.p[at]);
      O sv[NS > 0 ? NS : 1];
#pragma unroll
      for (int k = 0; k < NS; ++k) sv[k] = c.s[k] != nullptr ? c.s[k][at] : O(0);
      f(pv, static_cast<O>(c.g[i]), sv);
      c.p[at] = static_cast<T>(pv);
#pragma unroll
      for (int k = 0; k < NS; ++k)
        if (c.s[k] != nullptr) c.s[k][at] = sv[k];
    }
  }
}

__device__ inline bool skipped(const float* found_inf) { return found_inf != nullptr && *found_inf != 0.f; }

// The scalars the kernels read on the device (undefined when absent), so that a step needs no host sync and can
// be captured in a CUDA graph: grad_scale in the params' opmath (as the CPU kernels read it: one rounding to O),
// found_inf as float32, nonzero when the step must be skipped, and lr as float64 (it replaces the float lr; the
// kernels form every lr-dependent scalar from it in double, as from the float). GradScaler's tensors are float32
// already, so with fp32/bf16/fp16 params nothing is converted for AMP.
struct DeviceArgs {
  at::Tensor scale, inf, lr;
  template <typename O>
  const O* scale_ptr() const { return scale.defined() ? scale.const_data_ptr<O>() : nullptr; }
  const float* inf_ptr() const { return inf.defined() ? inf.const_data_ptr<float>() : nullptr; }
  const double* lr_ptr() const { return lr.defined() ? lr.const_data_ptr<double>() : nullptr; }
};

inline DeviceArgs device_args(const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf,
                              const std::optional<at::Tensor>& lr_tensor, at::ScalarType dtype) {
  DeviceArgs a;
  if (grad_scale.has_value()) a.scale = grad_scale->to(at::toOpMathType(dtype)).contiguous();
  // A float64 flag below float32's range must still skip: compare with 0 in its own dtype first.
  if (found_inf.has_value())
    a.inf = (found_inf->scalar_type() == at::kFloat ? *found_inf : found_inf->ne(0).to(at::kFloat)).contiguous();
  if (lr_tensor.has_value()) a.lr = lr_tensor->to(at::kDouble).contiguous();
  return a;
}

// args with the device lr in place of the float one, when there is one.
template <typename Args>
__device__ inline Args with_lr(Args args, const double* lr) {
  if (lr != nullptr) args.lr = *lr;
  return args;
}

// The group-lasso pass of one op (group.cu), enqueued after the op's kernel and before advance_steps: args is the
// op's (SgdArgs: the scalar step lr; AdamArgs, AdagradArgs: the metric prox, its factors from the step counters;
// FtrlArgs: the metric prox in q, step 1). x_list: the index in st.lists of the state the denominators come from
// (Adam's v_hat, Adagrad's sum, Ftrl's accumulator n'); -1 for SGD.
template <typename Args>
void group_prox(const Staged& st, int x_list, at::TensorList steps, const Args& args, double group_l1,
                int64_t group_dim, const float* found_inf, const double* lr, cudaStream_t stream);

// Adds 1 to every step counter unless found_inf is set (steps.cu; enqueued after the update kernels, which read
// the old value and use old + 1).
void advance_steps(at::TensorList steps, const float* found_inf, cudaStream_t stream);

}  // namespace cuda
}  // namespace fusedreg
