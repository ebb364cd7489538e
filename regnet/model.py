"""AnyNet: stem, a body of stages of X or Y blocks, head. A RegNet is an AnyNet whose stages
come from the six-number width rule (see ``regnet.widths``)."""

from __future__ import annotations

from dataclasses import replace
from typing import List, Optional, Sequence, Type, Union

from torch import Tensor, nn

from .blocks import AnyHead, SimpleStem, Xblock, Yblock, init_weights
from .complexity import Cx, new_cx
from .widths import RegNetParams, StageSpec

__all__ = ["AnyNet", "RegNet", "RegNetBackbone", "complexity", "complexity_of_stages"]


class AnyStage(nn.Module):
    """`depth` blocks; the first carries the stride and the width change. Children b1..bd."""

    def __init__(self, w_in: int, spec: StageSpec, block: Type[Xblock], drop_path_rates: Sequence[float]):
        super().__init__()
        for i in range(spec.depth):
            b = block(w_in, spec.width, spec.stride if i == 0 else 1, spec.group_w, spec.bot_mul, spec.se_r,
                      drop_path_rates[i])
            self.add_module(f"b{i + 1}", b)
            w_in = spec.width

    def forward(self, x: Tensor) -> Tensor:
        for block in self.children():
            x = block(x)
        return x


def complexity_of_stages(stages: Sequence[StageSpec], resolution: Union[int, tuple] = 224, in_chans: int = 3,
                         stem_w: int = 32, num_classes: int = 1000, block: Type[Xblock] = Xblock) -> Cx:
    """pycls's ``AnyNet.complexity`` from the stage specs alone (no model is built)."""
    cx = SimpleStem.complexity(new_cx(resolution), in_chans, stem_w)
    w_in = stem_w
    for s in stages:
        for i in range(s.depth):
            cx = block.complexity(cx, w_in, s.width, s.stride if i == 0 else 1, s.group_w, s.bot_mul, s.se_r)
            w_in = s.width
    cx = AnyHead.complexity(cx, w_in, num_classes)
    return {k: cx[k] for k in ("flops", "params", "acts")}


class AnyNet(nn.Module):
    """An AnyNet from explicit stage specs.

    Args:
        stages: one StageSpec per stage (depth, width, stride, bot_mul, group_w, se_r).
        in_chans: input channels (3).
        stem_w: stem width (32).
        num_classes: classifier outputs; 0 drops the FC (``forward`` then returns pooled features).
        block: Xblock or Yblock; Yblock gives SE ratio 0.25 to stages whose se_r is 0.
        drop_path_rate: stochastic depth, increased linearly from 0 to this over the blocks.
        drop_rate: dropout before the FC.
        zero_init_last_bn: initialise the last BN of each residual branch to zero.
    """

    def __init__(
        self,
        stages: Sequence[StageSpec],
        in_chans: int = 3,
        stem_w: int = 32,
        num_classes: int = 1000,
        block: Type[Xblock] = Xblock,
        drop_path_rate: float = 0.0,
        drop_rate: float = 0.0,
        zero_init_last_bn: bool = False,
    ):
        super().__init__()
        if not stages:
            raise ValueError("stages: expected at least one StageSpec, got none")
        if in_chans < 1:
            raise ValueError(f"in_chans={in_chans}: expected >= 1")
        if num_classes < 0:
            raise ValueError(f"num_classes={num_classes}: expected >= 0")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate={drop_path_rate}: expected a number in [0, 1)")
        if not (isinstance(block, type) and issubclass(block, Xblock)):
            raise TypeError(f"block={block!r}: expected Xblock, Yblock or a subclass")
        for s in stages:
            if s.depth < 1:
                raise ValueError(f"stage {s}: depth={s.depth}, expected >= 1 (empty stage)")
        # A Y block class turns SE on for stages that did not set a ratio.
        stages = [replace(s, se_r=block.default_se_r) if s.se_r == 0 else s for s in stages]
        self.stage_specs: List[StageSpec] = stages
        self.in_chans, self.stem_w, self.num_classes, self.block_type = in_chans, stem_w, num_classes, block
        self.stem = SimpleStem(in_chans, stem_w)
        n_blocks = sum(s.depth for s in stages)
        rates = [drop_path_rate * i / max(n_blocks - 1, 1) for i in range(n_blocks)]
        w_in, k = stem_w, 0
        for i, s in enumerate(stages):
            self.add_module(f"s{i + 1}", AnyStage(w_in, s, block, rates[k:k + s.depth]))
            w_in, k = s.width, k + s.depth
        self.num_features = w_in
        self.head = AnyHead(w_in, num_classes, drop_rate)
        self.apply(lambda m: init_weights(m, zero_init_last_bn))

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(f"input x: expected a 4-D tensor [N, C, H, W], got {x.dim()}-D with shape {list(x.shape)}")
        if x.shape[1] != self.in_chans:
            raise ValueError(f"input x: expected {self.in_chans} channels (dim 1), got {x.shape[1]} in shape {list(x.shape)}")

    def forward_stages(self, x: Tensor) -> List[Tensor]:
        """Outputs of every stage (strides 4, 8, 16, 32 for a 4-stage RegNet)."""
        self._check_input(x)
        x = self.stem(x)
        outs: List[Tensor] = []
        for name, m in self.named_children():
            if name.startswith("s") and name[1:].isdigit():
                x = m(x)
                outs.append(x)
        return outs

    def forward_features(self, x: Tensor) -> Tensor:
        """The last stage's feature map (before pooling), as timm's ``forward_features``."""
        return self.forward_stages(x)[-1]

    def forward_head(self, x: Tensor) -> Tensor:
        return self.head(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x))

    def complexity(self, resolution: Union[int, tuple] = 224) -> Cx:
        """flops, params and acts at `resolution` (pycls's conventions)."""
        return complexity_of_stages(self.stage_specs, resolution, self.in_chans, self.stem_w, self.num_classes,
                                    self.block_type)


