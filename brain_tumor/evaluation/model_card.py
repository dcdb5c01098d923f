"""The model card, reports/model_card.md: what the models are for and not for, the data and its lineage, model
provenance, test metrics with 95% intervals, subgroups, calibration, known failure modes and how to rebuild it.

Rendered by the evaluate stage from the very dicts and tables it writes to metrics/, never typed by hand, so the
card cannot disagree with the metric files. No timestamps or absolute paths: the same run gives the same bytes.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from brain_tumor.core.errors import PipelineError
from brain_tumor.core.labels import CLASSES, SPLITS
from brain_tumor.core.outputs import atomic_write, file_digest, file_sha256
from brain_tumor.core.params import EvaluateParams, read_yaml
from brain_tumor.data.similarity import leakage_levels

METRIC_NAMES = {"recall": "`recall` (sensitivity)", "roc_auc": "`roc_auc` (threshold-free)"}


@dataclass
class ModelFile:
    path: Path
    meta: dict  # the model file's record (checkpoint.META_TYPES)
    training: dict  # the params its training run logged (training_params)
    operating_point: dict  # as in models/<name>.threshold.json


@dataclass
class CardInputs:
    source: str  # params data.source
    evaluate: EvaluateParams  # params evaluate
    similarity_threshold: float  # params split.similarity_threshold: the same slice, however re-processed
    manifest: pd.DataFrame  # data/split/split_manifest.csv
    models: dict[str, ModelFile]
    metrics: dict[str, dict[str, dict]]  # metrics folder -> {metric: row}, exactly as written there
    subgroups: pd.DataFrame  # as in metrics/evaluate/subgroups.csv
    calibration: dict[str, dict]  # as in metrics/evaluate/calibration.json
    mistakes: dict[str, pd.DataFrame]  # per model: id, true class, subtype, p_tumor
    figures_dir: Path  # reports/evaluate
    external: dict = field(default_factory=dict)  # external set name -> external.ExternalResult


def number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def bounds(low: float | None, high: float | None) -> str:
    """A 95% interval as the card prints it."""
    return f"[{number(low)}, {number(high)}]"


def table(header: Iterable[str], rows: Iterable[Iterable[object]]) -> str:
    header = list(header)
    lines = [header, ["---"] * len(header), *(list(map(str, row)) for row in rows)]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines)


def intended_use() -> str:
    return """## Intended use

A research and teaching demonstration of a reproducible DVC + PyTorch pipeline: two binary classifiers
(tumor / non_tumor) of single 2-D brain MRI slices, one CNN trained from scratch and one MobileNetV2 fine-tuned
from ImageNet.

**Not a medical device, not for diagnosis.** Do not use it for diagnosis, triage, screening or any decision about
a patient; it is not cleared or validated for clinical use. Do not use it on scans outside the training
distribution: other modalities (CT), other MRI sequences, scanners or sites, paediatric or post-operative
brains, whole 3-D volumes, images preprocessed differently. A non_tumor answer never rules a tumour out."""


def data_section(card: CardInputs) -> str:
    rows = card.manifest
    counts = pd.crosstab(rows["split"], rows["class"]).reindex(index=SPLITS, columns=CLASSES, fill_value=0)
    subtypes = pd.crosstab(rows["subtype"], rows["split"]).reindex(columns=SPLITS, fill_value=0)
    shared = int((rows.groupby("group")["split"].nunique() > 1).sum())
    folders = ", ".join(f"`{f}`" for f in sorted(set(rows["source_folder"])) if f) or "none (files at the root)"
    method = (
        "grouped by similarity: copies and neighbouring slices of one scan (cosine similarity of equalised "
        "thumbnails) form a group, and no group has images in two splits"
        if shared == 0
        else f"**{shared} similarity groups have images in more than one split** (grouping off?): "
        "held-out metrics may be optimistic"
    )
    similarity = pd.to_numeric(rows["train_similarity"], errors="coerce")  # empty (NaN) for training images
    leakage, levels = [], leakage_levels(card.similarity_threshold).values()
    for split in ("val", "test"):
        held_out = similarity[rows["split"] == split]
        leakage.append([split, len(held_out), *(int((held_out >= level).sum()) for level in levels)])
    return f"""## Data and lineage

