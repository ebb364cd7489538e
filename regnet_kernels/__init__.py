"""Fused kernels for RegNet's hot paths behind one op API.

Ops: conv_bn_act (with optional channel sums, K2), conv1x1_conv_bn_act (K1 and K2 in one),
x_block (a whole X block in one), se_excite (K3), se_gate, gated_conv1x1 (K4), fold_bn. Backends
(cuda, triton, cpu, eager) are chosen per call by regnet_kernels.dispatch;
`python -m regnet_kernels.info` shows what is built and picked.
"""

from .dispatch import AUTO_ORDER, BACKENDS, BackendUnavailable, explain, load_backends
from .ops.conv1x1_conv_bn_act import conv1x1_conv_bn_act
from .ops.conv_bn_act import conv_bn_act
from .ops.fold_bn import fold_bn, fold_bn_params
from .ops.gated_conv1x1 import gated_conv1x1
from .ops.se_gate import se_excite, se_gate
from .ops.x_block import x_block

__all__ = [
    "AUTO_ORDER", "BACKENDS", "BackendUnavailable", "explain",
    "conv1x1_conv_bn_act", "conv_bn_act", "fold_bn", "fold_bn_params", "gated_conv1x1", "se_excite", "se_gate",
    "x_block",
]

from .memory import release_cached_memory  # noqa: E402
from .modules import FusedRegNet, FusedXBlock, FusedYBlock  # noqa: E402
from .optimize import optimize  # noqa: E402

__all__ += ["FusedRegNet", "FusedXBlock", "FusedYBlock", "optimize", "release_cached_memory"]

# Backends register at import, not on the first op call, so torch.compile never traces the
# registration (it would break a fullgraph capture).
load_backends()
