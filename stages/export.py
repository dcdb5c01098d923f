"""Stage export: models/{scratch,transfer}.pt (+ .threshold.json) -> models/{scratch,transfer}.onnx."""

from pathlib import Path

from brain_tumor.core.params import load_params
from brain_tumor.core.stage import run_stage


def main() -> None:
    load_params()  # export reads no param, but refuses a params.yaml that no other stage would accept
    # imported once the params are read: a bad params.yaml is one line before torch loads
    from brain_tumor.serving.export import export_models

    models = {"scratch": Path("models/scratch.pt"), "transfer": Path("models/transfer.pt")}
    for name, result in export_models(models).items():
        print(
            f"{name}: {result['onnx']} ({result['bytes'] / 2**20:.1f} MiB), "
            f"ONNX Runtime vs PyTorch max |p_tumor difference| {result['max_abs_difference']:.1e}"
        )


if __name__ == "__main__":
    run_stage(main)
