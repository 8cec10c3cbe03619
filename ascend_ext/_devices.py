"""Device-type names shared by the op registry and hardware detection."""

ANY_DEVICE = ("cpu", "cuda", "npu", "xpu", "mps")
ACCELERATORS = ("cuda", "npu")
