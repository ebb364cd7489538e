"""Whole-model inference throughput: regnet_kernels.optimize() against the baselines users have.

    python bench/compare.py --short                  # the README's main job: one model, batch 1 and 16
    python bench/compare.py --models regnety_004 --batches 16 --configs eager_nchw optimize
    pytest bench/test_bench_models.py --benchmark-enable   # the same rows through pytest-benchmark

Every row first checks its output against eager fp32 (a wrong fast path is not a result); the rows
of one (model, batch) are then timed interleaved, round by round (whole forward passes). Results: a markdown table (images/s and the ratio to eager NCHW
measured in the same run), JSON, and a bar chart (PNG) in bench/results/. Rows that cannot run
here (no GPU, a package missing) are listed as skipped with the reason. The expected bytes moved
per forward (eager versus the fused schedule) are printed so GPU figures can be judged against
the card's bandwidth when a GPU runs them.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import itertools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import types
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional

import torch
from torch import nn

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import regnet  # noqa: E402
from regnet.checkpoint import atomic_write  # noqa: E402
import regnet_kernels as rk  # noqa: E402
from regnet_kernels.modules import SETTLE_CALLS  # noqa: E402

RESULTS_DIR = os.path.join(HERE, "results")
DEFAULT_MODELS = ["regnetx_002", "regnetx_004", "regnety_004", "regnety_016"]


class Skip(Exception):
    """This configuration cannot run here; the message says why."""


@dataclass
class Row:
    model: str
    batch: int
    config: str
    images_per_s: Optional[float] = None
    ms_per_batch: Optional[float] = None
    rel_err_vs_eager: Optional[float] = None
    skipped: Optional[str] = None
    ratio_vs_eager: Optional[float] = None
    peak_mb: Optional[float] = None
    extra: Dict[str, float] = field(default_factory=dict)


# ---- configurations: each builds a callable x -> logits from the eval-mode fp32 model -------

def _eager_nchw(model, x):
    return model, x


def _eager_channels_last(model, x):
    return copy.deepcopy(model).to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)


def fold_model_bn(model: nn.Module) -> nn.Module:
    """A plain-PyTorch copy with every conv -> BN pair folded (BN replaced by Identity)."""
    folded = copy.deepcopy(model)
    pairs = [("stem", "conv", "bn"), ("", "proj", "bn"), ("f", "a", "a_bn"), ("f", "b", "b_bn"), ("f", "c", "c_bn")]
    for module in folded.modules():
        for owner, conv_name, bn_name in pairs:
            conv, bn = getattr(module, conv_name, None), getattr(module, bn_name, None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                w, b = rk.fold_bn(conv, bn)
                conv.weight.data, conv.bias = w, nn.Parameter(b)
                setattr(module, bn_name, nn.Identity())
    return folded


def _eager_folded(model, x):
    return fold_model_bn(model).to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)


_COMPILED_ROWS = itertools.count()


def _compile(model, x, freezing=False, mode=None):
    """torch.compile of a channels-last copy, compiled (and frozen) here, on the first call.

    Dynamo caches compiled graphs per code object, and with nn modules inlined two compiled copies
    of one model share AnyNet.forward's: a second compile row would silently reuse the first
    row's graph (checked: torch._dynamo's unique_graphs stays 1). Each row therefore compiles a
    forwarding function with a code object of its own, so rows can be timed interleaved."""
    import torch._inductor.config as inductor_config

    m = copy.deepcopy(model).to(memory_format=torch.channels_last)

    def forward(inp):
        return m(inp)

    own = types.FunctionType(forward.__code__.replace(co_name=f"compiled_row_{next(_COMPILED_ROWS)}"),
                             forward.__globals__, forward.__name__, None, forward.__closure__)
    compiled = torch.compile(own, mode=mode)
    xin = x.to(memory_format=torch.channels_last)
    with inductor_config.patch(freezing=freezing), torch.no_grad():
        compiled(xin)
    return compiled, xin


@contextlib.contextmanager
def onnx_file(model, x):
    """The model exported to ONNX (opset 17) in a temporary directory, removed on exit: the
    runtimes read the file when they build their session."""
    with tempfile.TemporaryDirectory(prefix="regnet_onnx_") as tmp:
        path = os.path.join(tmp, "model.onnx")
        torch.onnx.export(copy.deepcopy(model), (x,), path, input_names=["x"], output_names=["y"], dynamo=False,
                          opset_version=17)
        yield path


def _onnxruntime(model, x):
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise Skip(f"onnxruntime not installed ({e}); pip install onnxruntime") from None
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.inter_op_num_threads = 1
    with onnx_file(model, x) as path:
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    run = lambda inp: torch.from_numpy(sess.run(None, {"x": inp.numpy()})[0])  # noqa: E731
    return run, x


def _openvino(model, x, precision="f32"):
    try:
        import openvino as ov
    except ImportError as e:
        raise Skip(f"openvino not installed ({e}); pip install openvino") from None
    core = ov.Core()
    with onnx_file(model, x) as path:
        compiled = core.compile_model(ov.convert_model(path), "CPU", {
            "INFERENCE_NUM_THREADS": str(torch.get_num_threads()),
            "INFERENCE_PRECISION_HINT": precision,  # otherwise it picks bf16 on AVX-512-BF16 CPUs
            "PERFORMANCE_HINT": "LATENCY",
        })
    run = lambda inp: torch.from_numpy(compiled(inp.numpy())[0].copy())  # noqa: E731
    return run, x


def _optimize(model, x, dtype=torch.float32):
    fused = rk.optimize(model, dtype=dtype)
    # Channels-last input, as the other channels-last rows get (it would be converted inside).
    return (lambda inp: fused(inp).float()), x.to(memory_format=torch.channels_last)


def _needs_gpu(fn):
    def build(model, x):
        if not torch.cuda.is_available():
            raise Skip("no CUDA GPU on this machine")
        return fn(model.cuda(), x.cuda())

    return build


class CudnnFusedRegNet(nn.Module):
    """The cuDNN fused-conv baseline: BN folded, every conv + bias + ReLU through
    torch.cudnn_convolution_relu and each block's last conv + shortcut + ReLU through
    torch.cudnn_convolution_add_relu; SE, projection and head stay eager. What cuDNN's own
    fusions give without our kernels. `conv_relu` / `conv_add_relu` take those two functions'
    signatures, so tests can check the wiring on the CPU with eager twins (eager_twins())."""

    def __init__(self, model: nn.Module, conv_relu: Optional[Callable] = None, conv_add_relu: Optional[Callable] = None):
        super().__init__()
        self.net = fold_model_bn(model)
        self.conv_relu = conv_relu or torch.cudnn_convolution_relu
        self.conv_add_relu = conv_add_relu or torch.cudnn_convolution_add_relu

    @staticmethod
    def _geometry(conv: nn.Conv2d):
        return list(conv.stride), list(conv.padding), list(conv.dilation), conv.groups

    def forward(self, x):
        net = self.net
        x = self.conv_relu(x, net.stem.conv.weight, net.stem.conv.bias, *self._geometry(net.stem.conv))
        for name, stage in net.named_children():
            if not (name.startswith("s") and name[1:].isdigit()):
                continue
            for blk in stage.children():
                f = blk.f
                shortcut = x if blk.proj is None else blk.proj(x)  # folded: the BN is an Identity now
                y = self.conv_relu(x, f.a.weight, f.a.bias, *self._geometry(f.a))
                y = self.conv_relu(y, f.b.weight, f.b.bias, *self._geometry(f.b))
                if f.se is not None:
                    y = f.se(y)
                x = self.conv_add_relu(y, f.c.weight, shortcut, 1.0, f.c.bias, *self._geometry(f.c))
        return net.head(x)

    @staticmethod
    def eager_twins():
        """(conv_relu, conv_add_relu) in plain PyTorch with the cuDNN functions' signatures."""
        import torch.nn.functional as F

        def conv_relu(x, w, b, stride, padding, dilation, groups):
            return F.relu(F.conv2d(x, w, b, stride, padding, dilation, groups))

        def conv_add_relu(x, w, z, alpha, b, stride, padding, dilation, groups):
            return F.relu(F.conv2d(x, w, b, stride, padding, dilation, groups) + alpha * z)

        return conv_relu, conv_add_relu


