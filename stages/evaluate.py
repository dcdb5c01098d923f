"""Stage evaluate: both models on the test split -> metrics/test.json, metrics/test_ci95.json,
metrics/predictions/*.csv (confusion plots) and reports/evaluate/*.png."""

from pathlib import Path

from brain_tumor.common import load_params, run_stage
from brain_tumor.evaluate import evaluate_models


def main() -> None:
    models = {"scratch": Path("models/scratch.pt"), "transfer": Path("models/transfer.pt")}
    results = evaluate_models(load_params(), Path("data/split"), models, Path("metrics"), Path("reports/evaluate"))
    for name, metrics in results.items():
        print(
            f"{name}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "test_images" and v is not None)
        )


if __name__ == "__main__":
    run_stage(main)
