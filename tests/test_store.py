"""spatialkit.suite.store: pack a checkpoint store into one file, unpack it elsewhere, nothing lost or forged."""

import io
import json
import re
import tarfile

import pytest
import torch

from spatialkit.common import checkpoints
from spatialkit.suite import cli, store


def _save(root, name, value=1.0):
    """A finished checkpoint KIND-KEY in the store at ``root`` (the checkpoint module's own writer)."""
    key = name.rsplit("-", 1)[1]
    return checkpoints.save(root / "checkpoints" / name, {"w": torch.full((3,), value)}, {"c": value}, {"m": 1}, key)


def _members(path):
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def _write_tar(path, members):
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_a_packed_organism_loads_in_another_store_without_training(tmp_path, monkeypatch):
    from spatialkit.models.organism import load_or_train, preset
    from spatialkit.models.organism.model import state_dict_sha256

    cfg = preset("smoke")
    monkeypatch.setenv("SPATIALKIT_CACHE", str(tmp_path / "teacher"))
    trained = load_or_train(cfg, progress=False)
    packed = store.pack(tmp_path / "models.tar")
    assert len(packed) == 2 and {n.split("-")[0] for n in packed} == {"organism", "vision"}, packed
    monkeypatch.setenv("SPATIALKIT_CACHE", str(tmp_path / "student"))
    with pytest.raises(checkpoints.CheckpointError, match="allow_train"):
        load_or_train(cfg, allow_train=False)  # an empty store: it would have to train
    assert store.unpack(tmp_path / "models.tar") == {"added": sorted(packed), "present": [], "refused": []}
    loaded = load_or_train(cfg, allow_train=False)
    assert state_dict_sha256(loaded.model) == state_dict_sha256(trained.model)
    assert store.unpack(tmp_path / "models.tar")["present"] == sorted(packed)  # again: nothing replaced


def test_a_tampered_checkpoint_is_refused_and_the_others_added(tmp_path):
    _save(tmp_path / "a", "organism-00000000000000aa", 1.0)
    _save(tmp_path / "a", "organism-00000000000000bb", 2.0)
    store.pack(tmp_path / "m.tar", root=tmp_path / "a", echo=lambda line: None)
    members = _members(tmp_path / "m.tar")
    weights = "checkpoints/organism-00000000000000bb/model.safetensors"
    members[weights] = members[weights][:-4] + b"\0\0\0\0"
    _write_tar(tmp_path / "bad.tar", members)
    said = []
    done = store.unpack(tmp_path / "bad.tar", root=tmp_path / "b", echo=said.append)
    assert done == {"added": ["organism-00000000000000aa"], "present": [], "refused": ["organism-00000000000000bb"]}
    corrupt = r"  refused organism-0+bb: model.safetensors sha256 \w+ != manifest \w+ \(corrupt\)"
    assert re.fullmatch(corrupt, said[0]), said
    left = sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir())
    assert left == [".locks", "organism-00000000000000aa"], left  # no staging folder, no refused checkpoint
    assert store.check_folder(tmp_path / "b" / "checkpoints" / "organism-00000000000000aa") is None
    # one checkpoint's files filed under another key: its manifest names its own key, so it is refused
    renamed = {name.replace("00000000000000aa", "00000000000000cc"): data for name, data in members.items()
               if "00000000000000aa" in name}
    _write_tar(tmp_path / "renamed.tar", renamed)
    said.clear()
    assert store.unpack(tmp_path / "renamed.tar", root=tmp_path / "b", echo=said.append)["refused"] == [
        "organism-00000000000000cc"]
    assert "manifest key 00000000000000aa != requested 00000000000000cc" in said[0], said


@pytest.mark.parametrize("bad", ["../evil/model.safetensors", "checkpoints/organism-00000000000000aa/run.sh",
                                 "checkpoints/../../x/manifest.json", "checkpoints/Not A Key/config.json",
                                 "link"])
