"""`brain-tumor`: the tools a user runs by hand, beside the DVC stages (which run `python stages/<name>.py`)."""

from __future__ import annotations

import argparse
import signal
import sys
import tempfile
from pathlib import Path

from brain_tumor.core.errors import PipelineError
from brain_tumor.core.stage import exit_status, handle_signals, keep_torch_cache_in


def weights_command(args: argparse.Namespace) -> None:
    """Find the ImageNet weights offline, verify their sha256 and print where they are."""
    from brain_tumor.training.models import resolve_weights

    print(resolve_weights())


def predict_command(args: argparse.Namespace) -> None:
    """P(tumor) for every scan under the PATHs: a table on stdout, or a CSV / JSON file with --out."""
    from brain_tumor.serving.novelty import novelty_path
    from brain_tumor.serving.predict import (
        limits_from_params,
        load_model,
        operating_point,
        predict_paths,
        refused_text,
        write_predictions,
        writing,
    )
    from brain_tumor.training.seen import index_path

    if args.out is not None and args.out.suffix not in (".csv", ".json"):
        raise PipelineError(f"--out {args.out}: expected a .csv or .json file name")
    if args.batch_size < 1:
        raise PipelineError(f"--batch-size {args.batch_size}: must be at least 1")
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise PipelineError(f"--threshold {args.threshold}: must be between 0 and 1")
    model = load_model(args.model)
    threshold, source = operating_point(model, args.threshold)
    table = predict_paths(args.paths, model, threshold, args.batch_size, limits_from_params(), args.explain)
    predicted = int(table["p_tumor"].notna().sum())
    if not predicted:
        raise PipelineError(f"no file could be predicted ({refused_text(table) or 'no files found'})")
    if args.out is not None:
        with writing("--out", args.out):
            write_predictions(table, args.out)
    else:
        print(f"model {model.name} (sha256 {model.sha256[:12]}), threshold {threshold:g} ({source})")
        shown = table[
            ["path", "p_tumor", "predicted_class", "seen_in_training", "novelty", "unlike_training", "reason"]
        ]
        print(shown.to_string(index=False, na_rep="", float_format="{:.4f}".format))
    report_flags(
        table["seen_in_training"],
        predicted,
        f"no {index_path(model.path)} beside the model: seen_in_training not computed",
        "are the same slice as a training or validation scan (seen_in_training): a figure measured on them is "
        "partly a training-set figure",
    )
    novelty_file = novelty_path(model.path)
    report_flags(
        table["unlike_training"],
        predicted,
        f"no {novelty_file} beside the model: novelty not computed (dvc repro evaluate)"
        if not novelty_file.is_file()
        else f"{model.name} gives no feature vectors (exported before the novelty score): novelty not computed",
        "are unlike the training collection (unlike_training: novelty above the threshold calibrated on "
        "validation): the model's test figures do not hold for them",
    )
    skipped = f"; not predicted: {refused_text(table)}" if predicted < len(table) else ""
    written = f"; written to {args.out}" if args.out is not None else ""
    print(
        f"predicted {predicted} of {len(table)} files with {model.name} at threshold {threshold:g} ({source})"
        f"{skipped}{written}",
        file=sys.stderr,
    )


def report_flags(flags, predicted: int, not_computed: str, flagged: str) -> None:
    """One stderr line for a true/false column of predict: a note where it was not computed, else a warning
    counting the scans flagged (none: no line)."""
    if (flags == "").all():
        print(f"note: {not_computed}", file=sys.stderr)
    elif n_flagged := int((flags == "true").sum()):
        print(f"warning: {n_flagged} of {predicted} scans {flagged}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="brain-tumor", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    weights = commands.add_parser("weights", help="locate and verify the MobileNetV2 ImageNet weights")
    weights.set_defaults(handler=weights_command)
    predict = commands.add_parser(
        "predict",
        help="P(tumor) for scans: files, folders (recursive) or .zip archives",
        description=predict_command.__doc__,
    )
    predict.add_argument("paths", nargs="+", metavar="PATH", help="image files, folders or .zip archives")
    predict.add_argument(
        "--model", default="transfer", help="transfer | scratch (models/<name>.pt here) | FILE.pt | FILE.onnx"
    )
    predict.add_argument("--out", type=Path, help="write predictions.csv or predictions.json instead of a table")
    predict.add_argument("--explain", type=Path, metavar="DIR", help="write a Grad-CAM overlay PNG per image here")
    predict.add_argument("--batch-size", type=int, default=32)
    predict.add_argument(
        "--threshold", type=float, help="P(tumor) at or above which a scan is called tumor (default: the model's)"
    )
    predict.set_defaults(handler=predict_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a command as a stage runs: what goes wrong is one `error:` line and a non-zero exit, Ctrl-C (130)
    and SIGTERM (143) included, raised where the command is so that its temporary folders are removed.
    The signal handlers are put back on return, for callers in the same process (tests)."""
    args = build_parser().parse_args(argv)
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    handle_signals()
    try:
        with tempfile.TemporaryDirectory(prefix="brain-tumor-") as scratch:  # torch's compile cache: gone after
            keep_torch_cache_in(Path(scratch))
            return exit_status(lambda: args.handler(args))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