def _cudnn_fused_relu(model, x):
    """fp16 channels_last, as the other GPU rows."""
    fused = CudnnFusedRegNet(model).half().to(memory_format=torch.channels_last)
    return (lambda inp: fused(inp).float()), x.half().to(memory_format=torch.channels_last)


CONFIGS: Dict[str, Callable] = {
    "eager_nchw": _eager_nchw,
    "eager_channels_last": _eager_channels_last,
    "eager_bn_folded_cl": _eager_folded,
    "compile": lambda m, x: _compile(m, x),
    "compile_freezing": lambda m, x: _compile(m, x, freezing=True),
    "onnxruntime": _onnxruntime,
    "openvino_fp32": _openvino,
    "openvino_bf16": lambda m, x: _openvino(m, x, "bf16"),
    "optimize": _optimize,
    "optimize_bf16": lambda m, x: _optimize(m, x, torch.bfloat16),
    "gpu_eager_cl_fp16": _needs_gpu(lambda m, x: (m.half().to(memory_format=torch.channels_last),
                                                   x.half().to(memory_format=torch.channels_last))),
    "gpu_compile_max_autotune": _needs_gpu(lambda m, x: _compile(m, x, freezing=True, mode="max-autotune")),
    "gpu_cudnn_fused_relu": _needs_gpu(_cudnn_fused_relu),
    "gpu_optimize_fp16": _needs_gpu(lambda m, x: _optimize(m, x, torch.float16)),
}
SHORT_CONFIGS = ["eager_nchw", "eager_channels_last", "compile_freezing", "onnxruntime", "openvino_fp32",
                 "openvino_bf16", "optimize", "optimize_bf16", "gpu_optimize_fp16"]
