"""Stage train-scratch: data/split -> models/scratch.pt + metrics/train_scratch/ (DVCLive curves)."""

from pathlib import Path

from brain_tumor.core.params import load_params
from brain_tumor.core.stage import run_stage
from brain_tumor.training.train import train_model


def main() -> None:
    train_model("scratch", load_params(), Path("data/split"), Path("models/scratch.pt"), Path("metrics/train_scratch"))


if __name__ == "__main__":
    run_stage(main)
