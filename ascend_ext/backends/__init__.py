"""Per-device backends: one folder each, holding the device's implementation table
(what it registers with :func:`ascend_ext.ops._dispatch.register` and what each
implementation supports), its Triton tile configs and its vLLM platform class.

Importing this package registers every backend's table; ``import ascend_ext`` does.
The op layer (``ascend_ext.ops``) never imports it: ops only know the registry.
Platform modules (``backends/<device>/platform.py``) import vLLM and are loaded by
vLLM through their class path, never from here.
"""

from . import cpu, cuda, npu

for _backend in (cpu, cuda, npu):
    _backend.register_impls()
