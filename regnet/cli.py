"""The ``regnet`` command (also ``python -m regnet``).

    regnet zoo                                  the 24 zoo models, our counts next to pycls's
    regnet info regnety_016 --resolution 256    one model's stages and complexity
    regnet sample RegNetX --n 10 --flops 360M 400M --seed 0
    regnet fit 48 104x3 208x6 440x6             how far widths are from a RegNet
    regnet train --synthetic --model regnetx_002 --epochs 2
    regnet train --data /imagenet --model regnety_016      (torchrun --nproc_per_node=8 -m regnet train ...)
    regnet sweep AnyNetX_A RegNetX --n 8 --synthetic --flops 0 400M --out sweeps
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import List, Optional, Sequence

from .analysis import fit_widths
from .design_space import SPACES, AnyNetSpec, Regime, get_space
from .model import complexity_of_stages
from .widths import RegNetParams, StageSpec
from .zoo import PYCLS_NAMES, ZOO, config_of, create_model

__all__ = ["main", "PYCLS_PUBLISHED"]

# pycls MODEL_ZOO.md: flops (B), params (M), acts (M) of the dds_baselines, at 224 px.
PYCLS_PUBLISHED = {
    "regnetx_002": (0.2, 2.7, 2.2), "regnetx_004": (0.4, 5.2, 3.1), "regnetx_006": (0.6, 6.2, 4.0),
    "regnetx_008": (0.8, 7.3, 5.1), "regnetx_016": (1.6, 9.2, 7.9), "regnetx_032": (3.2, 15.3, 11.4),
    "regnetx_040": (4.0, 22.1, 12.2), "regnetx_064": (6.5, 26.2, 16.4), "regnetx_080": (8.0, 39.6, 14.1),
    "regnetx_120": (12.1, 46.1, 21.4), "regnetx_160": (15.9, 54.3, 25.5), "regnetx_320": (31.7, 107.8, 36.3),
    "regnety_002": (0.2, 3.2, 2.2), "regnety_004": (0.4, 4.3, 3.9), "regnety_006": (0.6, 6.1, 4.3),
    "regnety_008": (0.8, 6.3, 5.2), "regnety_016": (1.6, 11.2, 8.0), "regnety_032": (3.2, 19.4, 11.3),
    "regnety_040": (4.0, 20.6, 12.3), "regnety_064": (6.4, 30.6, 16.4), "regnety_080": (8.0, 39.2, 18.0),
    "regnety_120": (12.1, 51.8, 21.4), "regnety_160": (15.9, 83.6, 23.0), "regnety_320": (32.3, 145.0, 30.3),
}
ZOO_TO_PYCLS = {v: k for k, v in PYCLS_NAMES.items()}
UNITS = {"K": 1e3, "M": 1e6, "G": 1e9}


def table(headers: Sequence[str], rows: Sequence[Sequence], left: int = 1) -> str:
    """Rows of cells as aligned text: the first `left` columns left-aligned, the rest right."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    fmt = lambda r: "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([fmt(cells[0]), "  ".join("-" * w for w in widths)] + [fmt(r).rstrip() for r in cells[1:]])


def amount(text: str) -> float:
    """'360M', '0.4G', '500K' or a bare number of millions."""
    text = text.strip().upper()
    try:
        return float(text[:-1]) * UNITS[text[-1]] if text[-1:] in UNITS else float(text) * 1e6
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an amount: expected e.g. 360M, 0.4G, 500K or 360 "
                                         f"(millions)") from None


