"""The checkpoint store: round trip, atomicity, corruption and mismatch detection, load-or-train."""

import json

import pytest
import torch

from spatialkit.common import checkpoints
from spatialkit.common.checkpoints import CheckpointError


def _state(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(4, 3, generator=g), "b": torch.randn(3, generator=g)}


def test_cache_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("SPATIALKIT_CACHE", str(tmp_path))
    assert checkpoints.cache_dir() == tmp_path
    monkeypatch.delenv("SPATIALKIT_CACHE")
    assert str(checkpoints.cache_dir()).endswith(".cache/spatialkit")


def test_key_depends_on_config_and_code():
    k = checkpoints.config_key({"a": 1, "b": [1, 2]}, "v1")
    assert k == checkpoints.config_key({"b": [1, 2], "a": 1}, "v1")  # key order does not matter
    assert k != checkpoints.config_key({"a": 2, "b": [1, 2]}, "v1")
    assert k != checkpoints.config_key({"a": 1, "b": [1, 2]}, "v2")


def test_round_trip_and_manifest(tmp_path):
    folder = checkpoints.save(tmp_path / "x", _state(), {"a": 1}, {"acc": 0.5}, key="k")
    state, config, metrics = checkpoints.load(folder, {"a": 1}, key="k")
    assert all(torch.equal(state[n], _state()[n]) for n in state)
    assert config == {"a": 1} and metrics == {"acc": 0.5}
    manifest = json.loads((folder / "manifest.json").read_text())
    assert set(manifest["files"]) == set(checkpoints.FILES)
    assert not list(folder.glob("*.tmp"))


def test_missing_manifest_means_absent(tmp_path):
    folder = checkpoints.save(tmp_path / "x", _state(), {"a": 1}, {}, key="k")
    (folder / "manifest.json").unlink()  # what a run killed before the last write leaves behind
    assert checkpoints.load(folder, {"a": 1}, key="k") is None


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_corrupt_files_are_detected(tmp_path, damage):
    folder = checkpoints.save(tmp_path / "x", _state(), {"a": 1}, {}, key="k")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    if damage == "truncate":
        weights.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        weights.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    else:
        weights.unlink()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        checkpoints.load(folder, {"a": 1}, key="k")


def test_mismatched_config_is_detected(tmp_path):
    folder = checkpoints.save(tmp_path / "x", _state(), {"a": 1}, {}, key="k")
    with pytest.raises(CheckpointError, match="config differs"):
        checkpoints.load(folder, {"a": 2}, key="k")
    with pytest.raises(CheckpointError, match="key"):
        checkpoints.load(folder, {"a": 1}, key="other")


def test_load_or_train_trains_once_then_loads(tmp_path):
    calls = []

    def train():
        calls.append(1)
        return _state(len(calls)), {"n": len(calls)}

    s1, m1, folder = checkpoints.load_or_train("toy", {"a": 1}, "v", train, root=tmp_path)
    s2, m2, _ = checkpoints.load_or_train("toy", {"a": 1}, "v", train, root=tmp_path)
    assert len(calls) == 1 and m1 == m2 == {"n": 1} and torch.equal(s1["w"], s2["w"])
    # a different config or code version is a different checkpoint
    checkpoints.load_or_train("toy", {"a": 1}, "v2", train, root=tmp_path)
    assert len(calls) == 2


def test_corrupt_checkpoint_is_retrained_or_refused(tmp_path):
    def train():
        return _state(), {"ok": True}

    _, _, folder = checkpoints.load_or_train("toy", {"a": 1}, "v", train, root=tmp_path)
    (folder / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="allow_train=False"):
        checkpoints.load_or_train("toy", {"a": 1}, "v", train, root=tmp_path, allow_train=False)
    logs = []
    state, metrics, _ = checkpoints.load_or_train("toy", {"a": 1}, "v", train, root=tmp_path, log=logs.append)
    assert "retraining" in logs[0] and torch.equal(state["w"], _state()["w"])
    assert checkpoints.load(folder, {"a": 1}, checkpoints.config_key({"a": 1}, "v")) is not None


def test_failed_training_leaves_nothing_loadable(tmp_path):
    def boom():
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        checkpoints.load_or_train("toy", {"a": 1}, "v", boom, root=tmp_path)
    with pytest.raises(CheckpointError, match="training is disabled"):
        checkpoints.load_or_train("toy", {"a": 1}, "v", boom, root=tmp_path, allow_train=False)


def test_crash_while_saving_leaves_no_valid_checkpoint(tmp_path, monkeypatch):
    def failing_dump(obj, *a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoints, "_write_text", lambda path, text: failing_dump(None))
    with pytest.raises(OSError):
        checkpoints.save(tmp_path / "x", _state(), {"a": 1}, {}, key="k")
    assert checkpoints.load(tmp_path / "x", {"a": 1}, key="k") is None
