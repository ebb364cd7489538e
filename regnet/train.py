"""Training RegNets: TrainingConfig and Trainer, on one process or under torchrun (DDP).

    config = TrainingConfig(max_epochs=10, batch_size=128, learning_rate=3e-4, weight_decay=5e-4,
                            ckpt_path="./regnet.pt")
    Trainer(model=model, train_dataset=train, test_dataset=test, configs=config).train()

The defaults are Adam with a constant learning rate; ``TrainingConfig.pycls(...)`` gives
pycls's recipe (SGD with Nesterov momentum, half-period cosine with linear warm-up, learning
rate scaled with the batch size). Checkpoints hold the model, optimizer, scheduler, AMP
scaler, epoch and every process's RNG state, so a resumed run ends where an uninterrupted
one does. Under torchrun the same code runs DistributedDataParallel (NCCL on GPUs, gloo on
CPUs); ``batch_size`` is the global batch, split over the processes.
"""

from __future__ import annotations

import csv
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from .checkpoint import atomic_save, load_state_dict_strict, safe_load

__all__ = ["TrainingConfig", "Trainer", "SyntheticImages", "synthetic_datasets", "seed_everything"]

OPTIMIZERS = ("adam", "sgd")
LR_SCHEDULES = ("constant", "cosine")
CSV_FIELDS = ("epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "images_per_s", "seconds")


def _fail(field: str, value, allowed: str):
    raise ValueError(f"TrainingConfig.{field}={value!r} is out of range: expected {allowed}")


@dataclass
class TrainingConfig:
    """What to train for and how. Every value is checked on construction.

    batch_size is the global batch: under DDP each of the N processes takes batch_size / N.
    checkpoint_every > 0 also writes the checkpoint every that many epochs (it is always
    written at the end when ckpt_path is set). resume=True continues from ckpt_path when it
    exists. log_path is the per-epoch CSV (default: ckpt_path with a .csv suffix).
    freeze_bn keeps BatchNorm on its running statistics while training (its scale and shift
    still learn); sync_bn synchronises batch statistics across GPUs under DDP. precise_bn > 0
    recomputes the BatchNorm statistics on that many training images before each evaluation
    (pycls's precise BN): after a few hundred steps the running averages still lag the weights.
    """

    max_epochs: int = 10
    batch_size: int = 128
    learning_rate: float = 3e-4
    weight_decay: float = 5e-4
    ckpt_path: Optional[str] = "./regnet.pt"
    optimizer: str = "adam"
    momentum: float = 0.9
    nesterov: bool = True
    lr_schedule: str = "constant"
    warmup_epochs: int = 0
    warmup_factor: float = 0.1
    label_smoothing: float = 0.0
    checkpoint_every: int = 0
    resume: bool = False
    mixed_precision: bool = False
    channels_last: bool = False
    freeze_bn: bool = False
    sync_bn: bool = False
    precise_bn: int = 0
    num_workers: int = 0
    seed: int = 0
    deterministic: bool = False
    log_path: Optional[str] = None
    progress: bool = True
    device: Optional[str] = None

    def __post_init__(self):
        for name in ("max_epochs", "batch_size"):
            self._check_int(name, 1)
        for name in ("warmup_epochs", "checkpoint_every", "precise_bn", "num_workers", "seed"):
            self._check_int(name, 0)
        self._check_number("learning_rate", lambda v: v > 0, "a finite number > 0")
        self._check_number("weight_decay", lambda v: v >= 0, "a finite number >= 0")
        self._check_number("momentum", lambda v: 0 <= v < 1, "a number in [0, 1)")
        self._check_number("warmup_factor", lambda v: 0 < v <= 1, "a number in (0, 1]")
        self._check_number("label_smoothing", lambda v: 0 <= v < 1, "a number in [0, 1)")
        if self.optimizer not in OPTIMIZERS:
            _fail("optimizer", self.optimizer, f"one of {OPTIMIZERS}")
        if self.lr_schedule not in LR_SCHEDULES:
            _fail("lr_schedule", self.lr_schedule, f"one of {LR_SCHEDULES}")
        if self.warmup_epochs > self.max_epochs:
            _fail("warmup_epochs", self.warmup_epochs, f"an integer in [0, max_epochs={self.max_epochs}]")
        for name in ("ckpt_path", "log_path", "device"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (str, os.PathLike)) or not os.fspath(value)):
                _fail(name, value, "None or a non-empty path string")

    def _check_int(self, name: str, minimum: int):
        v = getattr(self, name)
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
            _fail(name, v, f"an integer >= {minimum}")

    def _check_number(self, name: str, ok, allowed: str):
        v = getattr(self, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not ok(v):
            _fail(name, v, allowed)

    @classmethod
    def pycls(cls, max_epochs: int = 100, batch_size: int = 128, reference_lr: float = 0.1,
              weight_decay: float = 5e-5, warmup_epochs: int = 5, **kwargs) -> "TrainingConfig":
        """pycls's recipe: SGD, momentum 0.9 (Nesterov), cosine with linear warm-up, and the
        learning rate reference_lr * batch_size / 128."""
        return cls(max_epochs=max_epochs, batch_size=batch_size, learning_rate=reference_lr * batch_size / 128,
                   weight_decay=weight_decay, optimizer="sgd", momentum=0.9, nesterov=True, lr_schedule="cosine",
                   warmup_epochs=min(warmup_epochs, max_epochs), warmup_factor=0.1, **kwargs)

    def lr_factor(self, epoch: int) -> float:
        """The learning rate of `epoch` (0-based) relative to learning_rate (pycls's per-epoch rule)."""
        factor = 0.5 * (1.0 + math.cos(math.pi * epoch / self.max_epochs)) if self.lr_schedule == "cosine" else 1.0
        if epoch < self.warmup_epochs:
            alpha = epoch / self.warmup_epochs
            factor *= self.warmup_factor * (1.0 - alpha) + alpha
        return factor


# ---------------------------------------------------------------------------------------------
# Synthetic data: a task a small RegNet learns in a few epochs, made without any download.


class SyntheticImages(Dataset):
    """`n` images of `templates.shape[0]` classes: each image is its class's template, randomly
    shifted, dimmed or brightened, plus noise. Generated once from `seed`."""

    def __init__(self, templates: Tensor, n: int, seed: int, noise: float):
        g = torch.Generator().manual_seed(seed)
        k, c, s, _ = templates.shape
        self.labels = torch.randint(0, k, (n,), generator=g)
        scale = 0.75 + 0.5 * torch.rand(n, 1, 1, 1, generator=g)
        images = templates[self.labels] * scale + noise * torch.randn(n, c, s, s, generator=g)
        shifts = torch.randint(-s // 4, s // 4 + 1, (n, 2), generator=g)
        self.images = torch.stack([torch.roll(x, (int(dy), int(dx)), (1, 2)) for x, (dy, dx) in zip(images, shifts)])

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> Tuple[Tensor, int]:
        return self.images[i], int(self.labels[i])


def synthetic_datasets(n_train: int = 512, n_test: int = 256, num_classes: int = 4, image_size: int = 16,
                       channels: int = 3, seed: int = 0, noise: float = 0.25) -> Tuple[SyntheticImages, SyntheticImages]:
    """A train and a test set of one synthetic task: smooth random class templates (a colour
    and a coarse pattern each, of unit scale) under Gaussian noise of std `noise`."""
    if min(n_train, n_test, num_classes - 1, image_size - 3, channels) < 1:
        raise ValueError(f"synthetic_datasets: expected n_train, n_test >= 1, num_classes >= 2, image_size >= 4, "
                         f"channels >= 1; got {n_train}, {n_test}, {num_classes}, {image_size}, {channels}")
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(num_classes, channels, 4, 4, generator=g)
    templates = nn.functional.interpolate(coarse, size=(image_size, image_size), mode="bilinear", align_corners=False)
    return SyntheticImages(templates, n_train, seed + 1, noise), SyntheticImages(templates, n_test, seed + 2, noise)


# ---------------------------------------------------------------------------------------------
# Seeds and RNG state, kept as tensors and plain types so checkpoints load with weights_only.


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> Dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": {"version": py_state[0], "state": torch.tensor(py_state[1], dtype=torch.int64),
                   "gauss_next": py_state[2]},
    }


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss_next"]))