def space_arg(name: str):
    try:
        return get_space(name)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def widths_arg(text: str) -> List[int]:
    """'96' or '96x3' (three blocks of width 96)."""
    width, _, count = text.lower().partition("x")
    try:
        values = [int(width)] * (int(count) if count else 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a block width like 96, or 96x3 for 3 blocks") from None
    if not values or values[0] <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive width and count")
    return values


def _stages_of(name: str):
    """(stage specs, stem width, RegNetParams or None) of any name create_model accepts."""
    config = config_of(name)
    if isinstance(config, RegNetParams):
        return config.stages(), config.stem_w, config
    return list(config), 32, None


def _se_widths(w_in: int, s: StageSpec) -> str:
    """SE width of the stage's first block / of the others (pycls: se_r x block input width)."""
    if not s.se_r:
        return "-"
    first, rest = s.se_width(w_in), s.se_width(s.width)
    return f"{first}" if s.depth == 1 or first == rest else f"{first}/{rest}"


def _short(values: Sequence) -> str:
    return " ".join(str(v) for v in values)


def _in_units(cx) -> List[float]:
    """flops in G, params and acts in M: the units of pycls's tables."""
    return [cx["flops"] / 1e9, cx["params"] / 1e6, cx["acts"] / 1e6]


def _cx_units(cx) -> List[str]:
    return [f"{v:.{digits}f}" for v, digits in zip(_in_units(cx), (3, 2, 2))]


# ---------------------------------------------------------------------------------------------


def cmd_zoo(args) -> None:
    published = args.resolution == 224  # pycls's figures are at 224 px
    print(f"The pycls model zoo at {args.resolution} px, 1000 classes: flops, params and acts counted by "
          f"regnet.complexity" + (", next to pycls's published figures (MODEL_ZOO.md)." if published else ".") + "\n")
    rows = []
    for name, p in ZOO.items():
        stages = p.stages()
        cx = complexity_of_stages(stages, args.resolution, stem_w=p.stem_w)
        row = [name, ZOO_TO_PYCLS[name], _short(s.depth for s in stages), _short(s.width for s in stages),
               p.group_w, "yes" if p.se_r else "-"]
        if published:
            theirs = PYCLS_PUBLISHED[name]
            same = all(round(o, 1) == v for o, v in zip(_in_units(cx), theirs))
            row += [c for pair in zip(_cx_units(cx), theirs) for c in pair] + ["ok" if same else "DIFF"]
        else:
            row += _cx_units(cx)
        rows.append(row)
    headers = ["model", "pycls name", "depths", "widths", "group w", "SE"]
    headers += (["GF", "(pycls)", "M params", "(pycls)", "M acts", "(pycls)", "match"] if published else
                ["GF", "M params", "M acts"])
    print(table(headers, rows, left=4))
    if published:
        print("\nmatch: our counts rounded to pycls's one decimal equal its published figures.")


def cmd_info(args) -> None:
    stages, stem_w, params = _stages_of(args.name)
    r = args.resolution
    h = (r - 1) // 2 + 1
    rows = [["stem", 1, stem_w, "-", "-", 2, "-", f"{h}x{h}"]]
    w_in = stem_w
    for i, s in enumerate(stages):
        h = (h - 1) // s.stride + 1
        rows.append([f"s{i + 1}", s.depth, s.width, s.group_w, s.groups, s.stride, _se_widths(w_in, s), f"{h}x{h}"])
        w_in = s.width
    title = f"{args.name}" + (f" ({ZOO_TO_PYCLS[args.name]})" if args.name in ZOO_TO_PYCLS else "")
    if params is not None:
        title += (f": depth={params.depth} w0={params.w0} wa={params.wa} wm={params.wm} group_w={params.group_w}"
                  f" bot_mul={params.bot_mul:g} se_r={params.se_r:g}")
    print(f"{title}\n")
    print(table(["stage", "depth", "width", "group w", "groups", "stride", "SE width", "output"], rows))
    cx = complexity_of_stages(stages, r, stem_w=stem_w, num_classes=args.num_classes)
    print(f"\nat {r}x{r}, {args.num_classes} classes: flops {cx['flops'] / 1e9:.3f} G ({cx['flops']:,}), "
          f"params {cx['params'] / 1e6:.3f} M ({cx['params']:,}), acts {cx['acts'] / 1e6:.3f} M ({cx['acts']:,})")
    if any(s.se_r for s in stages):
        print("SE width a/b: the stage's first block / the others (SE width follows the block input width)")


def _regime(args) -> Optional[Regime]:
    bounds = {k: tuple(getattr(args, k)) for k in ("flops", "params", "acts") if getattr(args, k)}
    return Regime(**bounds, resolution=args.resolution) if bounds else None


def _spec_cells(spec) -> List[str]:
    if isinstance(spec, AnyNetSpec):
        return [_short(spec.depths), _short(spec.widths), _short(spec.bottleneck_ratios), _short(spec.group_widths)]
    stages = spec.stages()
    return [spec.depth, spec.w0, f"{spec.wa:g}", f"{spec.wm:g}", spec.group_w, _short(s.depth for s in stages),
            _short(s.width for s in stages)]


def _describe(regime: Regime) -> str:
    return ", ".join(f"{k} {lo / 1e6:g}M-{hi / 1e6:g}M" for k, (lo, hi) in regime.bounds().items())


def cmd_sample(args) -> None:
    regime = _regime(args)
    start = time.perf_counter()
    specs = args.space.sample(args.n, seed=args.seed, regime=regime)
    seconds = time.perf_counter() - start
    regnet_space = not args.space.name.startswith("AnyNet")
    headers = (["#", "depth", "w0", "wa", "wm", "group w", "stage depths", "stage widths"] if regnet_space else
               ["#", "depths", "widths", "b", "group w"]) + ["GF", "M params", "M acts"]
    rows = [[i] + _spec_cells(s) + _cx_units(args.space.complexity(s, args.resolution)) for i, s in enumerate(specs)]
    print(f"{args.space.name} ({args.space.description}), seed {args.seed}"
          + (f", within {_describe(regime)}" if regime else "") + f", at {args.resolution} px\n")
    print(table(headers, rows, left=0))
    print(f"\n{len(specs)} models sampled in {seconds:.2f} s")


def cmd_fit(args) -> None:
    widths = [w for group in args.widths for w in group]
    fit = fit_widths(widths)
    print(f"{len(widths)} blocks: w0={fit.w0} wa={fit.wa:.2f} wm={fit.wm:.3f}   fit error {fit.error:.4f} "
          f"(mean |log(fitted / given)| over blocks; 0 = exactly a RegNet)\n")
    print(table(["block", "given", "fitted"], [[i + 1, w, f] for i, (w, f) in enumerate(zip(widths, fit.fitted))], 0))


# ---------------------------------------------------------------------------------------------
# Training and sweeps


def _datasets(args, train_size: int, test_size: int):
    """(train, test, num_classes) from --synthetic or an ImageFolder with train/ and val/."""
    from .train import synthetic_datasets

    if args.synthetic:
        train, test = synthetic_datasets(train_size, test_size, num_classes=args.num_classes,
                                         image_size=args.image_size, seed=args.seed)
        return train, test, args.num_classes
    from torchvision import datasets, transforms

    folders = [os.path.join(args.data, split) for split in ("train", "val")]
    missing = [f for f in folders if not os.path.isdir(f)]
    if missing:
        raise ValueError(f"--data {args.data}: expected an ImageFolder root with train/ and val/ class folders, "
                         f"missing {missing}")
    norm = transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    size = args.image_size
    train_tf = transforms.Compose([transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(),
                                   transforms.ToTensor(), norm])
    test_tf = transforms.Compose([transforms.Resize(size * 256 // 224), transforms.CenterCrop(size),
                                  transforms.ToTensor(), norm])
    train, test = datasets.ImageFolder(folders[0], train_tf), datasets.ImageFolder(folders[1], test_tf)
    return train, test, len(train.classes)


def _training_config(args, **overrides):
    from .train import TrainingConfig

    common = dict(label_smoothing=args.label_smoothing, mixed_precision=args.amp, channels_last=args.channels_last,
                  num_workers=args.workers, seed=args.seed, precise_bn=args.precise_bn, **overrides)
    if args.recipe == "pycls":
        return TrainingConfig.pycls(max_epochs=args.epochs, batch_size=args.batch_size,
                                    warmup_epochs=min(args.warmup_epochs, args.epochs), **common)
    return TrainingConfig(max_epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr,
                          weight_decay=args.wd, **common)


def cmd_train(args) -> None:
    from .train import Trainer, seed_everything

    train, test, num_classes = _datasets(args, args.train_size, args.test_size)
    seed_everything(args.seed)  # the initial weights too
    model = create_model(args.model, num_classes=num_classes)
    config = _training_config(args, ckpt_path=args.ckpt, resume=args.resume, checkpoint_every=args.checkpoint_every,
                              freeze_bn=args.freeze_bn, sync_bn=args.sync_bn, progress=not args.quiet)
    trainer = Trainer(model, train, test, config)
    history = trainer.train()
    if history and trainer.processes.is_main:
        last = history[-1]
        print(f"done: {len(history)} epochs, test accuracy {last.get('test_acc', float('nan')):.2f}%, "
              f"checkpoint {config.ckpt_path}, log {os.path.splitext(config.ckpt_path)[0] + '.csv'}")


def cmd_sweep(args) -> None:
    from .sweep import load_results, plot_sweeps, run_sweep

    train, test, num_classes = _datasets(args, args.train_size, args.test_size)
    training = _training_config(args, ckpt_path=None, progress=False)
    folders = {}
    for space in args.spaces:
        folders[space.name] = os.path.join(args.out, space.name)
        run_sweep(folders[space.name], space, args.n, train, test, num_classes, training=training, seed=args.seed,
                  regime=_regime(args), reclaim_after=args.reclaim_after)
    finished = {k: len(load_results(v)) for k, v in folders.items()}
    if all(n == args.n for n in finished.values()):
        path = plot_sweeps(folders, os.path.join(args.out, "edf.png"), title=f"{args.n} models per space")
        print(f"EDF of {', '.join(folders)}: {path}")
    else:
        print(f"finished so far {finished}; other runners are still training (run again to wait)")


# ---------------------------------------------------------------------------------------------


def _add_regime_args(p) -> None:
    for name in ("flops", "params", "acts"):
        p.add_argument(f"--{name}", nargs=2, type=amount, metavar=("LO", "HI"),
                       help=f"keep models with {name} in [LO, HI] (e.g. 360M 400M; bare numbers are millions)")
    p.add_argument("--resolution", type=int, default=224, help="image size the regime is counted at (224)")


def _add_training_args(p, epochs: int, batch_size: int, lr: float, image_size: int, precise_bn: int) -> None:
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--data", help="ImageFolder root with train/ and val/")
    data.add_argument("--synthetic", action="store_true", help="a generated task (no download)")
    p.add_argument("--image-size", type=int, default=image_size)
    p.add_argument("--num-classes", type=int, default=4, help="classes of the synthetic task (4)")
    p.add_argument("--train-size", type=int, default=512, help="synthetic training images (512)")
    p.add_argument("--test-size", type=int, default=256, help="synthetic test images (256)")
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--batch-size", type=int, default=batch_size, help="global batch size")
    p.add_argument("--recipe", choices=("adam", "pycls"), default="adam",
                   help="adam (--lr, --wd) or pycls (SGD, cosine, warm-up, lr 0.1 x batch/128)")
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--wd", type=float, default=5e-4)
    p.add_argument("--warmup-epochs", type=int, default=5, help="pycls recipe warm-up (5)")
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--precise-bn", type=int, default=precise_bn,
                   help=f"training images to recompute BN statistics on before each evaluation ({precise_bn})")
    p.add_argument("--amp", action="store_true", help="mixed precision where the device supports it")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--workers", type=int, default=0, help="data loader processes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch CPU threads")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="regnet", description="RegNet models, design spaces and training, "
                                     "as in 'Designing Network Design Spaces' and pycls.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("zoo", help="the 24 zoo models with their complexity next to pycls's")
    p.add_argument("--resolution", type=int, default=224)
    p.set_defaults(run=cmd_zoo)

    p = sub.add_parser("info", help="one model's stages and complexity")
    p.add_argument("name", help="any name regnet.create_model accepts (regnetx_002, RegNetX-200MF, regnet_x_400mf)")
    p.add_argument("--resolution", type=int, default=224)
    p.add_argument("--num-classes", type=int, default=1000)
    p.set_defaults(run=cmd_info)

    p = sub.add_parser("sample", help="seeded samples from a design space")
    p.add_argument("space", type=space_arg, help=f"one of {', '.join(SPACES)}")
    p.add_argument("--n", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    _add_regime_args(p)
    p.set_defaults(run=cmd_sample)

    p = sub.add_parser("fit", help="fit RegNet (w0, wa, wm) to per-block widths")
    p.add_argument("widths", nargs="+", type=widths_arg, help="block widths; 96x3 means three blocks of 96")
    p.set_defaults(run=cmd_fit)

    p = sub.add_parser("train", help="train a model (on one process, or under torchrun)")
    p.add_argument("--model", default="regnetx_002", help="any name regnet.create_model accepts")
    p.add_argument("--ckpt", default="./regnet.pt", help="checkpoint path (its .csv is the log)")
    p.add_argument("--resume", action="store_true", help="continue from --ckpt if it exists")
    p.add_argument("--checkpoint-every", type=int, default=1, help="epochs between checkpoints (1)")
    p.add_argument("--freeze-bn", action="store_true", help="BatchNorm on running statistics")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm under DDP on GPUs")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _add_training_args(p, epochs=10, batch_size=128, lr=3e-4, image_size=224, precise_bn=0)
    p.set_defaults(run=cmd_train)

    p = sub.add_parser("sweep", help="sample, train briefly and compare design spaces by their error EDFs")
    p.add_argument("spaces", nargs="+", type=space_arg, metavar="SPACE", help=f"of {', '.join(SPACES)}")
    p.add_argument("--n", type=int, default=8, help="models per space")
    p.add_argument("--out", default="sweeps", help="folder (one sub-folder per space; shareable by runners)")
    p.add_argument("--reclaim-after", type=float, help="take over other hosts' claims older than this (s)")
    _add_regime_args(p)
    _add_training_args(p, epochs=2, batch_size=64, lr=3e-3, image_size=16, precise_bn=512)
    p.set_defaults(run=cmd_sweep)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    try:
        args.run(args)
    except ValueError as e:  # bad names and values: the message lists what is valid
        print(f"regnet {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0
