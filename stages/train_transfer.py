"""Stage train-transfer: data/split -> models/transfer.pt + metrics/train_transfer/ (DVCLive curves)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from brain_tumor import train  # noqa: E402
from brain_tumor.common import load_params, run_stage  # noqa: E402

if __name__ == "__main__":
    run_stage(lambda: train.run("transfer", load_params(), Path("data/split"), Path("models/transfer.pt"),
                                Path("metrics/train_transfer")))
