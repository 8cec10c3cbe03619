"""vLLM platform classes of ascend_ext (one module per hardware family)."""