Source: `{card.source}` (params `data.source`); source folders: {folders}. Ingest decodes, deduplicates and
labels every image by its class folder; `data/split/split_manifest.csv` lists each image's split, class,
subtype (its class folder), source path and sha256.

{table(["split", *CLASSES, "total"], ([s, *counts.loc[s], counts.loc[s].sum()] for s in SPLITS))}

Images per subtype (class folder) and split:

{table(["subtype", *SPLITS], ([t, *subtypes.loc[t]] for t in subtypes.index))}

Split method: {method}. Residual leakage: held-out images whose most similar training image reaches each
cosine similarity (manifest column `train_similarity`; {card.similarity_threshold:.2f}, the split's threshold, is the
same slice re-processed; the lower levels reach neighbouring slices):

{table(["split", "images", *(f">= {level:.2f}" for level in levels)], leakage)}"""


def training_params(path: Path) -> dict:
    """The params a training run logged: DVCLive's params.yaml beside its curves (metrics/train_<name>/)."""
    if not path.is_file():
        raise PipelineError(f"{path}: no such file; run the model's training stage first (dvc repro)")
    logged = read_yaml(path)
    return logged if isinstance(logged, dict) else {}


def model_facts(m: ModelFile) -> dict[str, str]:
    """One model's provenance, label -> value (a column of the provenance table)."""
    point = m.operating_point
    return {
        "file": f"`{m.path.as_posix()}`",
        "md5 (as in dvc.lock)": f"`{file_digest(m.path, 'md5')}`",
        "sha256": f"`{file_sha256(m.path)}`",
        "kind": m.meta["kind"],
        "image size": f"{m.meta['image_size']} px",
        "flip averaging (TTA), as validated and served": "on" if m.meta["tta_flip"] else "off",
        "head standardisation (the model's first layer)": m.meta["head_standardisation"],
        "epochs run / best epoch": f"{m.training.get('epochs', '?')} / {m.meta['epoch']}",
        "best validation loss": number(m.meta["val_loss"]),
        "trained on split manifest (sha256)": f"`{m.meta['split_manifest_sha256']}`",
        "operating point (on validation)": f"{number(point['threshold'])} (sensitivity "
        f"{number(point['validation_sensitivity'])}, lower bound {number(point['validation_sensitivity_lower'])}, "
        f"specificity {number(point['validation_specificity'])})",
    }


def provenance_section(models: dict[str, ModelFile]) -> str:
    facts = {name: model_facts(m) for name, m in models.items()}
    rows = ([label, *(facts[name][label] for name in models)] for label in next(iter(facts.values())))
    params = "\n".join(
        f"- {name}: " + ", ".join(f"`{k}={v}`" for k, v in m.training.items()) for name, m in models.items()
    )
    return f"""## Models and provenance

Each model is the epoch with the lowest validation loss. The operating point is the highest P(tumor) threshold
at which the lower bound of the 95% Wilson interval of the validation sensitivity still reaches the target,
and at most 0.5: missing a tumour costs more than a false alarm, and that margin keeps the target when the
scores shift a little (another scanner), where the bare point estimate would lose sensitivity first.

{table(["", *models], rows)}

Training params, as each training run logged them (`metrics/train_<model>/params.yaml`):

{params}"""


def metrics_section(card: CardInputs) -> str:
    n_test = int((card.manifest["split"] == "test").sum())
    parts = [
        f"## Test metrics\n\n{n_test} test images, never used to train or to choose a threshold; 95% percentile "
        f"bootstrap intervals ({card.evaluate.bootstrap_samples} resamples of the test split). Tumour is the "
        "positive class: `recall` is sensitivity."
    ]
    models = list(card.models)
    for folder, title in (("test", "At threshold 0.5"), ("test_operating_point", "At the operating point")):
        rows = [
            [
                METRIC_NAMES.get(metric, f"`{metric}`"),
                *(
                    cell
                    for m in models
                    for cell in (number(row[m]), bounds(row[f"{m}_ci_lower"], row[f"{m}_ci_upper"]))
                ),
            ]
            for metric, row in card.metrics[folder].items()
        ]
        header = ["metric", *(cell for m in models for cell in (m, f"{m} 95% CI"))]
        parts.append(f"### {title} (`metrics/{folder}/`)\n\n{table(header, rows)}")
    return "\n\n".join(parts)


