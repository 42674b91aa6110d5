import pickle
from pathlib import Path

import pytest
import torch

from recblr.checkpoint import load_checkpoint, save_checkpoint
from recblr.config import ModelConfig
from recblr.errors import RecblrError
from recblr.model import RecBLR


def _save(path: Path) -> RecBLR:
    model = RecBLR(ModelConfig(n_items=4, dim=8))
    save_checkpoint(path, model, ["[PAD]", "a", "b", "c", "d"], ["u"], {"max_len": 50}, {"x": 1.0}, {})
    return model


def test_round_trip(tmp_path: Path):
    model = _save(tmp_path / "m.pt")
    ckpt = load_checkpoint(tmp_path / "m.pt")
    assert ckpt.config == model.cfg and ckpt.item_ids[1] == "a" and ckpt.metrics == {"x": 1.0}
    assert not ckpt.model.training
    for k, v in model.state_dict().items():
        assert torch.equal(ckpt.model.state_dict()[k], v)
    assert not list(tmp_path.glob("*.tmp"))


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.parametrize(
    "content, message",
    [
        (b"not a checkpoint at all", "not a readable recblr checkpoint"),
        (pickle.dumps(Evil()), "not a readable recblr checkpoint"),
    ],
)
def test_corrupt_or_foreign_files(tmp_path: Path, content: bytes, message: str):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(RecblrError, match=message):
        load_checkpoint(path)


def test_foreign_torch_file_and_wrong_version(tmp_path: Path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(RecblrError, match="not a recblr checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    _save(tmp_path / "m.pt")
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, tmp_path / "v99.pt")
    with pytest.raises(RecblrError, match="format version 99"):
        load_checkpoint(tmp_path / "v99.pt")
    payload["format_version"] = 1
    del payload["state_dict"]["item_emb.weight"]
    torch.save(payload, tmp_path / "broken.pt")
    with pytest.raises(RecblrError, match="damaged recblr checkpoint"):
        load_checkpoint(tmp_path / "broken.pt")


def test_missing_file(tmp_path: Path):
    with pytest.raises(RecblrError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nope.pt")


def test_truncated_file(tmp_path: Path):
    _save(tmp_path / "m.pt")
    data = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "t.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(RecblrError, match="not a readable recblr checkpoint"):
        load_checkpoint(tmp_path / "t.pt")
