"""Stage evaluate: both models on the test split -> metrics/test.json, metrics/test_ci95.json,
metrics/predictions/*.csv (confusion plots) and reports/evaluate/*.png."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from brain_tumor import evaluate  # noqa: E402
from brain_tumor.common import load_params, run_stage  # noqa: E402


def main() -> None:
    models = {"scratch": Path("models/scratch.pt"), "transfer": Path("models/transfer.pt")}
    results = evaluate.run(load_params(), Path("data/split"), models, Path("metrics"), Path("reports/evaluate"))
    for name, m in results.items():
        print(f"{name}: " + ", ".join(f"{k} {v:.4f}" for k, v in m.items() if k != "test_images"))


if __name__ == "__main__":
    run_stage(main)