class RegNet(AnyNet):
    """A RegNet from its parameters.

    ``block`` decides SE when given: Xblock turns it off, Yblock turns it on (params.se_r if
    set, else 0.25). Left out, SE follows params.se_r.
    """

    def __init__(self, params: RegNetParams, block: Optional[Type[Xblock]] = None, **kwargs):
        if block is None:
            block = Yblock if params.se_r > 0 else Xblock
        elif block.default_se_r == 0:
            params = params.with_(se_r=0.0)
        elif params.se_r == 0:
            params = params.with_(se_r=block.default_se_r)
        self.params = params
        super().__init__(params.stages(), stem_w=params.stem_w, block=block, **kwargs)


class RegNetBackbone(nn.Module):
    """Detection backbone: returns the outputs of the stages in `out_indices` (mmdetection style)."""

    def __init__(self, model: AnyNet, out_indices: Sequence[int] = (0, 1, 2, 3)):
        super().__init__()
        n = len(model.stage_specs)
        bad = [i for i in out_indices if not 0 <= i < n]
        if bad or not out_indices:
            raise ValueError(f"out_indices={tuple(out_indices)}: expected a non-empty subset of 0..{n - 1}")
        self.model = model
        self.out_indices: List[int] = sorted(set(out_indices))
        self.out_channels = [model.stage_specs[i].width for i in self.out_indices]

    def forward(self, x: Tensor) -> List[Tensor]:
        outs = self.model.forward_stages(x)
        return [outs[i] for i in self.out_indices]


def complexity(model_or_params, resolution: Union[int, tuple] = 224, num_classes: int = 1000) -> Cx:
    """Complexity of a model, a RegNetParams, a list of StageSpecs or a zoo name, without building it."""
    if isinstance(model_or_params, AnyNet):
        return model_or_params.complexity(resolution)
    if isinstance(model_or_params, str):
        from .zoo import config_of

        model_or_params = config_of(model_or_params)
    if isinstance(model_or_params, RegNetParams):
        return complexity_of_stages(model_or_params.stages(), resolution, stem_w=model_or_params.stem_w,
                                    num_classes=num_classes)
    if isinstance(model_or_params, (list, tuple)) and all(isinstance(s, StageSpec) for s in model_or_params):
        return complexity_of_stages(model_or_params, resolution, num_classes=num_classes)
    raise TypeError(f"model_or_params: expected an AnyNet, RegNetParams, list of StageSpec or zoo name, "
                    f"got {type(model_or_params).__name__}")
