"""Benchmark: two models gated by the first's novelty score (a scan unlike the collection goes to the second).

The default model is the best inside its collection and the worst outside it; a model trained to find lesions
(`head_standardisation: histogram`, `lesion_copies: 1`) is the reverse. The first model's novelty score
(serving/novelty.py) sends each scan to one of them: at or below a threshold the first model's P(tumor),
above it the second's; the thresholds are quantiles of the validation scans' scores, the last (0.99) the
served one. For each model alone and for each gate: accuracy, sensitivity and specificity at 0.5 and ROC
AUC on the internal test split and every set in `evaluate.external` (params.yaml), as
`benchmarks/intensity_tta.py` reports them; for each gate also their 95% bootstrap intervals and the share
of each set's scans sent to the second model.

Usage: python benchmarks/novelty_gate.py FIRST.pt SECOND.pt   (in a project whose data/split and external sets exist)
"""

import sys
from pathlib import Path

import numpy as np
from intensity_tta import external_sets, figures, measured_sets  # this folder's: run as a script

from brain_tumor.core.arrays import load_split
from brain_tumor.core.errors import PipelineError
from brain_tumor.core.outputs import file_sha256
from brain_tumor.core.stage import run_stage
from brain_tumor.evaluation.metrics import bootstrap_ci, p_tumor
from brain_tumor.evaluation.predictions import predict_features, predict_logits
from brain_tumor.serving.novelty import QUANTILE, Novelty, build_novelty, reference_rows
from brain_tumor.training.checkpoint import load_trained

BATCH = 64
QUANTILES = (0.8, 0.9, 0.95, QUANTILE)  # of the validation scans' scores; QUANTILE: the served threshold


def gate_thresholds(model, path: Path, size: int) -> tuple[Novelty, dict[float, float]]:
    """The novelty reference evaluate would write beside `path` (training scans), and the threshold at each of
    QUANTILES of the validation scans' scores."""
    train = load_split(Path("data/split"), "train", size)
    val = predict_features(model, load_split(Path("data/split"), "val", size).images, BATCH)
    reference = predict_features(model, train.images[reference_rows(len(train.labels))], BATCH)
    novelty = build_novelty(reference, val, file_sha256(path))
    val_scores = novelty.scores(val)
    return novelty, {q: novelty.threshold if q == QUANTILE else float(np.quantile(val_scores, q)) for q in QUANTILES}


def intervals(y: np.ndarray, p: np.ndarray) -> str:
    """95% bootstrap intervals of accuracy and ROC AUC at 0.5 (evaluate's resampling, 1000 draws, seed 42)."""
    ci = bootstrap_ci(y, (p >= 0.5).astype(int), p, 1000, 42)
    shown = [(m, ci[m]) for m in ("accuracy", "roc_auc") if not np.isnan(ci[m][0])]
    return " ".join(f"{m} [{lo:.3f}, {hi:.3f}]" for m, (lo, hi) in shown)


def main(paths: list[str]) -> None:
    if len(paths) != 2:
        raise PipelineError("name two model files: the one for scans like the collection, then the other")
    models = [load_trained(Path(path)) for path in paths]  # both read before the long work
    external, scores, labels, novel = external_sets(), {}, {}, {}
    for which, (path, (model, meta)) in enumerate(zip(paths, models, strict=True)):
        sets = measured_sets(meta["image_size"], external)
        if which == 0:
            novelty, thresholds = gate_thresholds(model, Path(path), meta["image_size"])
            novel = {name: novelty.scores(predict_features(model, x, BATCH)) for name, (x, _) in sets.items()}
        for name, (images, y) in sets.items():
            scores[path, name], labels[name] = p_tumor(predict_logits(model, images, BATCH)), y
        print(f"{path} | " + " | ".join(f"{n}: {figures(y, scores[path, n])}" for n, y in labels.items()), flush=True)
    first, second = paths
    for quantile, threshold in thresholds.items():
        cells = []
        for name, y in labels.items():
            gated = novel[name] > threshold
            p = np.where(gated, scores[second, name], scores[first, name])
            cells.append(f"{name}: {figures(y, p)} {intervals(y, p)} gated {gated.mean():.3f}")
        print(f"gate at the validation's {quantile:.2f} quantile | " + " | ".join(cells))


if __name__ == "__main__":
    run_stage(lambda: main(sys.argv[1:]))  # a failure is one `error:` line