def subgroup_section(subgroups: pd.DataFrame) -> str:
    intro = """## Subgroups (`metrics/evaluate/subgroups.csv`)

Test accuracy per subtype (class folder), per source folder and per estimated acquisition kind (T1-like,
T2-like), where the test split holds several, with 95% Wilson intervals. Within a tumour subtype accuracy is
its sensitivity, within the no-tumour subtype its specificity; grouping `acquisition_class` gives each kind's
sensitivity (`T2-like tumor`) and specificity (`T2-like non_tumor`). Small groups have wide intervals: read
the interval, not the point."""
    if subgroups.empty:
        return intro + "\n\nThe test split holds one subtype and one source folder: no subgroups to report."
    rows = (
        [
            r.model,
            r.grouping,
            r.group,
            r.threshold_name,
            r.n,
            r.errors,
            number(r.accuracy),
            bounds(r.ci_lower, r.ci_upper),
        ]
        for r in subgroups.itertuples()
    )
    header = ["model", "grouping", "group", "threshold", "n", "errors", "accuracy", "95% CI"]
    return f"{intro}\n\n{table(header, rows)}"


def calibration_section(card: CardInputs, link) -> str:
    keys = ("ece", "ece_temperature_scaled", "nll", "nll_temperature_scaled", "temperature")
    rows = ([name, *(number(c[k]) for k in keys)] for name, c in card.calibration.items())
    figures = ", ".join(f"[{name}]({link(f'reliability_{name}.png')})" for name in card.calibration)
    return f"""## Calibration (`metrics/evaluate/calibration.json`)

{table(["model", "ECE", "ECE, T-scaled", "NLL", "NLL, T-scaled", "temperature T"], rows)}

ECE: test images in 15 equal-width bins of P(tumor) (not of the predicted class's confidence); the mean over
images of |observed tumour frequency - mean P(tumor)| of their bin. NLL: mean negative log-likelihood on the
test split. Temperature scaling: one scalar T on the logit z = log(p / (1 - p)), fitted on the validation
split by minimising its NLL; T > 1 means over-confident. **It is reported, not applied**: predictions, the
operating points and the ONNX models use the raw probabilities. Reliability diagrams: {figures}."""


def failure_section(card: CardInputs, link) -> str:
    parts = [
        """## Known failure modes

Trained and tested on one public collection: performance on other scanners, sites or populations is unknown.
Near-copies across splits (see residual leakage above) make held-out metrics optimistic. The most confident
test mistakes at each model's operating point (the gallery shows them with Grad-CAM):"""
    ]
    for name, mistakes in card.mistakes.items():
        threshold = number(card.models[name].operating_point["threshold"])
        rows = ([f"`{r.id}`", r.true_class, r.subtype, number(r.p_tumor)] for r in mistakes.itertuples())
        body = table(["id", "true class", "subtype", "p_tumor"], rows) if len(mistakes) else "No test mistakes."
        gallery = link(f"gallery_{name}.png")
        parts.append(f"### {name} (threshold {threshold})\n\n{body}\n\nGrad-CAM gallery: [{gallery}]({gallery})")
    return "\n\n".join(parts)


