"""Stage evaluate: both models, once, on the test split -> metrics/test/, metrics/test_operating_point/,
metrics/validation/, metrics/evaluate/ (plot data, subgroups, calibration), models/<model>.threshold.json,
reports/evaluate/ (figures) and reports/model_card.md."""

from pathlib import Path

from brain_tumor.core.params import load_params
from brain_tumor.core.stage import run_stage


def main() -> None:
    params = load_params()
    # imported once the params are read: a bad params.yaml is one line before torch loads
    from brain_tumor.evaluation.evaluate import evaluate_models

    models = {"scratch": Path("models/scratch.pt"), "transfer": Path("models/transfer.pt")}
    results = evaluate_models(
        params,
        Path("data/split"),
        models,
        Path("metrics"),
        Path("reports/evaluate"),
        Path("reports/model_card.md"),
    )
    for name, metrics in results.items():
        print(f"{name}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if v is not None))


if __name__ == "__main__":
    run_stage(main)
