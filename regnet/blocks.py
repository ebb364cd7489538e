"""AnyNet building blocks: stem, X/Y bottleneck blocks, squeeze-excitation, head.

Module and parameter names follow pycls (``stem.conv``, ``s1.b1.f.a_bn``, ``head.fc``...), so
pycls checkpoints load without renaming. Each block states its own complexity, as in pycls.
All modules are TorchScript-compatible.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor, nn

from .complexity import Cx, conv2d_cx, gap2d_cx, linear_cx, norm2d_cx

__all__ = ["SimpleStem", "SE", "BottleneckTransform", "Xblock", "Yblock", "AnyHead", "drop_path"]

BN_EPS = 1e-5
BN_MOMENTUM = 0.1


def conv2d(w_in: int, w_out: int, k: int, *, stride: int = 1, groups: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(w_in, w_out, k, stride=stride, padding=(k - 1) // 2, groups=groups, bias=bias)


def norm2d(w: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(w, eps=BN_EPS, momentum=BN_MOMENTUM)


def drop_path(x: Tensor, drop_prob: float, training: bool) -> Tensor:
    """Stochastic depth: zero the residual branch per sample with probability drop_prob."""
    if drop_prob <= 0.0 or not training:
        return x
    keep = 1.0 - drop_prob
    mask = torch.empty([x.shape[0], 1, 1, 1], dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x * mask / keep


class SimpleStem(nn.Module):
    """3x3 stride-2 conv, BN, ReLU."""

    def __init__(self, w_in: int, w_out: int):
        super().__init__()
        self.conv = conv2d(w_in, w_out, 3, stride=2)
        self.bn = norm2d(w_out)
        self.af = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.af(self.bn(self.conv(x)))

    @staticmethod
    def complexity(cx: Cx, w_in: int, w_out: int) -> Cx:
        return norm2d_cx(conv2d_cx(cx, w_in, w_out, 3, stride=2), w_out)


class SE(nn.Module):
    """Squeeze-excitation: global mean, 1x1 conv (FC) + ReLU, 1x1 conv + sigmoid, scale."""

    def __init__(self, w_in: int, w_se: int):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d((1, 1))
        self.f_ex = nn.Sequential(
            conv2d(w_in, w_se, 1, bias=True),
            nn.ReLU(inplace=True),
            conv2d(w_se, w_in, 1, bias=True),
            nn.Sigmoid(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x * self.f_ex(self.avg_pool(x))

    @staticmethod
    def complexity(cx: Cx, w_in: int, w_se: int) -> Cx:
        h, w = cx["h"], cx["w"]
        cx = gap2d_cx(cx, w_in)
        cx = conv2d_cx(cx, w_in, w_se, 1, bias=True)
        cx = conv2d_cx(cx, w_se, w_in, 1, bias=True)
        return {**cx, "h": h, "w": w}


class BottleneckTransform(nn.Module):
    """1x1 conv-BN-ReLU, 3x3 grouped conv-BN-ReLU (carries the stride), [SE], 1x1 conv-BN."""

    def __init__(self, w_in: int, w_out: int, stride: int, group_w: int, bot_mul: float = 1.0, se_r: float = 0.0):
        super().__init__()
        w_b, groups, w_se = self.widths(w_in, w_out, group_w, bot_mul, se_r)
        self.a = conv2d(w_in, w_b, 1)
        self.a_bn = norm2d(w_b)
        self.a_af = nn.ReLU(inplace=True)
        self.b = conv2d(w_b, w_b, 3, stride=stride, groups=groups)
        self.b_bn = norm2d(w_b)
        self.b_af = nn.ReLU(inplace=True)
        self.se = SE(w_b, w_se) if w_se > 0 else None
        self.c = conv2d(w_b, w_out, 1)
        self.c_bn = norm2d(w_out)
        self.c_bn.final_bn = True  # pycls's marker for zero-init of the last BN

    @staticmethod
    def widths(w_in: int, w_out: int, group_w: int, bot_mul: float, se_r: float):
        """(bottleneck width, groups, SE width); SE width follows the block *input* width."""
        w_b = int(round(w_out * bot_mul))
        if w_b % group_w != 0:
            raise ValueError(
                f"group_w={group_w} must divide the bottleneck width {w_b} (w_out={w_out} x bot_mul={bot_mul}); "
                "use regnet.widths.adjust_block_compatibility"
            )
        return w_b, w_b // group_w, int(round(w_in * se_r))

    def forward(self, x: Tensor) -> Tensor:
        x = self.a_af(self.a_bn(self.a(x)))
        x = self.b_af(self.b_bn(self.b(x)))
        if self.se is not None:
            x = self.se(x)
        return self.c_bn(self.c(x))

    @staticmethod
    def complexity(cx: Cx, w_in: int, w_out: int, stride: int, group_w: int, bot_mul: float, se_r: float) -> Cx:
        w_b, groups, w_se = BottleneckTransform.widths(w_in, w_out, group_w, bot_mul, se_r)
        cx = norm2d_cx(conv2d_cx(cx, w_in, w_b, 1), w_b)
        cx = norm2d_cx(conv2d_cx(cx, w_b, w_b, 3, stride=stride, groups=groups), w_b)
        if w_se > 0:
            cx = SE.complexity(cx, w_b, w_se)
        return norm2d_cx(conv2d_cx(cx, w_b, w_out, 1), w_out)


class Xblock(nn.Module):
    """RegNetX block: residual bottleneck with group conv; projection when width or stride changes.

    ``se_r`` defaults to the class's ``default_se_r`` (0 for X, 0.25 for Y), so passing
    ``block=Yblock`` to a zoo constructor turns an X network into a Y one.
    """

    default_se_r = 0.0

    def __init__(
        self,
        w_in: int,
        w_out: int,
        stride: int,
        group_w: int,
        bot_mul: float = 1.0,
        se_r: Optional[float] = None,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride={stride}: expected 1 or 2")
        se_r = self.default_se_r if se_r is None else se_r
        self.proj = None
        self.bn = None
        if w_in != w_out or stride != 1:
            self.proj = conv2d(w_in, w_out, 1, stride=stride)
            self.bn = norm2d(w_out)
        self.f = BottleneckTransform(w_in, w_out, stride, group_w, bot_mul, se_r)
        self.af = nn.ReLU(inplace=True)
        self.drop_path_rate = float(drop_path_rate)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        if self.proj is not None and self.bn is not None:
            shortcut = self.bn(self.proj(x))
        return self.af(shortcut + drop_path(self.f(x), self.drop_path_rate, self.training))

    @classmethod
    def complexity(cls, cx: Cx, w_in: int, w_out: int, stride: int, group_w: int, bot_mul: float = 1.0,
                   se_r: Optional[float] = None) -> Cx:
        se_r = cls.default_se_r if se_r is None else se_r
        if w_in != w_out or stride != 1:
            h, w = cx["h"], cx["w"]
            cx = norm2d_cx(conv2d_cx(cx, w_in, w_out, 1, stride=stride), w_out)
            cx = {**cx, "h": h, "w": w}
        return BottleneckTransform.complexity(cx, w_in, w_out, stride, group_w, bot_mul, se_r)


class Yblock(Xblock):
    """RegNetY block: an X block with squeeze-excitation (ratio 0.25 of the block input width)."""

    default_se_r = 0.25


class AnyHead(nn.Module):
    """Global average pool, optional dropout, FC."""

    def __init__(self, w_in: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(w_in, num_classes, bias=True) if num_classes > 0 else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.dropout(torch.flatten(self.avg_pool(x), 1)))

    @staticmethod
    def complexity(cx: Cx, w_in: int, num_classes: int) -> Cx:
        cx = gap2d_cx(cx, w_in)
        return linear_cx(cx, w_in, num_classes, bias=True) if num_classes > 0 else cx


def init_weights(m: nn.Module, zero_init_last_bn: bool = False) -> None:
    """pycls's initialisation: He (fan-out) convs, unit BN (zero for the last BN of a block
    when zero_init_last_bn), N(0, 0.01) FC."""
    if isinstance(m, nn.Conv2d):
        fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        nn.init.normal_(m.weight, mean=0.0, std=math.sqrt(2.0 / fan_out))
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.BatchNorm2d):
        zero = zero_init_last_bn and getattr(m, "final_bn", False)
        nn.init.constant_(m.weight, 0.0 if zero else 1.0)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, mean=0.0, std=0.01)
        nn.init.zeros_(m.bias)
