// Registers the CUDA kernels (csrc/cuda/*.cu) for the fusedreg::* schemas. Built only with CUDA.
#include <torch/library.h>

#include "../ops.h"

TORCH_LIBRARY_IMPL(fusedreg, CUDA, m) {
  m.impl("sgd_", &fusedreg::sgd_cuda);
  m.impl("adam_", &fusedreg::adam_cuda);
  m.impl("adagrad_", &fusedreg::adagrad_cuda);
}
