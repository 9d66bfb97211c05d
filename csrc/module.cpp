// The Python module fusedreg._C. Importing it loads the shared library, whose static initializers register the
// CPU (and CUDA) kernels of the fusedreg::* ops; fusedreg/_ops.py imports it before it defines their schemas, so
// that torch checks each kernel against its schema in a Python call (a stale build is an ImportError there). Its
// Python functions are the optimizers' fast input checks (check.cpp).
#include <torch/csrc/utils/pybind.h>

namespace fusedreg {
void bind_lists_ok(pybind11::module_& m);
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "fusedreg native kernels";
  fusedreg::bind_lists_ok(m);
}