BF16_CONFIGS = {"openvino_bf16", "optimize_bf16", "gpu_eager_cl_fp16", "gpu_optimize_fp16", "gpu_cudnn_fused_relu"}


# ---- bytes moved per forward (the GPU yardstick) ---------------------------------------------

def bytes_moved(model_name: str, batch: int, resolution: int = 224, elem: int = 2) -> Dict[str, int]:
    """Activation bytes read + written per forward, eager (one pass per op) vs the fused schedule.

    Eager per block: conv a (r x, w a), BN (r+w a), ReLU (r+w a), conv b (r a, w b), BN, ReLU,
    [SE: pool r b, gate mul r+w b], conv c (r b, w c), BN (r+w c), [proj conv r x w c, BN r+w c],
    add (r c, r shortcut, w y), ReLU (r+w y). Fused: K1 (r x, w a), K2 (r a, w b; sums ride the
    epilogue), K4 (r b, r shortcut, w y), [proj: r x, w shortcut]. Weights are not counted.
    """
    params = regnet.config_of(model_name)
    stages = params.stages()
    h = (resolution - 1) // 2 + 1
    w_in, eager, fused = params.stem_w, 0, 0
    for s in stages:
        for i in range(s.depth):
            stride = s.stride if i == 0 else 1
            h_out = (h - 1) // stride + 1
            x_sz, a_sz = w_in * h * h, s.bottleneck_width * h * h
            b_sz, y_sz = s.bottleneck_width * h_out * h_out, s.width * h_out * h_out
            proj = w_in != s.width or stride != 1
            se = s.se_r > 0
            eager += (x_sz + a_sz) + 4 * a_sz + (a_sz + b_sz) + 4 * b_sz + (3 * b_sz if se else 0) \
                + (b_sz + y_sz) + 2 * y_sz + ((x_sz + y_sz) + 2 * y_sz if proj else 0) + 3 * y_sz + 2 * y_sz
            fused += (x_sz + a_sz) + (a_sz + b_sz) + (b_sz + 2 * y_sz) + ((x_sz + y_sz) if proj else 0)
            w_in, h = s.width, h_out
    return {"eager_bytes": eager * batch * elem, "fused_bytes": fused * batch * elem}


# ---- measuring -------------------------------------------------------------------------------

def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    return ((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12)).item()


def time_forward(fn: Callable, x: torch.Tensor, min_time: float, min_iters: int = 3) -> List[float]:
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    times: List[float] = []
    start = time.perf_counter()
    while len(times) < min_iters or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn(x)
        sync()
        times.append(time.perf_counter() - t0)
    return times


# Calls before timing: compilation and weight packing on the first, and the optimized model times
# its machine-dependent choices (conv routes, Y-block schedules) on its first SETTLE_CALLS.
WARMUP_CALLS = max(3, SETTLE_CALLS)


