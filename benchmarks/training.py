"""Benchmark: our training stages against a faithful seed-style baseline, on the same split and params.

Baseline (the seed notebook's loop): torchvision ImageFolder + DataLoader, JPEG/PNG decode, Resize and
Normalize on every image in every epoch, the full model forward every epoch, batch 16, Adam 1e-4, 20
epochs, best by validation loss. (Unlike the seed, its frozen backbone keeps BatchNorm in eval mode and
validation runs in eval mode, so that both sides train the same model and accuracies are comparable.)
It runs as the notebook ran, with torch's defaults: none of the package's process settings (reproducible
mode's instruction-set cap and thread count, huge-page allocations).
Ours: `brain_tumor.training.train.train_model`, the code of the train-* stages, with an empty cache, so decoding and the
feature pass are paid inside the measured time.

Both sides are timed from the start of training (model built, data read) to the best weights in memory
(ours: written to disk, with the DVCLive report); the test accuracy is computed afterwards, untimed. Each
run happens in its own process, so its peak RSS is its own. Also prints the raw MobileNetV2 feature
throughput of this machine, to compare our feature pass against, and for the scratch CNN the memory-traffic
bound of one Adam step.

Usage: python benchmarks/training.py [--split data/split] [--images 1000] [--models scratch,transfer]
"""

import argparse
import multiprocessing as mp
import os
import resource
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from queue import Empty

import numpy as np
import torch

from brain_tumor.core.arrays import batch_indices, load_split
from brain_tumor.core.outputs import read_table, write_table
from brain_tumor.core.params import Params, load_params
from brain_tumor.evaluation.metrics import p_tumor
from brain_tumor.evaluation.predictions import predict_logits
from brain_tumor.training import prefix, train
from brain_tumor.training.checkpoint import load_trained
from brain_tumor.training.device import autocast_dtype, seed_everything
from brain_tumor.training.models import architecture, build_network

SEED_RECIPE = {
    "image_size": 224, "batch_size": 16, "epochs": 20, "lr": 1e-4, "lr_schedule": "constant",
    "label_smoothing": 0.0, "augment": False, "tta_flip": False, "precision": "fp32",
}  # fmt: skip


def subset_split(split_dir: Path, images: int, seed: int, out: Path) -> None:
    """The same split, cut to about `images` images (each split and class shrunk by the same factor)."""
    rows = read_table(split_dir / "split_manifest.csv")
    keep = np.random.default_rng(seed).permutation(len(rows))[: min(images, len(rows))]
    chosen = rows.iloc[keep].sort_values(["split", "label", "id"])
    for file in chosen["file"]:
        (out / file).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(split_dir / file, out / file)
    write_table(out / "split_manifest.csv", chosen)


class SeededBatches:
    """A batch sampler giving a new seeded permutation per epoch, exactly as `loop.fit` shuffles."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.generator = n, batch_size, torch.Generator().manual_seed(seed)

    def __iter__(self):
        return iter(batch_indices(self.n, self.batch_size, self.generator))

    def __len__(self) -> int:
        return (self.n + self.batch_size - 1) // self.batch_size


def seed_style(kind: str, params: Params, split_dir: Path) -> tuple[float, float]:
    """The seed notebook's training loop: (test accuracy of the best-by-validation-loss weights, seconds)."""
    started = time.perf_counter()
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    cfg = params.training(kind)
    seed_everything(cfg.seed)
    tf = transforms.Compose(
        [
            transforms.Resize((cfg.image_size, cfg.image_size)),
            transforms.ToTensor(),
            transforms.Normalize((0.5,) * 3, (0.5,) * 3),
        ]
    )
    sets = {s: datasets.ImageFolder(split_dir / s, tf) for s in ("train", "val", "test")}
    # Shuffled like our stages (same seeded permutations), so that both sides see the same batches; each
    # loader gets its own generator so that starting an epoch does not draw from the global RNG, which
    # the head's dropout uses.
    loaders = {s: DataLoader(d, batch_size=cfg.batch_size, generator=torch.Generator()) for s, d in sets.items()}
    loaders["train"] = DataLoader(
        sets["train"],
        generator=torch.Generator(),
        batch_sampler=SeededBatches(len(sets["train"]), cfg.batch_size, cfg.seed),
    )
    model = train.build_model(kind, cfg)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
    best, best_state = float("inf"), None
    for _ in range(cfg.epochs):
        model.train()
        for x, y in loaders["train"]:
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
        model.eval()
        with torch.no_grad():
            val_loss = sum(
                torch.nn.functional.cross_entropy(model(x), y, reduction="sum").item() for x, y in loaders["val"]
            )
        if val_loss < best:
            best, best_state = val_loss, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    seconds = time.perf_counter() - started
    model.eval()
    with torch.no_grad():
        correct = sum((model(x).argmax(1) == y).sum().item() for x, y in loaders["test"])
    return correct / len(loaders["test"].dataset), seconds


