// The Python module fusedreg._C. Importing it loads the shared library, whose static initializers register the
// CPU (and CUDA) kernels for the fusedreg::* schemas defined in fusedreg/_ops.py; its one Python function is the
// optimizers' fast input check (check.cpp).
#include <torch/csrc/utils/pybind.h>

namespace fusedreg {
void bind_lists_ok(pybind11::module_& m);
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "fusedreg native kernels";
  fusedreg::bind_lists_ok(m);
}
