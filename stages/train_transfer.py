"""Stage train-transfer: data/split -> models/transfer.pt + metrics/train_transfer/ (DVCLive curves)."""

from pathlib import Path

from brain_tumor.core.params import load_params
from brain_tumor.core.stage import run_stage


def main() -> None:
    params = load_params()
    # imported once the params are read: a bad params.yaml is one line before torch loads
    from brain_tumor.training.train import train_model

    train_model("transfer", params, Path("data/split"), Path("models/transfer.pt"), Path("metrics/train_transfer"))


if __name__ == "__main__":
    run_stage(main)
