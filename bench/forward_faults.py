"""Page faults and system time per forward, configurations interleaved in one process.

    python bench/forward_faults.py regnety_004 16 compile_freezing optimize
    REGNET_KERNELS_CPU_POOL=0 python bench/forward_faults.py regnety_004 16 compile_freezing optimize

Prepares each configuration as compare.py does (warm-up and output check included), then runs
them in turn, one forward each per round, and prints per configuration: the best and median
forward time, minor page faults, and user and system CPU time per forward (getrusage, whole
process: run nothing else alongside). bench/NOTES.md, Step 9, explains why faults matter here.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402

from regnet_kernels import memory  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("batch", type=int)
    p.add_argument("configs", nargs="+", choices=sorted(compare.CONFIGS))
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    fns = {c: compare.prepare(args.model, args.batch, c)[:2] for c in args.configs}
    times = {c: [] for c in args.configs}
    usage = {c: [0, 0.0, 0.0] for c in args.configs}  # minor faults, user s, system s
    with torch.no_grad():
        for _ in range(args.rounds):
            for c in args.configs:
                fn, x = fns[c]
                r0 = resource.getrusage(resource.RUSAGE_SELF)
                t0 = time.perf_counter()
                fn(x)
                times[c].append(time.perf_counter() - t0)
                r1 = resource.getrusage(resource.RUSAGE_SELF)
                u = usage[c]
                u[0] += r1.ru_minflt - r0.ru_minflt
                u[1] += r1.ru_utime - r0.ru_utime
                u[2] += r1.ru_stime - r0.ru_stime
    n = args.rounds
    print(f"{args.model} batch {args.batch}, {args.threads} threads, {n} rounds "
          f"(REGNET_KERNELS_CPU_POOL={os.environ.get('REGNET_KERNELS_CPU_POOL', '1')})")
    print("| config | best ms | median ms | faults/forward | user ms/forward | system ms/forward |")
    print("|---|---|---|---|---|---|")
    for c in args.configs:
        t = sorted(times[c])
        faults, user, system = usage[c]
        print(f"| {c} | {t[0] * 1e3:.1f} | {t[len(t) // 2] * 1e3:.1f} | {faults // n} | {user / n * 1e3:.1f} | "
              f"{system / n * 1e3:.1f} |")
    pool = memory.pool_stats()
    if pool:
        mb = {k: v / 2**20 for k, v in pool.items() if k.endswith("_bytes")}
        print(f"regnet_kernels CPU pool after the runs: {mb['in_use_bytes']:.0f} MB in use, {mb['cached_bytes']:.0f} MB "
              f"cached, peak in use {mb['peak_in_use_bytes']:.0f} MB; {pool['misses']} misses, "
              f"{pool['evictions']} evictions in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