def external_section(name: str, result) -> str:
    """One external set: what was read, what the model had effectively seen, and the metrics on the rest."""
    m = result.metrics
    rows = []
    novelty = []
    for model, by_threshold in m["models"].items():
        seen_as_new = by_threshold["novelty"]
        novelty.append(
            f"- {model}: {number(seen_as_new['flagged'])} of the unseen scans score above its novelty threshold "
            f"({seen_as_new['threshold']}; internal test scans: {number(seen_as_new['internal_test_flagged'])}); "
            "the score tells them from the internal test scans at ROC AUC "
            f"{number(seen_as_new['roc_auc_vs_internal_test'])}"
        )
        for threshold_name in ("0.5", "operating_point"):
            row = by_threshold[threshold_name]
            metrics = ("accuracy", "recall", "specificity", "roc_auc")
            cells = [f"{number(row[k])} {bounds(row[f'{k}_ci_lower'], row[f'{k}_ci_upper'])}" for k in metrics]
            rows.append([model, threshold_name, *cells])
    notes = "".join(f"\n- {note}" for note in result.notes)
    return f"""## External set `{name}` (`metrics/external/{name}.json`)

{m["files_seen"]} files: {m["accepted"]} accepted, {m["duplicates"]} exact duplicates, {m["rejected"]} rejected.
**{m["seen"]} of {m["accepted"]} scans are the same slice as a training or validation scan** (similarity >=
{m["same_slice_threshold"]}; listed in `metrics/evaluate/external/{name}_seen.csv`): they are set apart.
Unseen: {m["unseen_tumor"]} tumour, {m["unseen_non_tumor"]} no tumour. Metrics on the unseen scans, 95% bootstrap
intervals:{notes}

{table(["model", "threshold", "accuracy", "sensitivity", "specificity", "ROC AUC"], rows)}

Unlike the training collection? (`brain-tumor predict`'s novelty score, `models/<model>.novelty.npz`)

{chr(10).join(novelty)}{group_table(name, result.groups)}"""


def group_table(name: str, groups) -> str:
    """Per weighting, subject and slice region at the operating point (95% Wilson intervals), where the set
    tells them; empty where it tells none."""
    at_point = groups[groups["threshold_name"] == "operating_point"]
    if at_point.empty:
        return ""

    def rate(row, metric: str, hits: str, n: str) -> str:
        if row[metric] is None or row[metric] != row[metric]:
            return "-"
        interval = bounds(row[f"{metric}_ci_lower"], row[f"{metric}_ci_upper"])
        return f"{row[hits]} / {row[n]} = {number(row[metric])} {interval}"

    rows = [
        [r["model"], f"{r['grouping']} {r['group']}", rate(r, "sensitivity", "found", "tumor"),
         rate(r, "specificity", "cleared", "non_tumor"), number(None if r["roc_auc"] != r["roc_auc"] else r["roc_auc"])]
        for _, r in at_point.iterrows()
    ]  # fmt: skip
    header = ["model", "group", "sensitivity", "specificity", "ROC AUC"]
    return f"""

Per group at the operating point (`metrics/evaluate/external/{name}_groups.csv`; slices of one subject are not
independent, so a subject's interval is narrower than what it vouches for):

{table(header, rows)}"""


def reproduce_section() -> str:
    return """## How to reproduce

    dvc repro                                  # ingest, split, train both models, evaluate (this card), export
    dvc exp run -S train_transfer.epochs=30    # an experiment with other params; then dvc exp show
    dvc metrics diff                           # test metrics (and ECE) against the last commit

`dvc status` reports the models unchanged when their md5 matches the one above (dvc.lock). Training is
reproducible to the byte on the same kind of CPU (docs/reproducibility.md)."""


def render_card(card: CardInputs, card_path: Path) -> str:
    def link(figure: str) -> str:  # a figure's path relative to the card
        return Path(os.path.relpath(card.figures_dir / figure, card_path.parent)).as_posix()

    sections = [
        "# Model card: brain MRI tumour classifiers (scratch CNN, MobileNetV2 transfer)",
        intended_use(),
        data_section(card),
        provenance_section(card.models),
        metrics_section(card),
        subgroup_section(card.subgroups),
        *(external_section(name, result) for name, result in card.external.items()),
        calibration_section(card, link),
        failure_section(card, link),
        reproduce_section(),
    ]
    return "\n\n".join(sections) + "\n"


def write_model_card(path: Path, card: CardInputs) -> None:
    text = render_card(card, path)
    atomic_write(path, lambda p: p.write_text(text))