def prepare(model_name: str, batch: int, config: str, resolution: int = 224):
    """(fn, input, relative error vs eager fp32) of a row, warmed up and checked, or raises Skip
    (including for a wrong output: a wrong fast path is not a result)."""
    torch.manual_seed(0)
    model = regnet.create_model(model_name).eval()
    x = torch.randn(batch, 3, resolution, resolution)
    with torch.no_grad():
        ref = model(x)
        fn, xin = CONFIGS[config](model, x)
        out = fn(xin)  # also the warm-up (compilation, prepacking)
        for _ in range(WARMUP_CALLS - 1):
            fn(xin)
    err = rel_err(out, ref)
    tol = 5e-2 if config in BF16_CONFIGS else 1e-3
    if not err <= tol:
        raise Skip(f"WRONG OUTPUT: relative error {err:.3g} > {tol} vs eager fp32")
    return fn, xin, err


PEAK_NOTE = ("peak MB: memory allocated through torch during one forward above what was allocated before "
             "it (activations, workspaces; not weights), from the profiler's memory records (CPU) or the CUDA "
             "allocator; n/a for runtimes that allocate outside torch.")
# Rows whose memory lives outside torch's allocator: their peak is not measured.
FOREIGN_RUNTIMES = {"onnxruntime", "openvino_fp32", "openvino_bf16"}


@contextlib.contextmanager
def _native_stderr_silenced():
    """The profiler's native library logs start/stop lines on fd 2 at every use; the table is the output."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory_mb(fn: Callable, x: torch.Tensor) -> float:
    """Peak of the memory allocated through torch during one forward, above what was allocated
    before it (activations and workspaces; weights excluded), in MiB. On a GPU: the CUDA
    allocator's peak. On the CPU: the profiler's allocation records, replayed in order."""
    from torch.profiler import ProfilerActivity, profile

    with torch.no_grad():
        if x.is_cuda:
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            fn(x)
            torch.cuda.synchronize()
            return (torch.cuda.max_memory_allocated() - base) / 2 ** 20
        with _native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            fn(x)
    # The trace's "[memory]" records are the raw allocations and frees, op or no op (a compiled
    # region's inner buffers included); replayed in time order, their running sum peaks here.
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(path)
        with open(path) as f:
            trace = json.load(f)
    records = sorted((e["ts"], e["args"]["Bytes"]) for e in trace["traceEvents"] if e.get("name") == "[memory]")
    live = peak = 0
    for _, delta in records:
        live += delta
        peak = max(peak, live)
    return peak / 2 ** 20


def run_group(model_name: str, batch: int, configs: List[str], min_time: float, resolution: int = 224,
              rounds: int = 5) -> List[Row]:
    """Rows of one (model, batch), timed side by side: every row is built and checked first, then
    timed in `rounds` interleaved rounds of min_time / rounds each, so a burst of load from other
    processes on a shared machine hits all rows alike. Images/s from each row's median forward."""
    rows, ready = [], {}
    for config in configs:
        row = Row(model_name, batch, config)
        try:
            fn, xin, row.rel_err_vs_eager = prepare(model_name, batch, config, resolution)
            ready[config] = (fn, xin, [])
        except Skip as e:
            row.skipped = str(e)
        rows.append(row)
    with torch.no_grad():
        for _ in range(rounds):
            for fn, xin, times in ready.values():
                times.extend(time_forward(fn, xin, min_time / rounds, min_iters=1))
    for row in rows:
        if row.config in ready:
            fn, xin, times = ready[row.config]
            row.ms_per_batch = statistics.median(times) * 1e3
            row.images_per_s = batch / statistics.median(times)
            if row.config not in FOREIGN_RUNTIMES:
                row.peak_mb = peak_memory_mb(fn, xin)
    return rows


def run_row(model_name: str, batch: int, config: str, min_time: float, resolution: int = 224) -> Row:
    return run_group(model_name, batch, [config], min_time, resolution, rounds=1)[0]


def add_ratios(rows: List[Row]) -> None:
    base = {(r.model, r.batch): r.images_per_s for r in rows if r.config == "eager_nchw" and r.images_per_s}
    for r in rows:
        b = base.get((r.model, r.batch))
        r.ratio_vs_eager = r.images_per_s / b if (b and r.images_per_s) else None


