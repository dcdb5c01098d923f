"""Benchmark: an ensemble of trained models (the mean of their P(tumor)), inside the collection and outside.

For each model alone and for the mean over all of them: accuracy, sensitivity and specificity at 0.5 and
ROC AUC on the internal test split and every set in `evaluate.external` (params.yaml), as
`benchmarks/intensity_tta.py` reports them. Each model sees the scans at its own recorded image size.

Usage: python benchmarks/ensemble.py MODEL.pt MODEL.pt [...]   (in a project whose data/split and external sets exist)
"""

import sys
from pathlib import Path

import numpy as np
from intensity_tta import external_sets, figures, measured_sets  # this folder's: run as a script

from brain_tumor.core.errors import PipelineError
from brain_tumor.core.stage import run_stage
from brain_tumor.evaluation.metrics import p_tumor
from brain_tumor.evaluation.predictions import predict_logits
from brain_tumor.training.checkpoint import load_trained


def main(paths: list[str]) -> None:
    if len(paths) < 2:
        raise PipelineError("name two or more model files")
    scores, labels, external = {}, {}, external_sets()  # read once, resized per model
    for path in paths:
        model, meta = load_trained(Path(path))
        for name, (images, y) in measured_sets(meta["image_size"], external).items():
            scores[path, name], labels[name] = p_tumor(predict_logits(model, images, 64)), y
        cells = [f"{name}: {figures(y, scores[path, name])}" for name, y in labels.items()]
        print(f"{Path(path).parent.name}/{Path(path).name} | " + " | ".join(cells), flush=True)
    mean = {name: np.mean([scores[path, name] for path in paths], axis=0) for name in labels}
    print("mean of all | " + " | ".join(f"{name}: {figures(y, mean[name])}" for name, y in labels.items()))


if __name__ == "__main__":
    run_stage(lambda: main(sys.argv[1:]))  # a failure is one `error:` line
