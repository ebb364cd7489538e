"""Compile every Triton kernel variant the triton backend can launch for sm_80 and sm_90, without a
GPU, and report registers, spills and shared memory (DESIGN.md section 3, evidence 2).

    PYTHONPATH=. python3 tools/gpu_compile_report.py [--arch 80 90] [--jobs N] [--only TEXT]

The variants come from each op module's compile_variants() (regnet_kernels/triton/), which lists
every (config, dtype, layout) its launcher can produce. Each is compiled with
triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32)); ptxas -v (the one triton
ships) on the PTX gives registers and spill bytes (k.n_regs / k.n_spills need a GPU), and
k.metadata.shared the shared memory. Exit status 1 on any spill, any shared memory over the
architecture's per-block limit, or any compile error.

If tools/cuda_compile_report.py exists (the nvcc part, owned by the CUDA backend), its
main([]) -> int (its defaults: the archs the build ships) runs afterwards and its status is
combined with this one (--no-cuda skips it).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import List, Optional

# Opt-in shared memory per block: A100 (sm_80) 163 KB, H100 (sm_90) 227 KB.
SMEM_LIMIT = {80: 166912, 90: 232448}
PTXAS_ARCH = {80: "sm_80", 90: "sm_90a"}  # triton emits sm_90a PTX for capability 90

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Row:
    kernel: str
    config: str
    dtype: str
    layout: str
    arch: int
    regs: Optional[int] = None
    spill_stores: Optional[int] = None
    spill_loads: Optional[int] = None
    smem: Optional[int] = None
    seconds: float = 0.0
    error: Optional[str] = None

    def problems(self) -> List[str]:
        if self.error:
            return [f"compile error: {self.error}"]
        out = []
        if self.regs is None or self.spill_stores is None:
            out.append("ptxas -v printed no register/spill line")
        elif self.spill_stores or self.spill_loads:
            out.append(f"spills {self.spill_stores} B stored / {self.spill_loads} B loaded")
        if self.smem is not None and self.smem > SMEM_LIMIT[self.arch]:
            out.append(f"shared memory {self.smem} B > {SMEM_LIMIT[self.arch]} B")
        return out


def all_variants():
    """Every KernelVariant of every op module (import here: the workers call it after fork)."""
    from regnet_kernels.triton import conv_bn_act, se_gate

    return list(conv_bn_act.compile_variants()) + list(se_gate.compile_variants())


def ptxas_path() -> str:
    import triton

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    if not os.path.exists(path):
        raise FileNotFoundError(f"triton's bundled ptxas not found at {path}")
    return path


def parse_ptxas(log: str):
    """(registers, spill store bytes, spill load bytes) from `ptxas -v` output (one kernel)."""
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    return (int(regs.group(1)) if regs else None,
            int(spills.group(1)) if spills else None, int(spills.group(2)) if spills else None)


def compile_one(index: int, arch: int) -> Row:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    v = all_variants()[index]
    row = Row(v.name, v.config, v.dtype, v.layout, arch)
    start = time.time()
    try:
        src = ASTSource(fn=v.kernel, signature=v.signature, constexprs=v.constexprs, attrs=v.attrs)
        k = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": v.num_warps})
        row.smem = k.metadata.shared
        with tempfile.TemporaryDirectory() as tmp:
            ptx = os.path.join(tmp, "kernel.ptx")
            with open(ptx, "w") as f:
                f.write(k.asm["ptx"])
            cmd = [ptxas_path(), f"-arch={PTXAS_ARCH[arch]}", "-v", ptx, "-o", os.path.join(tmp, "k.cubin")]
            res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"ptxas failed: {res.stderr.strip()[-500:]}")
        row.regs, row.spill_stores, row.spill_loads = parse_ptxas(res.stdout + res.stderr)
    except Exception as e:  # reported as a row, so one bad variant does not hide the others
        row.error = f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"
    row.seconds = time.time() - start
    return row


def format_table(rows: List[Row]) -> str:
    head = ("kernel", "config", "dtype", "layout", "arch", "regs", "spills st/ld B", "smem B", "s", "status")
    body = []
    for r in rows:
        problems = r.problems()
        body.append((r.kernel, r.config, r.dtype, r.layout, f"sm_{r.arch}", str(r.regs),
                     f"{r.spill_stores}/{r.spill_loads}", str(r.smem), f"{r.seconds:.1f}", "; ".join(problems) or "ok"))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    fmt = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(b) for b in body])


def run_cuda_report() -> Optional[int]:
    """The nvcc part's exit status, or None when tools/cuda_compile_report.py does not exist yet."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    try:
        import cuda_compile_report
    except ImportError:
        return None
    return int(cuda_compile_report.main([]) or 0)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, nargs="+", default=[80, 90], choices=sorted(SMEM_LIMIT))
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel compiles")
    ap.add_argument("--only", default="", help="compile only variants whose kernel/config/dtype/layout contain this")
    ap.add_argument("--no-cuda", action="store_true", help="skip tools/cuda_compile_report.py")
    args = ap.parse_args(argv)

    # Real compilation needs JITFunctions, not the interpreter's; cache in a scratch dir so the
    # report compiles from scratch and leaves no cache behind in the user's home.
    os.environ.pop("TRITON_INTERPRET", None)
    cache = tempfile.TemporaryDirectory(prefix="regnet_triton_cache_")
    os.environ["TRITON_CACHE_DIR"] = cache.name
    sys.path.insert(0, REPO)
    from regnet_kernels.triton.interpreter_fixes import interpreting

    if interpreting():
        raise SystemExit("triton was imported under TRITON_INTERPRET=1; run this script in its own process")

    variants = all_variants()
    jobs = [(i, arch) for i, v in enumerate(variants) for arch in args.arch
            if args.only in f"{v.name} {v.config} {v.dtype} {v.layout}"]
    start = time.time()
    # fork: workers inherit the imported modules and env; nothing has touched a GPU driver.
    ctx = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=ctx) as pool:
        rows = list(pool.map(compile_one, *zip(*jobs))) if jobs else []
    cache.cleanup()

    print(format_table(rows))
    bad = [r for r in rows if r.problems()]
    print(f"\n{len(rows)} compiles ({len(variants)} variants x {len(args.arch)} archs"
          f"{', filtered' if args.only else ''}) in {time.time() - start:.0f} s; {len(bad)} with problems")
    status = 1 if bad or not rows else 0
    if not args.no_cuda:
        cuda_status = run_cuda_report()
        if cuda_status is None:
            print("tools/cuda_compile_report.py not present: CUDA C++ kernels not reported")
        else:
            status = status or cuda_status
    return status


if __name__ == "__main__":
    sys.exit(main())
