"""Which torch CPU ops give other bytes on another CPU? One sha256 per op output, per kernel setting.

Extends shared/numerics/probe.py (its ops keep their names, so its reference files compare) with the ops
this pipeline really runs: the scratch CNN and MobileNetV2 blocks in channels_last as training runs them,
each of MobileNetV2's 19 blocks on its own input (so a difference is located, not propagated), the folded
frozen prefix in inference mode, Adam on exact inputs (the shared probe's gradients come from torch.sin,
which MKL's vector maths computes), and one training step of each of our models.

    python benchmarks/numerics_probe.py > benchmarks/numerics/<cpu>.json       # this CPU
    python benchmarks/numerics_probe.py --compare benchmarks/numerics/<other>.json

Every setting runs in its own process, set before torch is imported (see SETTINGS). Results for each CPU
type measured so far are kept in benchmarks/numerics/; docs say what they show.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

CAPPED = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2,STRICT"}
SETTINGS = {  # the shared probe's three, then the native (uncapped) one
    "capped": CAPPED | {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"},
    "capped-nodnn": CAPPED | {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "PROBE_NO_MKLDNN": "1"},
    "capped-1t": CAPPED | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
    "native": {"BRAIN_TUMOR_REPRODUCIBLE": "0", "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"},
}


def digest(tensor) -> str:
    return hashlib.sha256(tensor.detach().float().contiguous().numpy().tobytes()).hexdigest()[:16]


def shared_ops(torch, out: dict) -> None:
    """The shared probe's ops, same inputs and names (comparable with its reference files)."""
    import torchvision

    torch.manual_seed(0)
    x = torch.randn(8, 3, 224, 224, requires_grad=True)
    conv = torch.nn.Conv2d(3, 32, 3, stride=2, padding=1)
    y = conv(x)
    y.square().mean().backward()
    out["conv3x3.fwd"], out["conv3x3.grad_w"] = digest(y), digest(conv.weight.grad)
    out["conv3x3.grad_x"] = digest(x.grad)
    z = torch.randn(8, 96, 56, 56, requires_grad=True)
    dw = torch.nn.Conv2d(96, 96, 3, padding=1, groups=96)
    y = dw(z)
    y.square().mean().backward()
    out["depthwise.fwd"], out["depthwise.grad_w"] = digest(y), digest(dw.weight.grad)
    pw = torch.nn.Conv2d(96, 24, 1)
    y = pw(z.detach())
    y.square().mean().backward()
    out["pointwise.fwd"], out["pointwise.grad_w"] = digest(y), digest(pw.weight.grad)
    a = torch.randn(16, 50176, requires_grad=True)
    lin = torch.nn.Linear(50176, 2048)
    y = lin(a)
    y.square().mean().backward()
    out["linear_big.fwd"], out["linear_big.grad_w"], out["linear_big.grad_x"] = (
        digest(y), digest(lin.weight.grad), digest(a.grad)
    )  # fmt: skip
    bn = torch.nn.BatchNorm2d(96).train()
    y = bn(z.detach().requires_grad_())
    y.square().mean().backward()
    out["batchnorm.fwd"], out["batchnorm.grad_w"] = digest(y), digest(bn.weight.grad)
    out["relu6"] = digest(torch.nn.functional.relu6(z.detach() * 4))
    logits, labels = torch.randn(64, 2), torch.randint(0, 2, (64,))
    out["softmax_ce"] = digest(torch.nn.functional.cross_entropy(logits, labels, reduction="none"))
    for name, kw in (("adam.default", {}), ("adam.foreach", {"foreach": True}), ("adam.fused", {"fused": True})):
        p = torch.nn.Parameter(torch.randn(1_000_000))
        opt = torch.optim.Adam([p], lr=1e-3, **kw)
        for i in range(3):
            p.grad = torch.sin(torch.arange(1_000_000, dtype=torch.float32) * (i + 1))
            opt.step()
        out[name] = digest(p)
    torch.manual_seed(0)
    m = torchvision.models.mobilenet_v2(num_classes=2).train()
    imgs = torch.randn(8, 3, 224, 224)
    loss = torch.nn.functional.cross_entropy(m(imgs), torch.tensor([0, 1] * 4))
    loss.backward()
    out["mobilenet_v2.train_loss"] = digest(loss.reshape(1))
    out["mobilenet_v2.grad_first_conv"] = digest(m.features[0][0].weight.grad)
    out["mobilenet_v2.grad_classifier"] = digest(m.classifier[1].weight.grad)
    m.eval()
    with torch.no_grad():
        out["mobilenet_v2.eval_logits"] = digest(m(imgs))


def exact_gradient(torch, n: int, i: int):
    """Gradients from integer arithmetic only (exactly representable): no transcendental function involved."""
    k = torch.arange(n, dtype=torch.int64)
    return (((k * (7 + 2 * i)) % 2001) - 1000).float() / 1024


