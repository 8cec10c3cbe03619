"""torch_npu's real operators, defined on CPU from the files its wheel ships (tests only).

* Schemas: ``torch_npu/csrc/aten/npu_native_functions_by_codegen.yaml`` -> ``torch.library``
  definitions in the ``npu`` namespace, so calls bind exactly as on an NPU (argument
  names, order, keyword-only markers, defaults, return arity).
* Shapes: the shipped meta functions (``torch_npu/op_plugin/meta/_meta_registrations.py``)
  are registered as the ops' Meta kernels, executed from the wheel's own source (its
  module-level ``torch_npu`` imports answered by a small namespace).
* Values: the CPU kernel runs the emulation (tests/npu/emulation.py) with the arguments
  that differ from the schema defaults, then checks every tensor output against the
  real meta function's shape and dtype for the same call.

:func:`module` returns a ``torch_npu`` stand-in whose ops are ``torch.ops.npu.<op>``.
"""

from __future__ import annotations

import ast
import functools
import types

import torch
import yaml

from . import ascend_packages, emulation

OPS = ("npu_fused_infer_attention_score", "npu_fused_infer_attention_score_v2", "npu_fusion_attention", "npu_mm_all_reduce_base",
       "npu_moe_distribute_dispatch", "npu_moe_distribute_combine")
_LIBS: list = []   # keep the torch.library objects alive


def schemas(root) -> dict[str, str]:
    """op name -> schema string (the first entry of each op in the shipped yaml)."""
    text = (root / "torch_npu/csrc/aten/npu_native_functions_by_codegen.yaml").read_text()
    found: dict[str, str] = {}

    def walk(node):
        if isinstance(node, dict):
            func = node.get("func")
            if isinstance(func, str):
                name = func.split("(", 1)[0]
                found.setdefault(name, func)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(yaml.safe_load(text))
    missing = [op for op in OPS if op not in found]
    if missing:
        raise RuntimeError(f"the torch-npu wheel's yaml has no schema for {missing}")
    return {op: found[op] for op in OPS}


def _meta_namespace(root) -> dict:
    """Execute the wheel's meta registrations file, keeping only our ops' registrations."""
    path = root / "torch_npu/op_plugin/meta/_meta_registrations.py"
    tree = ast.parse(path.read_text())
    body = []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if isinstance(node, ast.FunctionDef):
            keep = []
            for dec in node.decorator_list:
                if (isinstance(dec, ast.Call) and getattr(dec.func, "id", None) == "impl"
                        and isinstance(dec.args[1], ast.Constant) and dec.args[1].value in OPS):
                    keep.append(dec)
            node.decorator_list = keep
            body.append(node)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            body.append(node)
    tree.body = body
    class _TorchNpuNames(types.SimpleNamespace):
        """torch_npu's own dtype markers (hifloat8, float4_*, ...): distinct sentinels equal to nothing."""

        def __getattr__(self, name):
            value = object()
            setattr(self, name, value)
            return value

    fake_torch_npu = _TorchNpuNames()
    namespace = {
        "__name__": "torch_npu_meta_registrations", "math": __import__("math"), "os": __import__("os"),
        "warnings": __import__("warnings"), "torch": torch, "torch_npu": fake_torch_npu,
        "Library": torch.library.Library, "impl": torch.library.impl, "has_side_effect": lambda *a, **k: None,
        "ErrCode": types.SimpleNamespace(VALUE="", PARAM="", TYPE="", NOT_SUPPORT=""),
        "ops_error": lambda *a, **k: "", "get_cann_version": lambda: "8.3.RC1", "get_soc_version": lambda: 250,
    }
    # module-level statements that need the real torch_npu fail individually: run one by one
    for stmt in tree.body:
        module = ast.Module(body=[stmt], type_ignores=[])
        try:
            exec(compile(module, str(path), "exec"), namespace)
        except Exception:
            if isinstance(stmt, ast.FunctionDef) and stmt.decorator_list:
                raise
    return namespace


def _check_against_meta(op: str, meta_fn, args, kwargs, result) -> None:
    def to_meta(x):
        if isinstance(x, torch.Tensor):
            return torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device="meta")
        if isinstance(x, (list, tuple)):
            return type(x)(to_meta(v) for v in x)
        return x

    expected = meta_fn(*to_meta(args), **{k: to_meta(v) for k, v in kwargs.items()})
    expected = expected if isinstance(expected, tuple) else (expected,)
    got = result if isinstance(result, tuple) else (result,)
    if len(expected) != len(got):
        raise AssertionError(f"{op}: emulation returns {len(got)} outputs, the real op {len(expected)}")
    for i, (e, g) in enumerate(zip(expected, got)):
        if isinstance(e, torch.Tensor) and e.numel() > 0:
            if tuple(e.shape) != tuple(g.shape) or e.dtype != g.dtype:
                raise AssertionError(f"{op} output {i}: emulation gives {tuple(g.shape)} {g.dtype}, the real "
                                     f"meta function {tuple(e.shape)} {e.dtype}")


def _cpu_kernel(op: str, schema: str, meta_fn):
    parsed = torch._C.parse_schema("npu::" + schema)
    names = [a.name for a in parsed.arguments]
    defaults = {a.name: a.default_value for a in parsed.arguments if a.has_default_value()}

    def kernel(*args, **kwargs):
        named = dict(zip(names, args), **kwargs)   # the dispatcher passes positional args by position
        changed = {k: v for k, v in named.items() if not (k in defaults and _same(v, defaults[k]))}
        result = getattr(emulation, op)(**changed)
        if op != "npu_moe_distribute_dispatch":   # its meta sizes the fixed worst-case buffers
            _check_against_meta(op, meta_fn, args, kwargs, result)
        return result

    return kernel


def _same(value, default) -> bool:
    if isinstance(value, torch.Tensor) or isinstance(default, torch.Tensor):
        return False
    return value == default


@functools.lru_cache(maxsize=1)
def define() -> dict[str, str]:
    """Define our ops in the ``npu`` namespace on CPU (once per process); returns the schemas."""
    root = ascend_packages.torch_npu_files()
    found = schemas(root)
    lib = torch.library.Library("npu", "FRAGMENT")
    _LIBS.append(lib)
    for op, schema in found.items():
        lib.define(schema)
    namespace = _meta_namespace(root)
    meta_fns = {op: namespace[name] for op, name in (
        ("npu_fused_infer_attention_score", "npu_fused_infer_attention_score_forward"),
        ("npu_fused_infer_attention_score_v2", "npu_fused_infer_attention_score_v2_forward"),
        ("npu_fusion_attention", "npu_fusion_attention_forward"),
        ("npu_mm_all_reduce_base", "npu_mm_all_reduce_base_forward"),
        ("npu_moe_distribute_dispatch", "npu_moe_distribute_dispatch_meta"),
        ("npu_moe_distribute_combine", "npu_moe_distribute_combine_meta"))}
    for op in OPS:
        lib.impl(op, _cpu_kernel(op, found[op], meta_fns[op]), "CPU")
    return found


def module() -> types.ModuleType:
    """A ``torch_npu`` stand-in whose ops dispatch through the real schemas."""
    define()
    fake = emulation.make_module()
    for op in OPS:
        setattr(fake, op, getattr(torch.ops.npu, op))
    return fake

