"""Fake torch_npu for platform-selection tests: an NPU is present iff FAKE_NPU_PRESENT=1."""
import os
import types

import torch

torch.npu = types.SimpleNamespace(is_available=lambda: os.environ.get("FAKE_NPU_PRESENT") == "1",
                                  device_count=lambda: 1, get_device_name=lambda index=0: "Ascend910B (fake)")