def machine() -> str:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu}, {torch.get_num_threads()} threads, {torch.backends.cpu.get_cpu_capability()}; {gpu}; "
            f"torch {torch.__version__}, python {platform.python_version()}")


def markdown(rows: List[Row]) -> str:
    lines = ["| model | batch | config | images/s | vs eager NCHW | ms/batch | peak MB | rel err vs eager |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r.skipped:
            lines.append(f"| {r.model} | {r.batch} | {r.config} | skipped: {r.skipped} | | | | |")
        else:
            ratio = f"{r.ratio_vs_eager:.2f}x" if r.ratio_vs_eager else ""
            peak = f"{r.peak_mb:.0f}" if r.peak_mb is not None else "n/a"
            lines.append(f"| {r.model} | {r.batch} | {r.config} | {r.images_per_s:.1f} | {ratio} | "
                         f"{r.ms_per_batch:.2f} | {peak} | {r.rel_err_vs_eager:.1e} |")
    return "\n".join(lines)


def bar_chart(rows: List[Row], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(r.model, r.batch) for r in rows})
    configs = [c for c in CONFIGS if any(r.config == c and r.images_per_s for r in rows)]
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups) * max(1, len(configs)) / 4), 4.5))
    width = 0.8 / max(1, len(configs))
    for j, c in enumerate(configs):
        vals = [next((r.images_per_s or 0 for r in rows if (r.model, r.batch) == g and r.config == c), 0) for g in groups]
        ax.bar([i + j * width for i in range(len(groups))], vals, width, label=c)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))])
    ax.set_xticklabels([f"{m}\nbatch {b}" for m, b in groups])
    ax.set_ylabel("images/s")
    ax.set_title("RegNet inference throughput (higher is better)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_results(rows: List[Row], tag: str) -> Dict[str, str]:
    os.makedirs(RESULTS_DIR, exist_ok=True)
    paths = {ext: os.path.join(RESULTS_DIR, f"{tag}.{ext}") for ext in ("json", "md", "png")}
    payload = {"machine": machine(), "rows": [asdict(r) for r in rows]}
    for path, text in ((paths["json"], json.dumps(payload, indent=1)),
                       (paths["md"], f"Machine: {machine()}\n\n{markdown(rows)}\n\n{PEAK_NOTE}\n")):
        atomic_write(path, lambda f, text=text: f.write(text), binary=False)
    bar_chart(rows, paths["png"])
    return paths


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--short", action="store_true", help="one model (regnety_004), batch 1 and 16, short timings")
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS, choices=sorted(regnet.ZOO))
    p.add_argument("--batches", nargs="+", type=int, default=[1, 16])
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--min-time", type=float, default=3.0, help="seconds of timing per row")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tag", default=None, help="results file name (default: short or full)")
    args = p.parse_args(argv)
    if args.short:
        args.models, args.min_time = ["regnety_004"], min(args.min_time, 1.5)
        if "--configs" not in (argv if argv is not None else sys.argv):
            args.configs = SHORT_CONFIGS
    torch.set_num_threads(args.threads)
    print(f"machine: {machine()}")
    rows = []
    for model_name in args.models:
        for batch in args.batches:
            est = bytes_moved(model_name, batch)
            print(f"{model_name} batch {batch}: expected activation bytes per forward at fp16: eager "
                  f"{est['eager_bytes'] / 1e6:.0f} MB, fused {est['fused_bytes'] / 1e6:.0f} MB "
                  f"({est['eager_bytes'] / est['fused_bytes']:.1f}x less)", flush=True)
            group = run_group(model_name, batch, args.configs, args.min_time)
            for row in group:
                row.extra.update(est)
                print(f"  {row.config:26s} " + (f"skipped: {row.skipped}" if row.skipped else
                                               f"{row.images_per_s:8.1f} img/s  (rel err {row.rel_err_vs_eager:.1e})"),
                      flush=True)
            rows.extend(group)
    add_ratios(rows)
    paths = write_results(rows, args.tag or ("short" if args.short else "full"))
    print()
    print(markdown(rows))
    print(f"\n{PEAK_NOTE}")
    print(f"\nwritten: {', '.join(paths.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
