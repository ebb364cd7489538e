"""Sweeps: sample N models from a design space, train each briefly, record the errors, plot EDFs.

    results = run_sweep("sweeps/RegNetX", get_space("RegNetX"), 32, train, test, num_classes=10,
                        training=TrainingConfig(max_epochs=2, batch_size=64), regime=Regime(flops=(0, 400e6)))
    plot_sweeps({"RegNetX": "sweeps/RegNetX"}, "sweeps/edf.png")

A sweep lives in one folder, so it survives interruptions and can be shared:

    sweep.json          what is swept (space, n, seed, regime, training); every runner checks it
    claims/00003        sample 3 is taken: created with O_CREAT|O_EXCL, so exactly one runner wins
    runs/00003.pt       sample 3's training checkpoint (a taken-over sample resumes from it)
    results/00003.json  sample 3's spec, complexity and error, written atomically when it ends

Several runners (processes, machines sharing the folder) started on one folder split the
samples between them; a runner started again after a crash skips finished samples and takes
back the claims whose owner process is gone.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import asdict, replace
from typing import Dict, List, Mapping, Optional, Set

from torch.utils.data import Dataset

from .analysis import plot_edfs
from .checkpoint import atomic_write
from .design_space import DesignSpace, Regime, spec_to_dict
from .train import Trainer, TrainingConfig

__all__ = ["run_sweep", "load_results", "plot_sweeps", "sweep_definition"]

# Claims held by runners of this process: a claim with this process's pid that is not in here
# was left by an earlier run that died (an exception) and may be taken back.
_ACTIVE_CLAIMS: Set[str] = set()
_ACTIVE_LOCK = threading.Lock()


def _write_json_atomically(path: str, obj) -> None:
    """Readers see the whole file or none (regnet.checkpoint.atomic_write)."""
    atomic_write(path, lambda f: json.dump(obj, f, indent=1), binary=False)


def _read_json(path: str):
    with open(path) as f:
        return json.load(f)


def sweep_definition(space: DesignSpace, n: int, seed: int, regime: Optional[Regime], training: TrainingConfig,
                     num_classes: int) -> Dict:
    """What makes two runners work on the same sweep (everything but paths and display)."""
    train = {k: v for k, v in asdict(training).items() if k not in ("ckpt_path", "log_path", "progress", "resume",
                                                                     "checkpoint_every", "device", "num_workers")}
    return {"space": space.name, "n": n, "seed": seed, "regime": asdict(regime) if regime else None,
            "num_classes": num_classes, "training": train}


def _join_sweep(out_dir: str, definition: Dict) -> None:
    """Create sweep.json, or check that the one there describes the same sweep."""
    path = os.path.join(out_dir, "sweep.json")
    definition = json.loads(json.dumps(definition))  # as it reads back: tuples become lists
    if not os.path.exists(path):
        tmp = f"{path}.{socket.gethostname()}.{os.getpid()}.{threading.get_ident()}.new"
        _write_json_atomically(tmp, definition)
        try:
            os.link(tmp, path)  # fails if another runner created it first
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    existing = _read_json(path)
    diff = sorted(k for k in set(existing) | set(definition) if existing.get(k) != definition.get(k))
    if diff:
        raise ValueError(f"{path} describes another sweep, with " +
                         ", ".join(f"{k}={existing.get(k)!r}" for k in diff) +
                         f": use another folder, or these settings")


def _owner() -> Dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_stale(claim: str, reclaim_after: Optional[float]) -> bool:
    """A claim whose runner is gone: a dead process on this host, this process's own leftover,
    or (with reclaim_after) any claim older than that many seconds."""
    try:
        owner = _read_json(claim)
    except (OSError, ValueError):  # vanished, or its owner died between creating and writing it
        return os.path.exists(claim) and time.time() - os.path.getmtime(claim) > 60
    if reclaim_after is not None and time.time() - owner["time"] > reclaim_after:
        return True
    if owner["host"] != socket.gethostname():
        return False
    if owner["pid"] == os.getpid():
        with _ACTIVE_LOCK:
            return claim not in _ACTIVE_CLAIMS
    return not _pid_alive(owner["pid"])


def _try_claim(claim: str, reclaim_after: Optional[float]) -> bool:
    for _ in range(2):
        try:
            fd = os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if not _is_stale(claim, reclaim_after):
                return False
            try:  # only one runner's rename succeeds, so only one takes the stale claim over
                os.rename(claim, f"{claim}.stale-{os.getpid()}-{threading.get_ident()}")
            except FileNotFoundError:
                return False
            continue
        with _ACTIVE_LOCK:
            _ACTIVE_CLAIMS.add(claim)
        with os.fdopen(fd, "w") as f:
            json.dump(_owner(), f)
        return True
    return False


def _train_sample(index: int, spec, space: DesignSpace, out_dir: str, train_dataset: Dataset,
                  test_dataset: Dataset, training: TrainingConfig, num_classes: int) -> Dict:
    name = f"{index:05d}"
    config = replace(training, ckpt_path=os.path.join(out_dir, "runs", name + ".pt"), resume=True,
                     checkpoint_every=1, log_path=None, progress=False)
    start = time.perf_counter()
    # Residual branches start at zero (the last BN of each block): with a few hundred steps,
    # deep samples then train about as fast as shallow ones instead of staying at chance.
    model = space.build(spec, num_classes=num_classes, zero_init_last_bn=True)
    trainer = Trainer(model, train_dataset, test_dataset, config)
    last = trainer.train()[-1]
    cx = space.complexity(spec)
    return {"index": index, "space": space.name, "spec": spec_to_dict(spec), **cx,
            "error": 100.0 - last["test_acc"], "test_acc": last["test_acc"], "train_loss": last["train_loss"],
            "epochs": config.max_epochs, "seconds": time.perf_counter() - start, "runner": _owner()}


def run_sweep(out_dir: str, space: DesignSpace, n: int, train_dataset: Dataset, test_dataset: Dataset,
              num_classes: int, training: Optional[TrainingConfig] = None, seed: int = 0,
              regime: Optional[Regime] = None, reclaim_after: Optional[float] = None,
              plot: bool = True, log=print) -> List[int]:
    """Train the samples of this sweep that nobody has finished or is training; returns the
    indices this runner trained. Complexities in the results are pycls's (224 px, 1000 classes).

    When every result is in, writes ``edf.png`` in `out_dir` (with `plot`).
    """
    training = training or TrainingConfig(max_epochs=2, batch_size=64, learning_rate=3e-3, precise_bn=512)
    for sub in ("claims", "runs", "results"):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    _join_sweep(out_dir, sweep_definition(space, n, seed, regime, training, num_classes))
    specs = space.sample(n, seed=seed, regime=regime)
    done: List[int] = []
    for index, spec in enumerate(specs):
        result = os.path.join(out_dir, "results", f"{index:05d}.json")
        claim = os.path.join(out_dir, "claims", f"{index:05d}")
        if os.path.exists(result) or not _try_claim(claim, reclaim_after):
            continue
        try:
            if os.path.exists(result):  # finished by a runner whose claim we took after it wrote
                continue
            record = _train_sample(index, spec, space, out_dir, train_dataset, test_dataset, training, num_classes)
            _write_json_atomically(result, record)
            done.append(index)
            log(f"{space.name} sample {index + 1}/{n}: error {record['error']:.2f}%  "
                f"({record['flops'] / 1e6:.0f} MF, {record['params'] / 1e6:.2f} M params)")
        finally:
            with _ACTIVE_LOCK:
                _ACTIVE_CLAIMS.discard(claim)
    if plot and len(load_results(out_dir)) == n:
        plot_sweeps({space.name: out_dir}, os.path.join(out_dir, "edf.png"))
    return done


def load_results(out_dir: str) -> List[Dict]:
    """The finished samples' records, by index."""
    folder = os.path.join(out_dir, "results")
    names = sorted(f for f in os.listdir(folder) if f.endswith(".json")) if os.path.isdir(folder) else []
    return [_read_json(os.path.join(folder, f)) for f in names]


def plot_sweeps(sweeps: Mapping[str, str], path: str, title: str = "") -> str:
    """One EDF per sweep folder, in one figure (the paper's comparison of design spaces)."""
    curves = {}
    for label, folder in sweeps.items():
        errors = [r["error"] for r in load_results(folder)]
        if not errors:
            raise ValueError(f"{folder}: no finished samples to plot")
        curves[label] = errors
    return plot_edfs(curves, path, title=title)
