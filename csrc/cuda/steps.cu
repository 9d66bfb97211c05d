// The step counters of Adam and Adagrad on CUDA: +1 each, after the op's update and group kernels (which read the
// old value and use old + 1), unless found_inf is set. On the device, so a step needs no host sync.
#include "multi_tensor.cuh"

namespace fusedreg {
namespace cuda {
namespace {

constexpr int kStepsPerLaunch = 256;
struct StepPtrs {
  float* p[kStepsPerLaunch];
};

__global__ void advance_steps_kernel(StepPtrs steps, int n, const float* found_inf) {
  if (skipped(found_inf)) return;
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) *steps.p[i] = *steps.p[i] + 1.0f;
}

}  // namespace

void advance_steps(at::TensorList steps, const float* found_inf, cudaStream_t stream) {
  for (size_t begin = 0; begin < steps.size(); begin += kStepsPerLaunch) {
    StepPtrs ptrs;
    const int n = static_cast<int>(std::min<size_t>(kStepsPerLaunch, steps.size() - begin));
    for (int i = 0; i < n; ++i) ptrs.p[i] = steps[begin + i].data_ptr<float>();
    advance_steps_kernel<<<1, kStepsPerLaunch, 0, stream>>>(ptrs, n, found_inf);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
}

}  // namespace cuda
}  // namespace fusedreg
