"""Stage train-scratch: data/split -> models/scratch.pt + metrics/train_scratch/ (DVCLive curves)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from brain_tumor import train  # noqa: E402
from brain_tumor.common import load_params, run_stage  # noqa: E402

if __name__ == "__main__":
    run_stage(lambda: train.run("scratch", load_params(), Path("data/split"), Path("models/scratch.pt"),
                                Path("metrics/train_scratch")))
