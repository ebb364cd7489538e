"""`python -m regnet_kernels.info`: what is built and available, and which backend each op
would pick for sample inputs (and why the others would not)."""

from __future__ import annotations

import os
import platform

import torch

from . import _ext, dispatch, memory, replay


def _sample_args(device: str, dtype: torch.dtype, channels_last: bool = True):
    """Arguments of each op for a RegNetY-400MF stage-3 block (208 channels, group width 8, 14x14)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(16, 208, 14, 14, device=device, dtype=dtype).to(memory_format=fmt)
    w3 = torch.randn(208, 8, 3, 3, device=device, dtype=dtype)
    w1 = torch.randn(208, 208, 1, 1, device=device, dtype=dtype)
    b = torch.randn(208, device=device, dtype=dtype)
    se_w1, se_b1 = torch.randn(26, 208, device=device, dtype=dtype), torch.randn(26, device=device, dtype=dtype)
    se_w2, se_b2 = torch.randn(208, 26, device=device, dtype=dtype), torch.randn(208, device=device, dtype=dtype)
    gate = torch.rand(16, 208, device=device)
    conv = dict(x=x, weight=w3, bias=b, stride=1, padding=1, groups=26, residual=None, relu=True, channel_sums=True)
    return {
        "conv_bn_act (grouped 3x3 + sums, K2)": ("conv_bn_act", conv),
        "conv_bn_act (1x1)": ("conv_bn_act", {**conv, "weight": w1, "padding": 0, "groups": 1, "channel_sums": False}),
        "conv1x1_conv_bn_act (K1 + K2 + sums)": ("conv1x1_conv_bn_act", dict(
            x=x, w1=w1, b1=b, w2=w3, b2=b, stride=1, padding=1, groups=26, relu=True, channel_sums=True)),
        "x_block (a whole X block)": ("x_block", dict(x=x, w1=w1, b1=b, w2=w3, b2=b, w3=w1, b3=b, residual=x,
                                                      stride=1, padding=1, groups=26)),
        "se_excite (K3, on the sums)": ("se_excite", dict(x=x.float().sum((2, 3)), hw=14 * 14, w1=se_w1.float(),
                                                          b1=se_b1.float(), w2=se_w2.float(), b2=se_b2.float())),
        "se_gate (+ residual + ReLU)": ("se_gate", dict(x=x, w1=se_w1, b1=se_b1, w2=se_w2, b2=se_b2, residual=x,
                                                        relu=True, sums=None)),
        "gated_conv1x1 (K4)": ("gated_conv1x1", dict(x=x, gate=gate, weight=w1[:, :, 0, 0], bias=b, residual=x,
                                                     relu=True)),
    }


def report() -> str:
    from .backends import IMPORT_ERRORS

    lines = []
    ext = _ext.load()
    lines.append(f"torch {torch.__version__} (CUDA build: {torch.version.cuda or 'no'}), python {platform.python_version()}")
    lines.append(f"extension regnet_kernels._C: {'built ' + str(_ext.build_info()) if ext else 'NOT available: ' + str(_ext.error())}")
    lines.append(f"CUDA device: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
    try:
        import triton

        tv = triton.__version__
    except ImportError as e:
        tv = f"not importable ({e})"
    lines.append(f"triton: {tv}; interpreter (TRITON_INTERPRET=1): {'on' if os.environ.get('TRITON_INTERPRET') == '1' else 'off'}")
    lines.append(f"CPU: {torch.backends.cpu.get_cpu_capability()}, threads {torch.get_num_threads()}")
    if "cpu" not in IMPORT_ERRORS:
        from .backends import cpu as cpu_backend

        lines.append(cpu_backend.onednn_routes())
        lines.append(memory.pool_summary())
        why_not = ("REGNET_KERNELS_REPLAY=0" if not replay.REPLAY_ENABLED
                   else "the extension was built without CallList: rebuild it")
        lines.append("settled forwards of optimized models replayed from C++ (CallList): " + (
            "yes; REGNET_KERNELS_REPLAY=0 turns it off" if replay.available() else f"no ({why_not})"))
    forced = os.environ.get(dispatch.ENV_VAR)
    order = " > ".join(f"{n} ({'/'.join(d) if d else 'any device'})" for n, d in
                       ((n, dispatch.AUTO_DEVICES[n]) for n in dispatch.AUTO_ORDER))
    lines.append(f"auto order: {order}; ${dispatch.ENV_VAR}={forced or '(unset: auto)'}")
    extras = [f"{b}: {op}.{e}" for op, names in dispatch.EXTRAS.items() for e in names for b in dispatch.AUTO_ORDER
              if dispatch.extra(op, b, e) is not None]
    lines.append("backend extras (for the fused modules and the public ops): " + (", ".join(extras) or "none"))
    cache = ("off (REGNET_KERNELS_RESOLVE_CACHE=0)" if not dispatch.RESOLVE_CACHE else
             "off (it keys with the extension, not built)" if ext is None else
             "on; REGNET_KERNELS_RESOLVE_CACHE=0 turns it off")
    lines.append(f"public ops check their arguments and choose a backend once per call signature: {cache}")
    for name, err in IMPORT_ERRORS.items():
        lines.append(f"backend {name} failed to import: {err}")
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        for dtype in (torch.float32, torch.bfloat16):
            for label, (op, args) in _sample_args(device, dtype).items():
                verdicts = dispatch.explain(op, **args)
                pick = next((n for n, r in verdicts if not r), "none")
                lines.append(f"\n{label} on {device} {str(dtype).replace('torch.', '')} channels_last -> {pick}")
                for name, reasons in verdicts:
                    lines.append(f"    {name:7s} {'ok' if not reasons else '; '.join(reasons)}")
    return "\n".join(lines)


def main() -> None:
    print(report())


if __name__ == "__main__":
    main()
