"""Benchmark: what reproducible mode (AVX2 caps, fixed threads; brain_tumor/core/numerics.py) costs in speed.

Runs the two hot loops of train-transfer - the frozen prefix pass (inference) and a training step of the
fine-tuned blocks (forward, backward, Adam) - once in reproducible mode and once natively (every core, the
CPU's widest instructions), each in its own process (the mode is set before torch runs anything).

Usage: python benchmarks/numerics.py [--repeats 5]
"""

import argparse
import os
import subprocess
import sys
import time

CHILD = "--child"


def measure(repeats: int) -> None:
    import torch

    import brain_tumor  # noqa: F401  (applies the mode from the environment)
    from brain_tumor.core.numerics import reproducible, threads
    from brain_tumor.training.models import TransferNet

    torch.set_num_threads(threads() if reproducible() else os.cpu_count() or 1)  # as the training stage does
    model = TransferNet("linear", 224, 12).to(memory_format=torch.channels_last)
    prefix = model.frozen_prefix()
    images = torch.randn(32, 3, 224, 224).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        features = prefix(images)
        start = time.perf_counter()
        for _ in range(repeats):
            prefix(images)
        prefix_s = (time.perf_counter() - start) / repeats
    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-4, fused=True)
    features = features.clone()

    def step() -> None:
        optimizer.zero_grad()
        model.trainable_part(features).sum().backward()
        optimizer.step()

    step()
    start = time.perf_counter()
    for _ in range(repeats):
        step()
    step_s = (time.perf_counter() - start) / repeats
    mode = "reproducible" if reproducible() else "native"
    print(
        f"{mode:>12}: {torch.get_num_threads()} threads, ATen {torch.backends.cpu.get_cpu_capability()}, oneDNN cap "
        f"{os.environ.get('ONEDNN_MAX_CPU_ISA', 'none')}: prefix {32 / prefix_s:.1f} img/s, "
        f"training step (batch 32, 12 blocks) {step_s * 1000:.0f} ms = {32 / step_s:.1f} img/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    for reproducible in ("1", "0"):
        env = dict(os.environ, BRAIN_TUMOR_REPRODUCIBLE=reproducible)
        for name in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_CBWR", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env.pop(name, None)  # the mode decides, not this shell
        subprocess.run([sys.executable, __file__, CHILD, str(args.repeats)], env=env, check=True)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == CHILD:
        measure(int(sys.argv[2]))
    else:
        main()
