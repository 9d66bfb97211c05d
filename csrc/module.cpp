// The Python module fusedreg._C. It has no functions: importing it loads the shared library, whose static
// initializers register the CPU (and CUDA) kernels for the fusedreg::* schemas defined in fusedreg/_ops.py.
#include <Python.h>

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C", "fusedreg native kernels", -1, nullptr};
  return PyModule_Create(&def);
}
