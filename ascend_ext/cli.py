"""``ascend-ext`` command line: ``info`` and ``demo``."""

from __future__ import annotations

import argparse
import sys


def cmd_info(args: argparse.Namespace) -> int:
    import ascend_ext
    from ascend_ext import hardware, ops

    device = hardware.detect()
    print(f"ascend_ext {ascend_ext.__version__}")
    print(f"hardware: {device} - {hardware.describe_device(device)}")
    for name, version in hardware.versions().items():
        print(f"  {name:12s} {version or 'not installed'}")
    from ascend_ext.integration import compat

    vllm_reason = compat.unsupported_reason()
    print(f"supported vLLM: vllm{compat.SUPPORTED_VLLM} - "
          f"{'installed ' + compat.vllm_version() + ' is supported' if vllm_reason is None else vllm_reason}")
    platform = ascend_ext.register()
    print(f"vLLM platform plugin -> {platform or 'None (vLLM keeps its own platform)'}")
    if ascend_ext.disabled():
        print("  (ASCEND_EXT_DISABLE is set)")
    print(f"op implementations on {device}:")
    for op, impl in ops.describe(device).items():
        print(f"  {op:24s} {impl}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ascend_ext import demo

    demo.run_demo(batch=args.batch, max_tokens=args.max_tokens, dtype=args.dtype, seed=args.seed,
                  compare=not args.no_compare, enforce_eager=args.enforce_eager)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ascend-ext", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="hardware, versions and the implementation each op resolves to")
    demo = sub.add_parser("demo", help="generate with a tiny local model through vLLM and this plugin")
    demo.add_argument("--batch", type=int, default=8)
    demo.add_argument("--max-tokens", type=int, default=64)
    demo.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--no-compare", action="store_true", help="skip the run with vLLM's own backends")
    demo.add_argument("--enforce-eager", action="store_true", help="vLLM eager mode (default: vLLM's compiled mode)")
    args = parser.parse_args(argv)
    return {"info": cmd_info, "demo": cmd_demo}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
