"""A/B of a fused-block option in one process: optimize(model) with the option and a copy
without it, timed in interleaved rounds (this VM's drift hits both alike), medians.

    python bench/ab_options.py --option one_op_front --model regnetx_004 --batch 16 [--rounds 9]

Options (what "off" does to the copy's blocks):
  one_op_front  K1 and K2 run as two ops; on: as conv1x1_conv_bn_act where the block times it faster
  whole_x_block X blocks run as their ops; on: as x_block (one op) where the block times it faster
  native_k3     K3 runs as the eager reference's ATen ops; on: the se_excite op of the chosen backend
Prints each model's relative error against the original and, per block, the choices made.
"""

from __future__ import annotations

import argparse
import statistics
import time
import types

import torch

import regnet
import regnet_kernels as rk
from regnet_kernels.modules import SETTLE_CALLS, FusedXBlock, FusedYBlock, _stash
from regnet_kernels.ops.se_gate import se_excite_eager


def _two_ops(block):
    block._bind_front = lambda x, channel_sums: []


def _block_ops(block):
    block._bind_whole = lambda x: []


def _eager_k3(block):
    if isinstance(block, FusedYBlock):
        def excite(self, sums, y):
            _stash(self, "last_excite", se_excite_eager)  # the plan calls it like the bound op
            return se_excite_eager(sums, y.shape[2] * y.shape[3], *self._se_params())
        block._excite = types.MethodType(excite, block)


OFF = {"one_op_front": _two_ops, "whole_x_block": _block_ops, "native_k3": _eager_k3}


def choices(model):
    blocks = [b for b in model.modules() if isinstance(b, FusedXBlock)]
    one_op = [int(v) for b in blocks for v in b.front_trials.chosen.values()]
    whole = [int(v) for b in blocks for v in b.whole_trials.chosen.values()]
    in_se = [int(v) for b in blocks if isinstance(b, FusedYBlock) for v in b.gate_in_se.values()]
    return (f"K1+K2 as one op in {sum(one_op)}/{len(blocks)} blocks, whole X block in {sum(whole)}, "
            f"gate in SE {sum(in_se)}/{len(in_se)}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--option", choices=sorted(OFF), required=True)
    ap.add_argument("--model", default="regnety_004")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = regnet.create_model(args.model).eval()
    on, off = rk.optimize(model), rk.optimize(model)
    for block in off.modules():
        if isinstance(block, FusedXBlock):
            OFF[args.option](block)
    x = torch.randn(args.batch, 3, 224, 224)
    with torch.no_grad():
        ref = model(x)
        for _ in range(SETTLE_CALLS + 2):
            outs = {"on": on(x), "off": off(x)}
        for name, m in (("on", on), ("off", off)):
            err = ((outs[name] - ref).abs().max() / ref.abs().max()).item()
            print(f"{name:3s}: rel err {err:.1e}; {choices(m)}")
        reps = 10 if args.batch == 1 else 1
        ms = {"on": [], "off": []}
        for r in range(args.rounds):
            for name in (("on", "off") if r % 2 == 0 else ("off", "on")):
                m = on if name == "on" else off
                start = time.perf_counter()
                for _ in range(reps):
                    m(x)
                ms[name].append((time.perf_counter() - start) / reps * 1e3)
    t_on, t_off = statistics.median(ms["on"]), statistics.median(ms["off"])
    print(f"{args.model} batch {args.batch}, {args.option}: off {t_off:.2f} ms, on {t_on:.2f} ms, "
          f"off/on {t_off / t_on:.3f} (medians of {args.rounds} rounds x {reps})")


if __name__ == "__main__":
    main()