# ---------------------------------------------------------------------------------------------
# Processes: one, or one per device under torchrun.


@dataclass(frozen=True)
class Processes:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _join_process_group(device_type: str) -> Processes:
    """Join torchrun's process group (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT in the
    environment), or use the one already set up."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if not dist.is_available() or (world <= 1 and not dist.is_initialized()):
        return Processes()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return Processes(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def _default_device(local_rank: int) -> torch.device:
    return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")


def _amp_dtype(device: torch.device) -> Optional[torch.dtype]:
    """Autocast dtype where the device supports it: float16 (with loss scaling) on CUDA,
    bfloat16 on CPU."""
    return {"cuda": torch.float16, "cpu": torch.bfloat16}.get(device.type)


def _sum_across(processes: Processes, values: List[float], device: torch.device) -> List[float]:
    if not processes.distributed:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


class Trainer:
    """Trains `model` on `train_dataset` (any map-style dataset of (image, label)), evaluating on
    `test_dataset` after every epoch. ``train()`` returns the per-epoch metrics."""

    def __init__(self, model: nn.Module, train_dataset: Dataset, test_dataset: Optional[Dataset] = None,
                 configs: Optional[TrainingConfig] = None):
        self.config = cfg = configs if configs is not None else TrainingConfig()
        if not isinstance(cfg, TrainingConfig):
            raise TypeError(f"configs: expected a TrainingConfig, got {type(cfg).__name__}")
        if len(train_dataset) == 0:
            raise ValueError("train_dataset is empty: expected at least one (image, label) sample")
        device_type = torch.device(cfg.device).type if cfg.device else _default_device(0).type
        self.processes = p = _join_process_group(device_type)
        if cfg.batch_size % p.world_size:
            _fail("batch_size", cfg.batch_size, f"a multiple of the {p.world_size} processes")
        self.device = torch.device(cfg.device) if cfg.device else _default_device(p.local_rank)
        if cfg.sync_bn and p.distributed and self.device.type != "cuda":
            _fail("sync_bn", True, "False on CPU (SyncBatchNorm needs GPUs; freeze_bn=True makes BN per-sample)")
        self._set_determinism()
        seed_everything(cfg.seed + p.rank)
        self.train_dataset, self.test_dataset = train_dataset, test_dataset
        self.model = self._prepare_model(model)
        self.optimizer = self._make_optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda e: cfg.lr_factor(e))
        self.amp_dtype = _amp_dtype(self.device) if cfg.mixed_precision else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.sampler = DistributedSampler(train_dataset, num_replicas=p.world_size, rank=p.rank, shuffle=True,
                                          seed=cfg.seed)
        self.epoch = 0  # epochs done
        self.history: List[Dict[str, float]] = []
        self.log_path = cfg.log_path or (os.path.splitext(cfg.ckpt_path)[0] + ".csv" if cfg.ckpt_path else None)

    # -- setup ----------------------------------------------------------------------------

    def _set_determinism(self) -> None:
        """deterministic: the same kernels every run (slower); else cuDNN may pick the fastest."""
        if self.config.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        if self.device.type == "cuda":
            torch.backends.cudnn.deterministic = self.config.deterministic
            torch.backends.cudnn.benchmark = not self.config.deterministic

    def _prepare_model(self, model: nn.Module) -> nn.Module:
        cfg, p = self.config, self.processes
        if cfg.sync_bn and p.distributed:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = model.to(self.device)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.module = model  # the model itself, whatever wraps it
        if p.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = DistributedDataParallel(model, device_ids=ids)
        return model

    def _make_optimizer(self) -> torch.optim.Optimizer:
        cfg, params = self.config, self.module.parameters()
        if cfg.optimizer == "sgd":
            return torch.optim.SGD(params, lr=cfg.learning_rate, momentum=cfg.momentum,
                                   nesterov=cfg.nesterov and cfg.momentum > 0, weight_decay=cfg.weight_decay)
        return torch.optim.Adam(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)

    def _train_mode(self) -> None:
        self.model.train()
        if self.config.freeze_bn:
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()

    def _loader(self, dataset: Dataset, sampler) -> DataLoader:
        return DataLoader(dataset, batch_size=self.config.batch_size // self.processes.world_size, sampler=sampler,
                          num_workers=self.config.num_workers, pin_memory=self.device.type == "cuda")

    def _to_device(self, images: Tensor, labels: Tensor) -> Tuple[Tensor, Tensor]:
        fmt = torch.channels_last if self.config.channels_last else torch.contiguous_format
        images = images.to(self.device, non_blocking=True).to(memory_format=fmt)
        return images, labels.to(self.device, non_blocking=True)

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)

    # -- training -------------------------------------------------------------------------

    def train(self) -> List[Dict[str, float]]:
        """Train up to max_epochs (resuming from ckpt_path first when config.resume)."""
        cfg = self.config
        if cfg.resume and cfg.ckpt_path and os.path.exists(cfg.ckpt_path):
            self.load_checkpoint(cfg.ckpt_path)
        self._start_log()
        while self.epoch < cfg.max_epochs:
            row = {"epoch": self.epoch + 1, "lr": self.optimizer.param_groups[0]["lr"], **self.train_one_epoch()}
            if self.test_dataset is not None:
                if cfg.precise_bn and not cfg.freeze_bn:
                    self.compute_precise_bn_stats()
                row.update(self.evaluate())
            self.scheduler.step()
            self.epoch += 1
            self.history.append(row)
            self._log(row)
            if cfg.ckpt_path and (self.epoch == cfg.max_epochs or
                                  (cfg.checkpoint_every and self.epoch % cfg.checkpoint_every == 0)):
                self.save_checkpoint(cfg.ckpt_path)
        return self.history

    def train_one_epoch(self) -> Dict[str, float]:
        from tqdm import tqdm

        cfg = self.config
        self._train_mode()
        self.sampler.set_epoch(self.epoch)
        loss_sum, correct, seen, start = 0.0, 0, 0, time.perf_counter()
        bar = tqdm(self._loader(self.train_dataset, self.sampler), desc=f"epoch {self.epoch + 1}/{cfg.max_epochs}",
                   disable=not (cfg.progress and self.processes.is_main), leave=False, dynamic_ncols=True)
        for images, labels in bar:
            images, labels = self._to_device(images, labels)
            loss, logits = self._step(images, labels)
            loss_sum += loss.item() * labels.numel()
            correct += int((logits.argmax(1) == labels).sum())
            seen += labels.numel()
            rate = seen * self.processes.world_size / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{100 * correct / seen:.1f}", img_s=f"{rate:.0f}")
        seconds = time.perf_counter() - start
        loss_sum, correct, seen = _sum_across(self.processes, [loss_sum, correct, seen], self.device)
        return {"train_loss": loss_sum / seen, "train_acc": 100.0 * correct / seen,
                "images_per_s": seen / seconds, "seconds": seconds}

    def _step(self, images: Tensor, labels: Tensor) -> Tuple[Tensor, Tensor]:
        with self._autocast():
            logits = self.model(images)
            loss = self.loss_fn(logits, labels)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach(), logits.detach()

    @torch.no_grad()
    def compute_precise_bn_stats(self) -> None:
        """BatchNorm running statistics as the plain average over config.precise_bn training
        images (this epoch's first ones), averaged over the processes under DDP."""
        bns = [m for m in self.module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if not bns:
            return
        momenta = [m.momentum for m in bns]
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # None: a cumulative average over the batches seen
        self.module.train()
        per_process = max(1, self.config.precise_bn // self.processes.world_size)
        shard = Subset(self.train_dataset, list(self.sampler)[:per_process])
        for batch in self._loader(shard, None):
            images, _ = self._to_device(*batch)
            with self._autocast():
                self.module(images)
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
            if self.processes.distributed:
                for buf in (m.running_mean, m.running_var):
                    dist.all_reduce(buf)
                    buf /= self.processes.world_size

    @torch.no_grad()
    def evaluate(self, dataset: Optional[Dataset] = None) -> Dict[str, float]:
        """Loss and top-1 accuracy (%) on `dataset` (default: the test set), each process
        taking every world_size-th sample so that none is counted twice."""
        dataset = dataset if dataset is not None else self.test_dataset
        p = self.processes
        self.model.eval()
        shard = Subset(dataset, range(p.rank, len(dataset), p.world_size))
        loss_sum, correct = 0.0, 0
        for images, labels in self._loader(shard, None):
            images, labels = self._to_device(images, labels)
            with self._autocast():
                logits = self.module(images)
            loss_sum += float(self.loss_fn(logits.float(), labels)) * labels.numel()
            correct += int((logits.argmax(1) == labels).sum())
        loss_sum, correct = _sum_across(p, [loss_sum, correct], self.device)
        return {"test_loss": loss_sum / len(dataset), "test_acc": 100.0 * correct / len(dataset)}

    # -- checkpoints ----------------------------------------------------------------------

    def _all_rng_states(self) -> List[Dict[str, Any]]:
        state = rng_state()
        if not self.processes.distributed:
            return [state]
        states: List[Any] = [None] * self.processes.world_size
        dist.all_gather_object(states, state)
        return states

    def save_checkpoint(self, path: str) -> None:
        """Everything needed to continue exactly; written atomically by the main process."""
        rng = self._all_rng_states()  # every process takes part in the gather
        if self.processes.is_main:
            atomic_save({
                "model": self.module.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "epoch": self.epoch,
                "rng": rng,
                "history": self.history,
                "config": asdict(self.config),
            }, path)
        if self.processes.distributed:
            dist.barrier()  # nobody reads or replaces the file before it is complete

    def load_checkpoint(self, path: str) -> None:
        # On the CPU: RNG states must stay there; the model and optimizer copy to their devices.
        ckpt = safe_load(path, map_location="cpu")
        load_state_dict_strict(self.module, ckpt["model"], source=path)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt["scaler"]:  # empty when saved without loss scaling
            self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.history = int(ckpt["epoch"]), list(ckpt["history"])
        states, p = ckpt["rng"], self.processes
        set_rng_state(states[p.rank] if len(states) == p.world_size else states[0])

    # -- CSV log ----------------------------------------------------------------------------

    def _start_log(self) -> None:
        """Write the header, or on resume drop the rows of epochs the checkpoint did not keep."""
        if not (self.log_path and self.processes.is_main):
            return
        rows = []
        if self.epoch > 0 and os.path.exists(self.log_path):
            with open(self.log_path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["epoch"]) <= self.epoch]
        os.makedirs(os.path.dirname(os.path.abspath(self.log_path)), exist_ok=True)
        with open(self.log_path, "w", newline="") as f:
            writer = csv.DictWriter(f, CSV_FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    def _log(self, row: Dict[str, float]) -> None:
        if self.config.progress and self.processes.is_main:
            print(" ".join(f"{k}={v:.4g}" for k, v in row.items()), flush=True)
        if self.log_path and self.processes.is_main:
            with open(self.log_path, "a", newline="") as f:
                csv.DictWriter(f, CSV_FIELDS, extrasaction="ignore").writerow(row)
