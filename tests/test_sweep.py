"""Sweeps: results per sample, resume after a crash, claims, two runners splitting one sweep."""

import json
import os
import subprocess
import sys

import pytest
import torch.multiprocessing as mp

import regnet.sweep as sweep_mod
from regnet.design_space import Regime, get_space
from regnet.sweep import load_results, plot_sweeps, run_sweep
from regnet.train import TrainingConfig, synthetic_datasets
from test_train import one_thread  # noqa: F401  (an autouse fixture)

SPACE = get_space("RegNetX")
REGIME = Regime(flops=(0, 60e6))  # 13-17 narrow blocks: quick to train on 16 px images
TRAINING = TrainingConfig(max_epochs=1, batch_size=32, learning_rate=3e-3, ckpt_path=None, progress=False)


def data():
    return synthetic_datasets(64, 32, num_classes=4, image_size=16)


def sweep(out_dir, n=3, **kwargs):
    train, test = data()
    return run_sweep(str(out_dir), SPACE, n, train, test, num_classes=4, training=TRAINING, regime=REGIME,
                     log=lambda *a: None, **kwargs)


def test_a_sweep_records_every_sample_and_plots_the_edf(tmp_path):
    assert sweep(tmp_path) == [0, 1, 2]
    results = load_results(str(tmp_path))
    specs = SPACE.sample(3, seed=0, regime=REGIME)
    assert [r["index"] for r in results] == [0, 1, 2]
    for r, spec in zip(results, specs):
        assert r["spec"]["w0"] == spec.w0 and 0 <= r["error"] <= 100 and r["flops"] <= 60e6
    assert open(tmp_path / "edf.png", "rb").read(4) == b"\x89PNG"
    assert sweep(tmp_path) == []  # nothing left to do
    assert sorted(os.listdir(tmp_path / "results")) == ["00000.json", "00001.json", "00002.json"]


class Crash(Exception):
    pass


def test_an_interrupted_sweep_resumes_where_it_stopped(tmp_path, monkeypatch):
    real = sweep_mod._train_sample

    def crash_on_sample_1(index, *args):
        if index == 1:
            raise Crash
        return real(index, *args)

    monkeypatch.setattr(sweep_mod, "_train_sample", crash_on_sample_1)
    with pytest.raises(Crash):
        sweep(tmp_path)
    assert sorted(os.listdir(tmp_path / "results")) == ["00000.json"]
    assert os.path.exists(tmp_path / "claims" / "00001")  # left by the crashed run
    monkeypatch.setattr(sweep_mod, "_train_sample", real)
    assert sweep(tmp_path) == [1, 2]  # sample 0 is not trained again
    assert len(load_results(str(tmp_path))) == 3


def write_claim(out_dir, index, pid):
    os.makedirs(out_dir / "claims", exist_ok=True)
    owner = {"host": sweep_mod.socket.gethostname(), "pid": pid, "time": 0}
    (out_dir / "claims" / f"{index:05d}").write_text(json.dumps(owner))


def test_claims_of_live_runners_are_kept_and_of_dead_ones_taken_back(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_claim(tmp_path, 0, dead.pid)
    write_claim(tmp_path, 1, os.getppid())  # alive: another runner is training sample 1
    assert sweep(tmp_path) == [0, 2]
    assert not os.path.exists(tmp_path / "edf.png")  # sample 1 is still out


def test_a_folder_holds_one_sweep(tmp_path):
    sweep(tmp_path, n=1)
    with pytest.raises(ValueError, match=r"describes another sweep, with n=1: use another folder"):
        sweep(tmp_path, n=2)


def runner(out_dir, barrier, queue):
    import torch

    torch.set_num_threads(1)
    barrier.wait()  # start together, so that both find work
    queue.put(sweep(out_dir, n=4))


def test_two_runners_split_one_sweep_without_duplicates(tmp_path):
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(2), ctx.Queue()
    procs = [ctx.Process(target=runner, args=(tmp_path, barrier, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    done = [queue.get(timeout=300) for _ in procs]
    for p in procs:
        p.join()
        assert p.exitcode == 0
    assert sorted(done[0] + done[1]) == [0, 1, 2, 3] and done[0] and done[1]
    assert sorted(os.listdir(tmp_path / "claims")) == ["00000", "00001", "00002", "00003"]
    runners = {r["runner"]["pid"] for r in load_results(str(tmp_path))}
    assert len(runners) == 2
    path = plot_sweeps({"a": str(tmp_path), "b": str(tmp_path)}, str(tmp_path / "both.svg"))
    assert "<svg" in open(path).read()
