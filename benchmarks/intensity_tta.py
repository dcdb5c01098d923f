"""Benchmark: intensity test-time augmentation of a trained model, inside its collection and on other sources.

The model's P(tumor) for each scan as it is, after a remapping of its grey levels inside the head (inversion,
gamma 0.6 and 1.6, histogram equalisation), and averaged over several of them; for the internal test split and
every set in `evaluate.external` (params.yaml): accuracy, sensitivity and specificity at 0.5, and ROC AUC.
Inversion and gamma act inside `training.domain.head_mask` (the domain views' head); equalisation is the
`head_standardisation: histogram` layer itself. The air stays black.

Usage: python benchmarks/intensity_tta.py MODEL.pt   (in a project whose data/split and external sets exist)
"""

import sys
from pathlib import Path

import numpy as np
import torch

from brain_tumor.core.arrays import load_split, to_input
from brain_tumor.core.params import load_params
from brain_tumor.core.stage import run_stage
from brain_tumor.evaluation.external import ExternalSet, read_external, resized
from brain_tumor.evaluation.metrics import p_tumor, roc_auc
from brain_tumor.evaluation.predictions import predict_logits
from brain_tumor.training.checkpoint import load_trained
from brain_tumor.training.domain import head_mask
from brain_tumor.training.standardisation import HeadHistogram


def remapped(curve):
    """Apply `curve(grey, head_mask)` to each scan's grey levels (0-255 floats) and clip back to uint8 RGB."""

    def apply(images: np.ndarray) -> np.ndarray:
        out = np.empty_like(images)
        for i, rgb in enumerate(images):
            grey = rgb[..., 0].astype(np.float32)
            head = head_mask(grey / 255)
            out[i] = np.clip(curve(grey, head), 0, 255).astype(np.uint8)[..., None]
        return out

    return apply


def equalised(images: np.ndarray) -> np.ndarray:
    """The `head_standardisation: histogram` layer (training/standardisation.py) applied to uint8 scans."""
    layer = HeadHistogram()
    with torch.no_grad():
        grey = (layer(to_input(images, torch.device("cpu"))) * layer.std + layer.mean)[:, 0] * 255
    return np.repeat(grey.round().clamp(0, 255).to(torch.uint8).numpy()[..., None], images.shape[-1], axis=-1)


TRANSFORMS = {
    "identity": lambda images: images,
    "invert": remapped(lambda g, head: np.where(head, 255 - g, 0)),
    "gamma 0.6": remapped(lambda g, head: 255 * (g / 255) ** 0.6),
    "gamma 1.6": remapped(lambda g, head: 255 * (g / 255) ** 1.6),
    "equalise": equalised,
}
MEANS = {
    **{name: [name] for name in TRANSFORMS},
    "id + invert": ["identity", "invert"],
    "id + equalise": ["identity", "equalise"],
    "id + gammas": ["identity", "gamma 0.6", "gamma 1.6"],
    "mean of all": list(TRANSFORMS),
}


def figures(y: np.ndarray, p: np.ndarray) -> str:
    called = p >= 0.5
    sens = f"{called[y == 1].mean():.3f}" if (y == 1).any() else "-"
    spec = f"{(~called[y == 0]).mean():.3f}" if (y == 0).any() else "-"
    auc = f"{roc_auc(y, p):.3f}" if len(set(y)) > 1 else "-"
    return f"acc {np.mean(called == y):.3f} sens {sens} spec {spec} auc {auc}"


def external_sets() -> list[ExternalSet]:
    params = load_params()
    return [read_external(path, params.data) for path in params.evaluate.external]


def measured_sets(size: int, external: list[ExternalSet] | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{name: (uint8 NHWC scans at `size`, labels)}: the internal test split and each of `evaluate.external`
    (`external`: those sets read already)."""
    test = load_split(Path("data/split"), "test", size)
    sets = {"internal test": (np.asarray(test.images), test.labels)}
    for found in external_sets() if external is None else external:
        sets[found.name] = (resized(found.images, size), found.labels)
    return sets


def main() -> None:
    model, meta = load_trained(Path(sys.argv[1]))
    sets = measured_sets(meta["image_size"])
    p = {(s, t): p_tumor(predict_logits(model, f(x), 64)) for s, (x, _) in sets.items() for t, f in TRANSFORMS.items()}
    for mean, names in MEANS.items():
        cells = [f"{s}: {figures(y, np.mean([p[s, t] for t in names], axis=0))}" for s, (_, y) in sets.items()]
        print(f"{mean:13s} | " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    run_stage(main)  # a failure is one `error:` line
