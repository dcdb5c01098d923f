import re
import shutil

import pytest
import torch

from brain_tumor.core.errors import PipelineError
from brain_tumor.training.models import (
    ScratchCNN,
    TransferNet,
    load_imagenet_backbone,
    resolve_weights,
    verified,
    weights_candidates,
)


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
