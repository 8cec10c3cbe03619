// Python module shell of ascend_ext._native. Importing it loads this library, whose
// static initialisers register the kernels as torch.ops.ascend_ext_native.* (attention.cpp, cache.cpp, mla_decode.cpp).
#include <Python.h>

static PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT, "_native",
    "Native CPU kernels of ascend_ext; the ops live in torch.ops.ascend_ext_native.", -1, nullptr,
};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&native_module); }