def test_a_file_with_anything_but_checkpoint_files_is_refused_whole(tmp_path, bad):
    _save(tmp_path / "a", "organism-00000000000000aa")
    store.pack(tmp_path / "m.tar", root=tmp_path / "a", echo=lambda line: None)
    members = _members(tmp_path / "m.tar")
    with tarfile.open(tmp_path / "bad.tar", "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo(bad)
        if bad == "link":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        else:
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(store.StoreError, match="is not a checkpoint file.*nothing was unpacked"):
        store.unpack(tmp_path / "bad.tar", root=tmp_path / "b")
    assert not (tmp_path / "b").exists()
    assert not (tmp_path / "evil").exists() and not (tmp_path / "x").exists()


def test_unpack_keeps_a_finished_checkpoint_and_replaces_an_unfinished_one(tmp_path):
    _save(tmp_path / "a", "organism-00000000000000aa", 1.0)
    _save(tmp_path / "a", "organism-00000000000000bb", 1.0)
    store.pack(tmp_path / "m.tar", root=tmp_path / "a", echo=lambda line: None)
    mine = _save(tmp_path / "b", "organism-00000000000000aa", 5.0)  # trained here: other weights, same key
    mine_weights = (mine / "model.safetensors").read_bytes()
    killed = tmp_path / "b" / "checkpoints" / "organism-00000000000000bb"
    killed.mkdir()
    (killed / "model.safetensors").write_bytes(b"half written")  # no manifest: a training killed midway
    done = store.unpack(tmp_path / "m.tar", root=tmp_path / "b")
    assert done == {"added": ["organism-00000000000000bb"], "present": ["organism-00000000000000aa"], "refused": []}
    assert (mine / "model.safetensors").read_bytes() == mine_weights
    assert store.check_folder(killed) is None


def test_pack_leaves_out_a_corrupt_checkpoint_and_an_empty_store_writes_nothing(tmp_path):
    _save(tmp_path / "a", "organism-00000000000000aa")
    broken = _save(tmp_path / "a", "organism-00000000000000bb")
    (broken / "config.json").write_text("{}")
    said = []
    assert store.pack(tmp_path / "m.tar", root=tmp_path / "a", echo=said.append) == ["organism-00000000000000aa"]
    corrupt = r"  left out organism-0+bb: config.json sha256 \w+ != manifest \w+ \(corrupt\)"
    assert len(said) == 1 and re.fullmatch(corrupt, said[0]), said
    info = json.loads(_members(tmp_path / "m.tar")[store.INFO])
    assert info["checkpoints"] == ["organism-00000000000000aa"] and info["torch"] == torch.__version__
    with pytest.raises(store.StoreError, match="it is a folder; give a file name"):
        store.pack(tmp_path / "a", root=tmp_path / "a")
    with pytest.raises(store.StoreError, match="nothing to pack"):
        store.pack(tmp_path / "empty.tar", root=tmp_path / "nothing")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "m.tar"]  # no file, no temporary left


def test_cli(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SPATIALKIT_CACHE", str(tmp_path / "a"))
    _save(tmp_path / "a", "organism-00000000000000aa")
    assert cli.main(["store", "pack"]) == 2
    assert "store pack: FILE is required" in capsys.readouterr().err
    assert cli.main(["store", "list"]) == 0
    assert "organism-00000000000000aa" in capsys.readouterr().out
    assert cli.main(["store", "pack", str(tmp_path / "m.tar")]) == 0
    monkeypatch.setenv("SPATIALKIT_CACHE", str(tmp_path / "b"))
    assert cli.main(["store", "unpack", str(tmp_path / "m.tar")]) == 0
    assert "1 added, 0 already there, 0 refused" in capsys.readouterr().out
    assert cli.main(["store", "unpack", str(tmp_path / "missing.tar")]) == 1
    assert "not a readable tar file" in capsys.readouterr().err
    (tmp_path / "garbage.tar").write_text("not a tar file")
    assert cli.main(["store", "unpack", str(tmp_path / "garbage.tar")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("spatialkit: error: ") and "not a readable tar file" in err and err.count("\n") == 1, err
