"""Trainer: learning, checkpoints, exact resume, atomic writes, config checks, DDP (gloo)."""

import os

import pytest
import torch
import torch.multiprocessing as mp

import regnet.train as train_mod
from regnet.checkpoint import safe_load
from regnet.model import AnyNet
from regnet.train import TrainingConfig, Trainer, synthetic_datasets
from regnet.widths import StageSpec


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models train fastest on one thread, and other jobs on a busy machine stall a
    multi-threaded op at every barrier. (Other test modules import this fixture.)"""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(seed=0, **kwargs):
    torch.manual_seed(seed)
    stages = [StageSpec(1, 16, 2, 1.0, 8), StageSpec(1, 32, 2, 1.0, 8)]
    return AnyNet(stages, stem_w=8, num_classes=4, **kwargs)


def config(tmp_path, **kwargs):
    defaults = dict(max_epochs=2, batch_size=32, learning_rate=3e-3, ckpt_path=str(tmp_path / "ckpt.pt"),
                    progress=False)
    return TrainingConfig(**{**defaults, **kwargs})


@pytest.fixture(scope="module")
def data():
    return synthetic_datasets(256, 128, num_classes=4, image_size=16)


def assert_same_weights(a, b, exact=True):
    assert a.keys() == b.keys()
    for k in a:
        if exact:
            assert torch.equal(a[k], b[k]), k
        else:
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


def test_loss_decreases_and_accuracy_rises(tmp_path, data):
    train, test = data
    history = Trainer(tiny_model(), train, test, config(tmp_path, max_epochs=4)).train()
    assert history[-1]["train_loss"] < history[0]["train_loss"] - 0.2
    assert history[-1]["test_acc"] > max(50.0, history[0]["test_acc"] + 15)
    lines = open(tmp_path / "ckpt.csv").read().splitlines()
    assert lines[0] == "epoch,lr,train_loss,train_acc,test_loss,test_acc,images_per_s,seconds" and len(lines) == 5


def test_the_documented_api_works_as_written(tmp_path, data):
    training_config = TrainingConfig(max_epochs=1, batch_size=128, learning_rate=3e-4, weight_decay=5e-4,
                                     ckpt_path=str(tmp_path / "regnet.pt"))
    Trainer(model=tiny_model(), train_dataset=data[0], test_dataset=data[1], configs=training_config).train()
    ckpt = safe_load(tmp_path / "regnet.pt")  # weights_only=True
    assert ckpt["epoch"] == 1 and isinstance(ckpt["rng"][0]["torch"], torch.Tensor)


def test_checkpoint_every_x_epochs_and_at_the_end(tmp_path, data, monkeypatch):
    saved = []
    real_save = train_mod.atomic_save
    monkeypatch.setattr(train_mod, "atomic_save", lambda obj, path: (saved.append(obj["epoch"]), real_save(obj, path)))
    small = torch.utils.data.Subset(data[0], range(32))
    Trainer(tiny_model(), small, None, config(tmp_path, max_epochs=5, checkpoint_every=2)).train()
    assert saved == [2, 4, 5]


class Interrupted(Exception):
    pass


def interrupt_at(trainer_cls, epoch):
    """A Trainer whose run dies as epoch `epoch` (0-based) starts, as a killed job would."""

    class Dying(trainer_cls):
        def train_one_epoch(self):
            if self.epoch == epoch:
                raise Interrupted
            return super().train_one_epoch()

    return Dying


def test_an_interrupted_run_resumes_to_the_same_result(tmp_path, data):
    train, test = torch.utils.data.Subset(data[0], range(128)), data[1]
    # pycls's recipe (momentum, warm-up, cosine), label smoothing and stochastic depth: the
    # optimizer, scheduler and RNG states all matter.
    recipe = dict(max_epochs=4, batch_size=32, reference_lr=0.1, warmup_epochs=1, label_smoothing=0.1, progress=False)
    whole = TrainingConfig.pycls(**recipe, ckpt_path=str(tmp_path / "whole.pt"))
    a = Trainer(tiny_model(drop_path_rate=0.2), train, test, whole)
    history_a = a.train()

    parts = TrainingConfig.pycls(**recipe, ckpt_path=str(tmp_path / "parts.pt"), checkpoint_every=1, resume=True)
    with pytest.raises(Interrupted):
        interrupt_at(Trainer, 2)(tiny_model(drop_path_rate=0.2), train, test, parts).train()
    assert safe_load(tmp_path / "parts.pt")["epoch"] == 2
    # A fresh process: other initial weights, other global RNG state; the checkpoint decides.
    torch.manual_seed(123)
    b = Trainer(tiny_model(seed=7, drop_path_rate=0.2), train, test, parts)
    history_b = b.train()

    assert_same_weights(a.module.state_dict(), b.module.state_dict())
    assert [r["train_loss"] for r in history_a] == [r["train_loss"] for r in history_b]
    base = 0.1 * 32 / 128
    expected = [base * 0.1, base * 0.5 * (1 + 2 ** -0.5), base * 0.5, base * 0.5 * (1 - 2 ** -0.5)]
    assert [r["lr"] for r in history_b] == pytest.approx(expected)
    rows = open(tmp_path / "parts.csv").read().splitlines()[1:]
    assert [r.split(",")[0] for r in rows] == ["1", "2", "3", "4"]


def test_checkpoint_write_is_atomic_under_a_crash(tmp_path, data, monkeypatch):
    small = torch.utils.data.Subset(data[0], range(32))
    cfg = config(tmp_path, max_epochs=2, checkpoint_every=1)
    with pytest.raises(Interrupted):
        interrupt_at(Trainer, 1)(tiny_model(), small, None, cfg).train()
    before = open(cfg.ckpt_path, "rb").read()

    def dying_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise Interrupted  # the process dies mid-write

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(Interrupted):
        Trainer(tiny_model(), small, None, config(tmp_path, max_epochs=2, resume=True)).train()
    assert open(cfg.ckpt_path, "rb").read() == before
    assert safe_load(cfg.ckpt_path)["epoch"] == 1
    assert sorted(os.listdir(tmp_path)) == ["ckpt.csv", "ckpt.pt"]


@pytest.mark.parametrize("field, value, allowed", [
    ("max_epochs", 0, "an integer >= 1"),
    ("batch_size", 2.5, "an integer >= 1"),
    ("learning_rate", -1.0, "a finite number > 0"),
    ("learning_rate", float("nan"), "a finite number > 0"),
    ("weight_decay", -5e-4, "a finite number >= 0"),
    ("momentum", 1.0, "a number in [0, 1)"),
    ("label_smoothing", 1.5, "a number in [0, 1)"),
    ("optimizer", "adagrad", "one of ('adam', 'sgd')"),
    ("lr_schedule", "step", "one of ('constant', 'cosine')"),
    ("warmup_epochs", 20, "an integer in [0, max_epochs=10]"),
    ("checkpoint_every", -1, "an integer >= 0"),
    ("ckpt_path", "", "None or a non-empty path string"),
])
def test_bad_config_values_are_rejected_naming_field_value_and_range(field, value, allowed):
    with pytest.raises(ValueError) as e:
        TrainingConfig(**{field: value})
    assert str(e.value) == f"TrainingConfig.{field}={value!r} is out of range: expected {allowed}"


def test_pycls_recipe_scales_the_learning_rate_with_the_batch():
    cfg = TrainingConfig.pycls(max_epochs=10, batch_size=256)
    assert cfg.learning_rate == 0.2 and cfg.optimizer == "sgd" and cfg.lr_schedule == "cosine"
    assert cfg.lr_factor(0) == pytest.approx(0.1) and cfg.lr_factor(5) == pytest.approx(0.5)


def test_precise_bn_averages_the_statistics_of_training_images(tmp_path, data):
    model = tiny_model()
    trainer = Trainer(model, data[0], None, config(tmp_path, batch_size=32, precise_bn=32))
    trainer.compute_precise_bn_stats()
    first = torch.stack([data[0][i][0] for i in list(trainer.sampler)[:32]])
    stem = model.stem.conv(first)
    torch.testing.assert_close(model.stem.bn.running_mean, stem.mean((0, 2, 3)))
    torch.testing.assert_close(model.stem.bn.running_var, stem.var((0, 2, 3)))
    assert model.stem.bn.momentum == 0.1


def test_mixed_precision_and_channels_last(tmp_path, data):
    small = torch.utils.data.Subset(data[0], range(64))
    cfg = config(tmp_path, max_epochs=1, mixed_precision=True, channels_last=True, ckpt_path=None)
    history = Trainer(tiny_model(), small, small, cfg).train()
    assert torch.isfinite(torch.tensor(history[0]["train_loss"]))


# --- DDP on the CPU with gloo ------------------------------------------------------------------


def agent_store():
    """The rendezvous store, hosted here as torchrun's agent hosts it. Binding port 0 in this
    process and keeping the socket open leaves no window for another process to take the port
    (picking a free port and letting the workers bind it later does: a rare CI failure)."""
    return torch.distributed.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)


def ddp_config(path, **kwargs):
    # BatchNorm would normalise each process's half batch with its own statistics, which a
    # single process over the whole batch cannot reproduce (and SyncBatchNorm needs GPUs).
    # freeze_bn makes every sample's forward independent of the others, so DDP's averaged
    # gradient is exactly the single-process gradient and the runs must agree to rounding.
    return TrainingConfig(max_epochs=3, batch_size=32, learning_rate=3e-3, ckpt_path=path, freeze_bn=True,
                          progress=False, checkpoint_every=1, **kwargs)


def ddp_worker(rank, port, path):
    # TORCHELASTIC_USE_AGENT_STORE: the workers are clients of the test's store, as under torchrun.
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE="2", TORCHELASTIC_USE_AGENT_STORE="True")
    torch.set_num_threads(1)
    train, test = synthetic_datasets(128, 64, num_classes=4, image_size=16)
    try:
        with pytest.raises(Interrupted):  # killed after two epochs, then resumed
            interrupt_at(Trainer, 2)(tiny_model(), train, test, ddp_config(path)).train()
        Trainer(tiny_model(seed=5), train, test, ddp_config(path, resume=True)).train()
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_with_gloo_matches_one_process_over_the_same_global_batch(tmp_path):
    path = str(tmp_path / "ddp.pt")
    store = agent_store()
    mp.spawn(ddp_worker, args=(store.port, path), nprocs=2, join=True)
    train, test = synthetic_datasets(128, 64, num_classes=4, image_size=16)
    single = Trainer(tiny_model(), train, test, ddp_config(str(tmp_path / "single.pt")))
    history = single.train()
    ddp = safe_load(path)
    assert ddp["epoch"] == 3 and len(ddp["rng"]) == 2
    assert_same_weights(ddp["model"], single.module.state_dict(), exact=False)
    # Rank 0 alone logged, and the evaluation counted every test sample once.
    assert [round(r["test_acc"], 4) for r in ddp["history"]] == [round(r["test_acc"], 4) for r in history]
    assert len(open(tmp_path / "ddp.csv").read().splitlines()) == 4
