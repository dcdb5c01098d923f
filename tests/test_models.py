import re
import shutil

import numpy as np
import pytest
import torch

from brain_tumor.core.errors import PipelineError
from brain_tumor.core.resize import MEAN, STD, standardise
from brain_tumor.training.models import (
    ScratchCNN,
    TransferNet,
    build_network,
    load_imagenet_backbone,
    resolve_weights,
    verified,
    weights_candidates,
)
from brain_tumor.training.standardisation import HeadHistogram


@pytest.mark.parametrize("size", [32, 64, 224])
def test_scratch_cnn_first_linear_follows_image_size(size):
    model = ScratchCNN(size)
    assert model.classifier[1].in_features == 16 * (size // 4) ** 2
    assert model(torch.zeros(2, 3, size, size)).shape == (2, 2)


def test_weights_resolve_offline_and_load():
    path = resolve_weights()
    model = TransferNet("linear")
    load_imagenet_backbone(model, path)
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 2)


def test_weights_with_wrong_sha256_are_refused(tmp_path):
    bad = tmp_path / "mobilenet_v2-b0353104.pth"
    shutil.copy(resolve_weights(), bad)
    with open(bad, "r+b") as f:  # flip one byte
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    expected = r"is not the expected b03531047ffacf1e\.\.\.; refusing to load$"
    refusal = rf"^{re.escape(str(bad))}: sha256 [0-9a-f]{{16}}\.\.\. {expected}"
    with pytest.raises(PipelineError, match=refusal):
        resolve_weights([bad])
    with pytest.raises(PipelineError, match=refusal):
        verified(bad)


def test_torch_home_cache_comes_first(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert weights_candidates()[0] == tmp_path / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth"


@pytest.mark.parametrize("head,features", [("linear", 1280), ("mlp", 1280 * 7 * 7)])
def test_transfer_heads_and_frozen_backbone(head, features):
    model = TransferNet(head, 224)
    assert model.prefix_output(torch.zeros(1, 3, 224, 224)).shape == (1, features)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("head.") for n in trainable)
    model.train()
    assert model.head.training
    assert not any(m.training for m in model.backbone.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert all(k.split(".")[0] in ("backbone", "head") for k in model.state_dict())


def test_unfreeze_last_trains_last_blocks():
    model = TransferNet("linear", unfreeze_last=2)
    trainable = {n.split(".")[1] for n, p in model.named_parameters() if p.requires_grad and n.startswith("backbone.")}
    assert trainable == {"17", "18"}
    with pytest.raises(PipelineError, match=r"^train_transfer.unfreeze_last: 40 is not between 0 and 19$"):
        TransferNet("linear", unfreeze_last=40)


def _scans(*heads: np.ndarray) -> torch.Tensor:
    """Greyscale uint8 heads -> the normalised RGB batch a model takes."""
    batch = np.stack([np.repeat(h[..., None], 3, -1) for h in heads])
    return standardise(torch.from_numpy(batch).permute(0, 3, 1, 2).float())


def test_head_histogram_is_the_same_under_any_increasing_remap_of_the_head():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:48, :48]
    head = (yy - 24) ** 2 + (xx - 24) ** 2 < 20**2
    scan = np.where(head, rng.integers(30, 120, (48, 48)), 0).astype(np.uint8)
    brighter = np.where(head, 2 * scan.astype(int) + 11, 0).astype(np.uint8)  # another window: gain and offset
    out = HeadHistogram()(_scans(scan, brighter, scan.T))
    assert torch.equal(out[0], out[1])
    assert not torch.equal(out[0], out[2])  # it keeps where things are
    grey = out[0, 0] * STD[0] + MEAN[0]  # back to [0, 1]
    assert torch.equal(out[0, 0], out[0, 1]) and torch.equal(out[0, 1], out[0, 2])
    assert torch.all(grey[~torch.from_numpy(head)] == 0)  # the background stays black
    assert grey.max() == 1 and grey[torch.from_numpy(head)].min() > 0  # the head spans (0, 1]
    assert torch.equal(HeadHistogram()(_scans(np.zeros((48, 48), np.uint8))), _scans(np.zeros((48, 48), np.uint8)))


@pytest.mark.parametrize("kind", ["scratch", "transfer"])
def test_head_standardisation_is_the_models_first_layer_and_adds_no_weights(kind):
    record = {"kind": kind, "image_size": 32, "head": "linear", "unfreeze_last": 2, "tta_flip": False}
    plain, standardised = (build_network(record | {"head_standardisation": s}) for s in ("none", "histogram"))
    assert plain.state_dict().keys() == standardised.state_dict().keys()
    if kind == "transfer":
        load_imagenet_backbone(plain, resolve_weights())  # a random backbone's features die out: all inputs alike
    standardised.load_state_dict(plain.state_dict())
    scan = np.where(np.add.outer(np.arange(32), np.arange(32)) % 7 > 1, 90, 0).astype(np.uint8)
    x = _scans(scan, (scan * 1.5).astype(np.uint8))
    with torch.no_grad():
        assert torch.equal(standardised.eval()(x)[0], standardised(x)[1])  # one window or another: one verdict
        assert not torch.equal(plain.eval()(x)[0], plain(x)[1])  # without it the window shows
        assert torch.equal(standardised(x), plain(HeadHistogram()(x)))
