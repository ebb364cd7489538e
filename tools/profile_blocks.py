"""Where a forward's time goes: optimize()'s model per block next to ONNX Runtime's nodes per block.

    python tools/profile_blocks.py --model regnetx_004 --batch 1 [--iters 200]

Ours: forward pre-hooks and hooks on the stem, every block and the head record wall-clock time
(perf_counter; a few microseconds of overhead a part). ORT: the session's own profile
(`SessionOptions.enable_profiling`), its node durations summed per block by the node names the
ONNX exporter gives (`/s3/b1/...`); the time between ORT's nodes is not in its rows. Medians
over the timed forwards, in microseconds. Both run in this process, in alternating chunks of
forwards, so the VM's drift hits both alike. Used for NOTES' per-block comparisons.

The "forward" row times whole forwards without the hooks (a hooked forward runs through the
modules; an unhooked settled one is replayed from C++, bench/NOTES.md Step 16), so it can be
less than the sum of the parts. The "hot" column runs each of our parts alone, again and again, on the input it got in a forward
(a fresh copy per call: blocks may write into their input), under the forward's memory pool: its
weights and code stay in cache, so "in model - hot" is what the rest of the forward costs that
part (weights evicted by the other parts' weights, cold code after the stages: bench/NOTES.md,
Step 15).
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "bench")]
import regnet  # noqa: E402
import regnet_kernels as rk  # noqa: E402
from compare import onnx_file  # noqa: E402
from regnet_kernels.memory import pooled_cpu_memory  # noqa: E402


def part_names(fused):
    """The fused model's parts and the names the exporter gives the same parts of the original
    (its blocks are s1.b1, s1.b2, ...; the fused model's s1.0, s1.1, ...)."""
    ours, onnx = ["stem"], ["stem"]
    for stage in ("s1", "s2", "s3", "s4"):
        n = len(getattr(fused, stage))
        ours += [f"{stage}.{i}" for i in range(n)]
        onnx += [f"{stage}.b{i + 1}" for i in range(n)]
    return ours + ["head"], onnx + ["head"]


def hook_parts(model, names, sink):
    """Time every call of each part into sink[name]; returns the hooks' handles."""
    start, handles = {}, []
    for name in names:
        module = model.get_submodule(name)

        def pre(_m, _a, name=name):
            start[name] = time.perf_counter()

        def post(_m, _a, _o, name=name):
            sink[name].append((time.perf_counter() - start[name]) * 1e6)

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    return handles


def hot_times(fused, names, xin, calls):
    """Median microseconds of each part run alone `calls` times on the input it got in a forward."""
    inputs = {}
    handles = [fused.get_submodule(name).register_forward_pre_hook(
        lambda _m, args, name=name: inputs.__setitem__(name, args[0].clone(memory_format=torch.channels_last)))
        for name in names]
    fused(xin)
    for handle in handles:
        handle.remove()
    hot = {}
    with pooled_cpu_memory():
        for name in names:
            part, times = fused.get_submodule(name), []
            for i in range(calls + 2):  # the first two calls are not counted
                inp = inputs[name].clone(memory_format=torch.channels_last)
                t = time.perf_counter()
                part(inp)
                if i >= 2:
                    times.append((time.perf_counter() - t) * 1e6)
            hot[name] = statistics.median(times)
    return hot


def ort_session(model, x, threads, profile_dir):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.enable_profiling = True
    opts.profile_file_prefix = os.path.join(profile_dir, "ort")
    with onnx_file(model, x) as path:  # exported as bench/compare.py's onnxruntime row does
        return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def ort_part(node_name, names):
    # Exported names look like "/s3/b1/f/a_af/Relu_output_0_nchwc" or "/stem/af/Relu...";
    # layout reorders ORT inserts ("ReorderOutput") have none and count as "other".
    parts = node_name.strip("/").split("/")
    if len(parts) >= 2 and f"{parts[0]}.{parts[1]}" in names:
        return f"{parts[0]}.{parts[1]}"
    return parts[0] if parts[0] in names else "other"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="regnetx_004")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--iters", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = regnet.create_model(args.model).eval()
    x = torch.randn(args.batch, 3, 224, 224)
    fused = rk.optimize(model)
    names, onnx_names = part_names(fused)
    xin = x.to(memory_format=torch.channels_last)
    ours = collections.defaultdict(list)
    totals = {"ours": [], "ort": []}
    with tempfile.TemporaryDirectory(prefix="regnet_profile_") as tmp:
        sess = ort_session(model, x, args.threads, tmp)
        xnp = x.numpy()
        with torch.no_grad():
            # Settle the timed choices first, on their own: ORT's spinning threads would time them.
            for _ in range(max(40, rk.modules.SETTLE_CALLS + 10)):
                fused(xin)
            for _ in range(20):
                sess.run(None, {"x": xnp})
            # Chunks of forwards, alternating: forward by forward, each runtime's idle threads
            # (ORT's spin, OpenMP's) would still be busy when the other starts. Ours twice: with
            # the timing hooks (the parts; hooks send a forward through the modules) and without
            # them (the forward row: the settled forward as users run it, replayed from C++).
            chunk = 20
            for _ in range(0, args.iters, chunk):
                timing_hooks = hook_parts(fused, names, ours)
                for _ in range(chunk):
                    fused(xin)
                for handle in timing_hooks:
                    handle.remove()
                for _ in range(chunk):
                    t = time.perf_counter()
                    fused(xin)
                    totals["ours"].append((time.perf_counter() - t) * 1e6)
                for _ in range(chunk):
                    t = time.perf_counter()
                    sess.run(None, {"x": xnp})
                    totals["ort"].append((time.perf_counter() - t) * 1e6)
        with open(sess.end_profiling()) as f:
            events = json.load(f)
        with torch.no_grad():
            hot = hot_times(fused, names, xin, max(10, args.iters // 4))
    # Per run, the sum of each block's node durations; the warm-up runs are dropped. Events are
    # written as they end, so a run's node events come before its model_run event.
    runs, current = [], None
    for ev in events:
        if ev.get("cat") == "Session" and ev.get("name") == "model_run":
            runs.append(current or collections.Counter())
            current = None
        elif ev.get("cat") == "Node" and ev["name"].endswith("_kernel_time"):
            current = current or collections.Counter()
            current[ort_part(ev["args"].get("node_name", ev["name"][:-len("_kernel_time")]), onnx_names)] += ev["dur"]
    runs = [c for c in runs if c][-args.iters:]
    print(f"{args.model} batch {args.batch}, {args.threads} threads, medians of {args.iters} forwards (us)")
    print(f"{'part':<8} {'ours':>9} {'ORT':>9} {'ours-ORT':>9} {'ours hot':>9} {'ours-hot':>9}")
    sum_ours = sum_ort = sum_hot = 0.0
    for name, onnx_name in zip(names + ["other"], onnx_names + ["other"]):
        o = statistics.median(ours[name]) if ours.get(name) else 0.0
        r = statistics.median([c.get(onnx_name, 0) for c in runs]) if runs else 0.0
        h = hot.get(name, 0.0)
        sum_ours, sum_ort, sum_hot = sum_ours + o, sum_ort + r, sum_hot + h
        if o or r:
            print(f"{name:<8} {o:9.0f} {r:9.0f} {o - r:9.0f} {h:9.0f} {o - h:9.0f}")
    print(f"{'sum':<8} {sum_ours:9.0f} {sum_ort:9.0f} {sum_ours - sum_ort:9.0f} {sum_hot:9.0f} {sum_ours - sum_hot:9.0f}")
    print(f"{'forward':<8} {statistics.median(totals['ours']):9.0f} {statistics.median(totals['ort']):9.0f}"
          f" {statistics.median(totals['ours']) - statistics.median(totals['ort']):9.0f}")


if __name__ == "__main__":
    main()
