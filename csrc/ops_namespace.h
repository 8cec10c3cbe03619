// torch.ops namespace of the native kernels: ascend_ext_native (the public custom ops are
// torch.ops.ascend_ext, defined in Python and dispatching here on CPU), unless a build overrides it (the
// tests compile a portable variant under another namespace, in the same process).
#pragma once

#include <torch/library.h>

#ifndef ASCEND_EXT_OPS_NAMESPACE
#define ASCEND_EXT_OPS_NAMESPACE ascend_ext_native
#endif
// one level of indirection so the namespace macro expands before TORCH_LIBRARY pastes it
#define ASCEND_EXT_LIBRARY(ns, m) TORCH_LIBRARY(ns, m)
#define ASCEND_EXT_LIBRARY_FRAGMENT(ns, m) TORCH_LIBRARY_FRAGMENT(ns, m)
#define ASCEND_EXT_LIBRARY_IMPL(ns, key, m) TORCH_LIBRARY_IMPL(ns, key, m)