def ours(kind: str, params: Params, split_dir: Path, work: Path) -> tuple[float, float]:
    """Our train-* stage's code: (test accuracy of the model it wrote, seconds)."""
    os.environ["BRAIN_TUMOR_CACHE"] = str(work / "cache")
    started = time.perf_counter()
    train.train_model(kind, params, split_dir, work / f"{kind}.pt", work / f"live_{kind}")
    seconds = time.perf_counter() - started
    model, meta = load_trained(work / f"{kind}.pt")
    test = load_split(split_dir, "test", meta["image_size"])
    return float(((p_tumor(predict_logits(model, test.images, 64)) >= 0.5) == test.labels).mean()), seconds


def best_time(fn, repeats: int) -> float:
    """The fastest of `repeats` calls, in seconds (as STREAM reports: the least disturbed run)."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def adam_step_bound(image_size: int, repeats: int = 10) -> dict:
    """The scratch CNN's fused Adam step (the fastest of `repeats`) against the memory-traffic bound of one
    step: Adam reads parameters, gradients and both moments and writes parameters and moments, 7 x 4 bytes
    per parameter, at the machine's streaming bandwidth for that access pattern (in place `a += b` over
    1 GiB tensors: 3 x 4 bytes per element, with no write-allocate reads since `a` is read anyway)."""
    model = build_network(architecture("scratch", replace(load_params().train_scratch, image_size=image_size)))
    parameters = list(model.parameters())
    count = sum(p.numel() for p in parameters)
    for p in parameters:
        p.grad = torch.randn_like(p)
    optimizer = torch.optim.Adam(parameters, lr=1e-4, fused=True)
    source = torch.ones(2**28)
    target = torch.zeros_like(source)
    for _ in range(2):  # first touch of the moments and the target, outside the timing
        optimizer.step()
        target.add_(source)
    bandwidth = 12 * source.numel() / best_time(lambda: target.add_(source), repeats)
    step_s = best_time(optimizer.step, repeats)
    return {"parameters": count, "bandwidth": bandwidth, "bound_s": 28 * count / bandwidth, "step_s": step_s}


def raw_backbone_throughput(image_size: int, batch: int = 64, repeats: int = 3) -> float:
    """MobileNetV2 features, inference mode, channels_last fp32: the images/s this machine can do."""
    from torchvision.models import mobilenet_v2

    net = mobilenet_v2(weights=None).features.eval().to(memory_format=torch.channels_last)
    x = torch.randn(batch, 3, image_size, image_size).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        net(x)
        start = time.perf_counter()
        for _ in range(repeats):
            net(x)
    return batch * repeats / (time.perf_counter() - start)


def feature_pass(params: Params, split_dir: Path, work: Path, precision: str) -> tuple[float, np.ndarray]:
    """Our cached feature pass over the train split: (images/s, the features)."""
    os.environ["BRAIN_TUMOR_CACHE"] = str(work / f"cache_{precision}")
    cfg = params.train_transfer
    images = load_split(split_dir, "train", cfg.image_size)  # decoded first: this measures the backbone pass
    model = train.build_model("transfer", cfg).to(memory_format=torch.channels_last)
    cpu = torch.device("cpu")
    start = time.perf_counter()
    features = prefix.prefix_views(model, images, 1, prefix.PREFIX_BATCH, cpu, autocast_dtype(precision, cpu))
    return len(images.labels) / (time.perf_counter() - start), np.array(features)


TORCH_DEFAULTS = {  # the seed notebook's process: none of the package's settings (brain_tumor/core/numerics.py)
    "BRAIN_TUMOR_REPRODUCIBLE": "0", "THP_MEM_ALLOC_ENABLE": "0", "ONEDNN_MAX_CPU_ISA": None,
    "ATEN_CPU_CAPABILITY": None, "MKL_CBWR": None, "OMP_NUM_THREADS": None, "MKL_NUM_THREADS": None,
}  # fmt: skip


def _child(queue, fn, args):
    start = time.perf_counter()
    result = fn(*args)
    queue.put((result, time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def measure(fn, *args, env: dict | None = None):
    """Run fn(*args) in a fresh process: (result, wall seconds, peak RSS MiB of that process). With `env`
    (None deletes a variable) the process is a new interpreter started with that environment, since torch
    reads these settings once, when it loads."""
    context = mp.get_context("spawn" if env is not None else "fork")
    saved = dict(os.environ)
    for name, value in (env or {}).items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    try:
        queue = context.Queue()
        proc = context.Process(target=_child, args=(queue, fn, args))
        proc.start()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    while True:  # a child that dies (an exception, out of memory) puts nothing: fail instead of waiting forever
        try:
            out = queue.get(timeout=1)
            break
        except Empty:
            if not proc.is_alive():
                raise SystemExit(f"error: {fn.__name__} died in its process (exit code {proc.exitcode})") from None
    proc.join()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--split", type=Path, default=Path("data/split"))
    ap.add_argument("--images", type=int, default=1000, help="images taken from the split (all three parts)")
    ap.add_argument("--models", default="transfer,scratch")
    ap.add_argument(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time the seed-style baseline (--no-baseline: ours only, e.g. for RSS at other sizes)",
    )
    ap.add_argument(
        "--seed-recipe",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="train both sides with the seed recipe (frozen backbone, no augmentation, 20 epochs, lr 1e-4)",
    )
    args = ap.parse_args()
    params = load_params()
    if args.seed_recipe:  # the comparison the speed-ups are quoted for
        params = replace(
            params,
            train_transfer=replace(params.train_transfer, **SEED_RECIPE, unfreeze_last=0, head="linear"),
            train_scratch=replace(params.train_scratch, **SEED_RECIPE),
        )
    print(
        f"machine: {os.cpu_count()} CPUs, torch {torch.__version__}, threads {torch.get_num_threads()}, "
        f"cuda {torch.cuda.is_available()}"
    )
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        subset_split(args.split, args.images, params.split.seed, tmp / "split")
        counts = {s: len(list((tmp / "split" / s).rglob("*.png"))) for s in ("train", "val", "test")}
        print(f"data: {counts} from {args.split}; params: params.yaml")
        for kind in args.models.split(","):
            cfg = params.training(kind)
            per_epoch = counts["train"] + counts["val"]
            (our_acc, our_s), _, our_rss = measure(ours, kind, params, tmp / "split", tmp / kind)
            print(
                f"{kind}: ours       {our_s:.1f} s ({per_epoch * cfg.epochs / our_s:.1f} img/s), "
                f"peak RSS {our_rss:.0f} MiB, test acc {our_acc:.4f}",
                flush=True,
            )
            if kind == "scratch":
                adam, _, _ = measure(adam_step_bound, cfg.image_size)
                steps = cfg.epochs * -(-counts["train"] // cfg.batch_size)
                print(
                    f"scratch: {adam['parameters'] / 1e6:.1f}M parameters; streaming bandwidth "
                    f"{adam['bandwidth'] / 1e9:.1f} GB/s; fused Adam step {1e3 * adam['step_s']:.0f} ms vs its "
                    f"memory-traffic bound {1e3 * adam['bound_s']:.0f} ms ({adam['bound_s'] / adam['step_s']:.0%}); "
                    f"our whole training step {1e3 * our_s / steps:.0f} ms on average ({steps} steps, "
                    f"validation and set-up included)",
                    flush=True,
                )
            if args.baseline:
                (base_acc, base_s), _, base_rss = measure(seed_style, kind, params, tmp / "split", env=TORCH_DEFAULTS)
                print(
                    f"{kind}: seed-style {base_s:.1f} s ({per_epoch * cfg.epochs / base_s:.1f} img/s), "
                    f"peak RSS {base_rss:.0f} MiB, test acc {base_acc:.4f}"
                )
                print(
                    f"{kind}: speed-up {base_s / our_s:.1f}x, "
                    f"accuracy difference {100 * (our_acc - base_acc):+.2f} points",
                    flush=True,
                )
        if "transfer" in args.models:
            size = params.train_transfer.image_size
            raw, _, _ = measure(raw_backbone_throughput, size)
            (fp32, f32), _, _ = measure(feature_pass, params, tmp / "split", tmp / "feat", "fp32")
            (bf16, fbf), _, _ = measure(feature_pass, params, tmp / "split", tmp / "feat", "bf16")
            rel = np.abs(fbf - f32).max() / np.abs(f32).max()
            print(
                f"backbone: raw {raw:.1f} img/s; our feature pass fp32 {fp32:.1f} img/s ({fp32 / raw:.0%} of raw), "
                f"bf16 autocast {bf16:.1f} img/s (max deviation {rel:.1%} of the largest feature)"
            )


if __name__ == "__main__":
    main()
