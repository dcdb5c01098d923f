"""Stage train-scratch: data/split -> models/scratch.pt + metrics/train_scratch/ (DVCLive curves)."""

from pathlib import Path

from brain_tumor.core.params import load_params
from brain_tumor.core.stage import run_stage


def main() -> None:
    params = load_params()
    # imported once the params are read: a bad params.yaml is one line before torch loads
    from brain_tumor.training.train import train_model

    train_model("scratch", params, Path("data/split"), Path("models/scratch.pt"), Path("metrics/train_scratch"))


if __name__ == "__main__":
    run_stage(main)