def our_ops(torch, out: dict) -> None:
    """The ops and models of this pipeline, as its stages run them (channels_last, inference mode)."""
    import brain_tumor  # noqa: F401  (the package's import-time settings, as a stage has them)
    from brain_tumor.training.models import ScratchCNN, TransferNet, load_imagenet_backbone, resolve_weights

    last = torch.channels_last
    out["sin"] = digest(torch.sin(torch.arange(1_000_000, dtype=torch.float32)))  # the shared probe's Adam input
    for name, kw in (("default", {}), ("foreach", {"foreach": True}), ("fused", {"fused": True})):
        p = torch.nn.Parameter(exact_gradient(torch, 1_000_000, 9) * 3)
        opt = torch.optim.Adam([p], lr=1e-3, **kw)
        for i in range(3):
            p.grad = exact_gradient(torch, 1_000_000, i)
            opt.step()
        out[f"adam_exact.{name}"] = digest(p)

    # the scratch CNN's layers and one training step, channels_last as train-scratch runs it
    torch.manual_seed(1)
    model = ScratchCNN(64).to(memory_format=last)
    x = torch.randn(8, 3, 64, 64).contiguous(memory_format=last)
    h = x.clone().requires_grad_()
    y = model.features[0](h)
    y.square().mean().backward()
    out["scratch.conv1_cl.fwd"], out["scratch.conv1_cl.grad_w"] = digest(y), digest(model.features[0].weight.grad)
    h2 = torch.randn(8, 8, 32, 32).contiguous(memory_format=last).requires_grad_()
    y = model.features[3](h2)
    y.square().mean().backward()
    out["scratch.conv2_cl.fwd"], out["scratch.conv2_cl.grad_w"] = digest(y), digest(model.features[3].weight.grad)
    out["scratch.conv2_cl.grad_x"] = digest(h2.grad)
    model.zero_grad()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)
    loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1] * 4))
    loss.backward()
    out["scratch.step.logits_sum"] = digest(loss.reshape(1))
    out["scratch.step.grad_conv1"] = digest(model.features[0].weight.grad)
    out["scratch.step.grad_linear1"] = digest(model.classifier[1].weight.grad)
    opt.step()
    out["scratch.step.weights_after_adam"] = digest(model.classifier[1].weight)

    # MobileNetV2 with ImageNet weights: each block on its own fixed input, in eval and inference mode
    torch.manual_seed(2)
    net = TransferNet("linear", 224, 12)
    load_imagenet_backbone(net, resolve_weights())  # random weights saturate ReLU6 in eval mode: nothing to see
    net = net.eval().to(memory_format=last)
    shapes, t = [], torch.zeros(1, 3, 224, 224)
    with torch.inference_mode():
        for block in net.backbone:
            shapes.append(tuple(t.shape[1:]))
            t = block(t)
        for i, (block, shape) in enumerate(zip(net.backbone, shapes, strict=True)):
            gen = torch.Generator().manual_seed(100 + i)
            inp = torch.randn(4, *shape, generator=gen).contiguous(memory_format=last)
            out[f"mobilenet.block{i:02d}.eval_cl"] = digest(block(inp))
            out[f"mobilenet.block{i:02d}.eval_nchw"] = digest(block(inp.contiguous()))
        imgs = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(7)).contiguous(memory_format=last)
        out["transfer.frozen_prefix_folded"] = digest(net.frozen_prefix()(imgs))
        out["transfer.eval_logits"] = digest(net(imgs))
    # one training step of the 12 fine-tuned blocks and the head, as train-transfer runs it on cached features
    net.train()
    features = net.frozen_prefix()(imgs).detach()
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-4, fused=True)
    loss = torch.nn.functional.cross_entropy(net.trainable_part(features), torch.tensor([0, 1, 0, 1]))
    loss.backward()
    trained = [p for p in net.parameters() if p.requires_grad]
    out["transfer.step.grad_first_trained"] = digest(trained[0].grad)
    out["transfer.step.grad_head"] = digest(net.head[1].weight.grad)
    opt.step()
    out["transfer.step.first_trained_after_adam"] = digest(trained[0])


def ops() -> dict:
    import torch

    if os.environ.get("PROBE_NO_MKLDNN"):
        torch.backends.mkldnn.enabled = False
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    out: dict = {}
    shared_ops(torch, out)
    our_ops(torch, out)
    return out


def cpu() -> str:
    name, flags = "", set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            name = line.split(":", 1)[1].strip()
        elif line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
    wide = sorted(f for f in flags if f.startswith(("avx512f", "amx", "avx512_bf16", "avx2")))
    return f"{name} [{' '.join(wide)}]"


def run_settings() -> dict:
    import torch

    result = {"cpu": cpu(), "torch": torch.__version__, "settings": {}}
    root = Path(__file__).resolve().parents[1]
    for name, env in SETTINGS.items():
        clean = {k: v for k, v in os.environ.items() if k not in CAPPED and k != "BRAIN_TUMOR_REPRODUCIBLE"}
        child = subprocess.run(
            [sys.executable, __file__],
            env=clean | env | {"PROBE_CHILD": "1", "PYTHONPATH": str(root)},
            capture_output=True,
            text=True,
            check=True,
        )
        result["settings"][name] = json.loads(child.stdout)
    return result


def compare(mine: dict, ref: dict) -> None:
    print(f"this CPU: {mine['cpu']}\nreference: {ref['cpu']}")
    for name, got in mine["settings"].items():
        want = ref["settings"].get(name)
        if want is None:
            continue
        common = [op for op in got if op in want]
        diff = [op for op in common if want[op] != got[op]]
        listed = f"; differ: {', '.join(diff)}" if diff else ""
        print(f"{name:13s} {len(common) - len(diff)}/{len(common)} ops identical{listed}")


def main() -> None:
    if os.environ.get("PROBE_CHILD"):
        print(json.dumps(ops()))
        return
    mine = run_settings()
    if "--compare" in sys.argv:
        compare(mine, json.loads(Path(sys.argv[sys.argv.index("--compare") + 1]).read_text()))
    else:
        print(json.dumps(mine, indent=1))


if __name__ == "__main__":
    main()
