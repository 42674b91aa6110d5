"""recblr.resume on its own: atomic keep-two writes, fallback past damaged files, exact RNG round trips."""

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from recblr.errors import RecblrError
from recblr.resume import (
    KEEP,
    capture_rng,
    checkpoint_files,
    data_fingerprint,
    load_resume,
    numpy_generator,
    numpy_state,
    restore_rng,
    save_resume,
    settings_differences,
)


def _state(v: float) -> dict:
    return {"w": torch.full((64,), v), "step": int(v), "history": [{"loss": v}], "name": "x"}


def test_keeps_the_last_two_and_loads_the_newest(tmp_path: Path):
    for i in range(1, 5):
        save_resume(tmp_path, _state(float(i)), counter=i * 10)
    files = checkpoint_files(tmp_path)
    assert [f.name for f in files] == ["resume-0000000030.pt", "resume-0000000040.pt"] and KEEP == 2
    state, path = load_resume(tmp_path)
    assert path == files[-1] and state["step"] == 4 and torch.equal(state["w"], torch.full((64,), 4.0))
    assert not list(tmp_path.glob("*.tmp"))
    # plain torch.load with weights_only reads it like every other checkpoint
    raw = torch.load(files[-1], weights_only=True)
    assert raw["format"] == "recblr-resume" and raw["state"]["history"] == [{"loss": 4.0}]


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_damaged_newest_falls_back_to_the_previous_and_says_so(tmp_path: Path, damage: str):
    save_resume(tmp_path, _state(1.0), counter=1)
    newest = save_resume(tmp_path, _state(2.0), counter=2)
    raw = bytearray(newest.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    elif damage == "flip":  # inside the tensor data: torch itself loads this without complaint
        at = bytes(raw).find(torch.full((64,), 2.0).numpy().tobytes())
        raw[at + 5] ^= 0x40
    else:
        raw = bytearray(b"not a checkpoint")
    newest.write_bytes(bytes(raw))
    said: list[str] = []
    state, path = load_resume(tmp_path, said.append)
    assert state["step"] == 1 and path.name == "resume-0000000001.pt"
    assert len(said) == 1 and newest.name in said[0] and "resuming from the previous checkpoint" in said[0]


def test_no_valid_checkpoint_is_one_clear_error(tmp_path: Path):
    with pytest.raises(RecblrError, match="no resumable checkpoint there"):
        load_resume(tmp_path)
    (tmp_path / "resume-0000000001.pt").write_bytes(b"x")
    with pytest.raises(RecblrError, match="no valid checkpoint there"):
        load_resume(tmp_path)


def test_a_temp_file_left_by_a_killed_writer_is_ignored_then_removed(tmp_path: Path):
    save_resume(tmp_path, _state(1.0), counter=1)
    (tmp_path / ".resume-abc.tmp").write_bytes(b"half a checkpoint")
    assert load_resume(tmp_path)[0]["step"] == 1
    save_resume(tmp_path, _state(2.0), counter=2)
    assert not list(tmp_path.glob("*.tmp"))


def test_rng_states_round_trip_through_a_checkpoint(tmp_path: Path):
    gen = torch.Generator().manual_seed(3)
    torch.manual_seed(1)
    random.seed(2)
    np.random.seed(4)
    rng = np.random.default_rng(9)
    rng.random(5)
    save_resume(tmp_path, {"rng": capture_rng(gen), "numpy": numpy_state(rng)}, counter=1)
    draws = lambda g, r: (torch.rand(3), random.random(), np.random.rand(), torch.rand(2, generator=g), r.random(2))  # noqa: E731
    first = draws(gen, rng)
    state, _ = load_resume(tmp_path)
    restore_rng(state["rng"], gen)
    again = draws(gen, numpy_generator(state["numpy"]))
    for a, b in zip(first, again, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_data_fingerprint_sees_any_change():
    items, users = ["[PAD]", "a", "b"], ["u1", "u2"]

    def fp(item_ids, user_ids, seqs):
        offsets = np.concatenate([[0], np.cumsum([len(s) for s in seqs])])
        return data_fingerprint(item_ids, user_ids, np.concatenate(seqs), offsets)

    seqs = [np.array([1, 2, 1]), np.array([2, 2, 1])]
    base = fp(items, users, seqs)
    assert base == fp(list(items), list(users), [s.copy() for s in seqs])
    assert base != fp(items, users, [seqs[0], np.array([2, 2, 2])])
    assert base != fp(items, users, [np.array([1, 2]), np.array([1, 2, 2, 1])])  # same items, other cut
    assert base != fp(items, ["u2", "u1"], seqs)
    assert base != fp(["[PAD]", "ab", ""], users, seqs)


def test_settings_differences_name_what_differs_and_allow_run_length_changes():
    saved = {"dim": 64, "lr": 1e-3, "epochs": 10, "patience": 3, "seed": 1}
    assert settings_differences(saved, {"epochs": 50, "patience": 9, "dim": 64}) == []
    assert settings_differences(saved, {"dim": 32, "lr": 1e-3, "seed": 2}) == [
        "--dim 32 (checkpoint: 64)", "--seed 2 (checkpoint: 1)"]


def test_sparse_embeddings_run_resumed_from_an_epoch_end_is_bitwise_identical(small_inter: Path, tmp_path: Path):
    """The combined optimiser (SparseAdam for the item table, Adam for the rest) goes through the
    resumable checkpoint whole: stopping after epoch 1 and resuming gives the uninterrupted run."""
    from recblr.config import ModelConfig, TrainConfig
    from recblr.data import load_dataset
    from recblr.train import train

    data = load_dataset(str(small_inter))
    model_cfg = ModelConfig(n_items=data.n_items, dim=8)
    cfg = dict(max_len=8, batch_size=64, loss="sampled", negatives=8, sparse_embeddings=True, patience=10, seed=3)
    whole = train(data, model_cfg, TrainConfig(epochs=2, **cfg))
    train(data, model_cfg, TrainConfig(epochs=1, **cfg), checkpoint_dir=tmp_path)
    state, _ = load_resume(tmp_path, say=lambda _: None)
    assert set(state["optimizer"]) == {"dense", "sparse"}
    resumed = train(data, model_cfg, TrainConfig(epochs=2, **cfg), resume=state)
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in whole.history]
    for k, v in whole.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[k], v), k
