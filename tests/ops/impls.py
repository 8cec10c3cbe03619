"""Which implementations of an op family the parity tests run here."""

import os

import torch

from ascend_ext.ops import _dispatch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def runnable(op: str) -> list[str]:
    names = []
    for name, impl in sorted(_dispatch.implementations(op).items()):
        if impl.unavailable_reason(DEVICE) is None:
            names.append(name)
    return names


def interpreter() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"
