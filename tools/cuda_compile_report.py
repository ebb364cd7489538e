"""Compile evidence for the CUDA kernels without a GPU: registers, spills and shared memory per kernel.

Compiles every csrc/cuda/**/*.cu standalone with nvcc to a cubin for each arch the build ships
(setup.CUDA_ARCHS: sm_80, sm_90), with the build's flags and include paths plus `-Xptxas -v`,
and parses ptxas's report per kernel (one row per template instantiation and arch).

    python tools/cuda_compile_report.py          # prints the table; exit 1 on spills or over-limit smem

`cuda_report()` returns the rows (dicts) for other reports, e.g. tools/gpu_compile_report.py.
"""

from __future__ import annotations

import concurrent.futures
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Static shared memory a kernel may use without opting in (cudaFuncSetAttribute), per block.
SMEM_LIMIT = 48 * 1024
# ptxas counts static shared memory only; what the kernels take dynamically, and its bound.
DYNAMIC_SMEM_NOTES = (
    "se_excite_kernel also takes (C + C_se) * 4 bytes of dynamic shared memory, at most 48 KiB "
    "(kSeExciteMaxFloats in csrc/cuda/launch.h, checked before launch).",
)

_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\d+a?)'")
_SPILLS = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USAGE = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")


def _setup_module():
    """setup.py as a module, for the build's nvcc flags, archs and include paths (single source of truth)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("regnet_setup", os.path.join(REPO, "setup.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # defines functions only: setup() runs under __main__
    return mod


def cuda_sources() -> List[str]:
    return sorted(glob.glob(os.path.join(REPO, "csrc", "cuda", "**", "*.cu"), recursive=True))


def nvcc_path() -> Optional[str]:
    return shutil.which("nvcc")


def nvcc_base_flags() -> List[str]:
    """The build's nvcc flags without its -gencode list (each arch is compiled separately here)."""
    import torch
    from torch.utils import cpp_extension

    setup = _setup_module()
    cpp_extension.CUDA_HOME = setup._cuda_home() or cpp_extension.CUDA_HOME  # as the build does
    flags = [f for f in setup._nvcc_flags() if not f.startswith("-gencode")]
    flags += list(cpp_extension.COMMON_NVCC_FLAGS)
    flags += ["-DREGNET_WITH_CUDA=1", "-DTORCH_EXTENSION_NAME=_C", "-DTORCH_API_INCLUDE_EXTENSION_H",
              f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"]
    includes = [os.path.join(REPO, "csrc")] + setup._nvidia_wheel_includes() + cpp_extension.include_paths(device_type="cuda")
    return flags + [f"-I{d}" for d in includes]


def _demangle(names: Sequence[str]) -> Dict[str, str]:
    cxxfilt = shutil.which("c++filt")
    if not cxxfilt or not names:
        return {n: n for n in names}
    out = subprocess.run([cxxfilt], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return dict(zip(names, out)) if len(out) == len(names) else {n: n for n in names}


def _short_name(name: str) -> str:
    """grouped_conv3x3_nhwc_kernel<__half, true>(...) without namespaces and parameter lists."""
    name = re.sub(r"\(anonymous namespace\)::|regnet_kernels::(cuda::)?", "", name)
    depth, out = 0, []
    for ch in name:  # drop the parameter list: the last top-level (...) group
        if ch == "(" and depth == 0:
            break
        depth += ch == "<"
        depth -= ch == ">"
        out.append(ch)
    return "".join(out).replace("void ", "")


def parse_ptxas(text: str, source: str) -> List[dict]:
    """Rows of ptxas -v output: one per entry function (kernel) and arch."""
    rows, current = [], None
    for line in text.splitlines():
        m = _ENTRY.search(line)
        if m:
            current = {"file": source, "arch": m.group(2), "mangled": m.group(1), "registers": 0, "stack": 0,
                       "spill_stores": 0, "spill_loads": 0, "smem": 0}
            rows.append(current)
            continue
        if current is None:
            continue
        m = _SPILLS.search(line)
        if m:
            current["stack"], current["spill_stores"], current["spill_loads"] = map(int, m.groups())
        m = _USAGE.search(line)
        if m:
            current["registers"] = int(m.group(1))
            s = _SMEM.search(line)
            current["smem"] = int(s.group(1)) if s else 0
    names = _demangle([r["mangled"] for r in rows])
    for r in rows:
        r["kernel"] = _short_name(names[r["mangled"]])
    return rows


def compile_one(source: str, arch: str, flags: Sequence[str], workdir: str) -> List[dict]:
    out = os.path.join(workdir, f"{os.path.basename(source)}.sm_{arch}.cubin")
    cmd = [nvcc_path(), "-cubin", f"-arch=sm_{arch}", *flags, "-Xptxas", "-v", source, "-o", out]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"nvcc failed for {source} (sm_{arch}):\n{proc.stderr[-4000:]}")
    return parse_ptxas(proc.stdout + proc.stderr, os.path.relpath(source, REPO))


def cuda_report(sources: Optional[Sequence[str]] = None, archs: Optional[Sequence[str]] = None,
                jobs: Optional[int] = None) -> List[dict]:
    """One row per (kernel instantiation, arch): file, arch, kernel, registers, stack, spill_stores,
    spill_loads, smem (bytes of static shared memory). Raises RuntimeError when nvcc is missing or fails."""
    if nvcc_path() is None:
        raise RuntimeError("nvcc not found on PATH")
    sources = list(sources) if sources is not None else cuda_sources()
    archs = list(archs) if archs is not None else list(_setup_module().CUDA_ARCHS)
    flags = nvcc_base_flags()
    with tempfile.TemporaryDirectory(prefix="cuda_report_") as workdir:
        with concurrent.futures.ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 1) as pool:
            futures = [pool.submit(compile_one, s, a, flags, workdir) for s in sources for a in archs]
            rows = [r for f in futures for r in f.result()]
    return sorted(rows, key=lambda r: (r["file"], r["kernel"], r["arch"]))


def problems(rows: Sequence[dict]) -> List[str]:
    """Spills (any bytes) and static shared memory over the 48 KiB limit."""
    out = []
    for r in rows:
        where = f"{r['kernel']} ({r['arch']}, {r['file']})"
        if r["spill_stores"] or r["spill_loads"]:
            out.append(f"{where}: spills {r['spill_stores']} B stores / {r['spill_loads']} B loads")
        if r["smem"] > SMEM_LIMIT:
            out.append(f"{where}: {r['smem']} B shared memory > {SMEM_LIMIT}")
    return out


def format_table(rows: Sequence[dict]) -> str:
    header = ("kernel", "arch", "regs", "spill st", "spill ld", "stack", "smem B", "file")
    body = [(r["kernel"], r["arch"], str(r["registers"]), str(r["spill_stores"]), str(r["spill_loads"]),
             str(r["stack"]), str(r["smem"]), r["file"]) for r in rows]
    widths = [max(len(x[i]) for x in [header] + body) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [header] + body]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sources", nargs="*", help="the .cu files (default: csrc/cuda/**/*.cu)")
    ap.add_argument("--arch", action="append", help="e.g. 80 (default: setup.CUDA_ARCHS)")
    args = ap.parse_args(argv)
    if nvcc_path() is None:
        print("cuda_compile_report: nvcc not found on PATH", file=sys.stderr)
        return 2
    rows = cuda_report(args.sources or None, args.arch)
    print(format_table(rows))
    for note in DYNAMIC_SMEM_NOTES:
        print("note:", note)
    bad = problems(rows)
    if not rows:
        bad.append("no kernels found")
    for p in bad:
        print("FAIL:", p, file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
