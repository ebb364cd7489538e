"""Backend modules. Each registers its ops with regnet_kernels.dispatch when imported:

- ``eager``: plain PyTorch, registered by the op modules in regnet_kernels/ops/.
- ``cpu``: C++ kernels of regnet_kernels._C (csrc/cpu/), see cpu.py.
- ``cuda``: CUDA C++ kernels of regnet_kernels._C (csrc/cuda/), see cuda.py.
- ``triton``: Triton kernels (regnet_kernels/triton/), see triton.py.
"""

from __future__ import annotations

import importlib
from typing import Dict

# Why a backend module could not be imported (e.g. no triton installed): backend -> reason.
IMPORT_ERRORS: Dict[str, str] = {}


def load_all() -> None:
    # the eager registrations
    from ..ops import conv1x1_conv_bn_act, conv_bn_act, gated_conv1x1, se_gate, x_block  # noqa: F401

    for name in ("cpu", "cuda", "triton"):
        try:
            importlib.import_module(f"{__name__}.{name}")
        except ImportError as e:
            IMPORT_ERRORS[name] = f"{type(e).__name__}: {e}"
