"""``ascend-ext`` command line: ``info`` and ``demo``."""

from __future__ import annotations

import argparse
import random
import sys
import tempfile


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

    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="ascend_ext_demo_") as model_dir:
        print(f"building a tiny random-weight Llama in {model_dir} ...")
        demo.build_tiny_llama(model_dir, seed=args.seed)
        prompts = [[rng.randrange(1, 512) for _ in range(args.prompt_len)] for _ in range(args.batch)]
        spec = {"model": model_dir, "prompts": prompts, "max_tokens": args.max_tokens,
                "llm": {"dtype": args.dtype, "block_size": 32}}
        result = demo.run(spec)
    print(f"platform:           {result['platform']}")
    print(f"attention backend:  {', '.join(result['attention_backends'])}")
    print(f"engine start:       {result['engine_start_s']:.1f} s")
    print(f"generated:          {result['new_tokens']} tokens for {args.batch} prompts of "
          f"{args.prompt_len} tokens in {result['generate_s']:.2f} s")
    print(f"throughput:         {result['tokens_per_s']:.1f} tokens/s")
    print(f"first completion:   {result['outputs'][0]['token_ids'][:16]}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ascend-ext", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="hardware, versions and the implementation each op resolves to")
    demo = sub.add_parser("demo", help="generate with a tiny local model through vLLM and this plugin")
    demo.add_argument("--batch", type=int, default=8)
    demo.add_argument("--prompt-len", type=int, default=64)
    demo.add_argument("--max-tokens", type=int, default=64)
    demo.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    demo.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    return {"info": cmd_info, "demo": cmd_demo}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
