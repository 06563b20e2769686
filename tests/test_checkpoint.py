"""Tests for graphnn.train.checkpoint: round trips, corruption detection and atomic writes."""

import io
import os
import subprocess
import sys
import threading
import zipfile

import numpy as np
import pytest

from graphnn import files
from graphnn.errors import CheckpointError
from graphnn.train import checkpoint as ck


def _arrays():
    rng = np.random.default_rng(0)
    return {
        "W1": rng.standard_normal((3, 4)).astype(np.float32),
        "b1": rng.standard_normal(4),
        "idx": np.arange(-3, 5, dtype=np.int64),
        "opt/m/W1": np.full((3, 4), 0.25, dtype=np.float32),
        "a.b.npy": np.array(7.5),  # odd name and 0-d array
        "meta": np.zeros((0, 2)),  # collides with nothing: names live in the header
    }


def test_round_trip_preserves_dtype_bits_names_and_meta(tmp_path):
    path = tmp_path / "ckpt.npz"
    arrays = _arrays()
    meta = {"step": 12, "lr": 0.1, "tags": ["a", "b"], "nested": {"x": [1, {"y": None}]}}
    ck.save_checkpoint(path, arrays=arrays, meta=meta)
    got, got_meta = ck.load_checkpoint(path)
    assert list(got) == list(arrays)
    for name, arr in arrays.items():
        assert got[name].dtype == arr.dtype, name
        assert got[name].shape == arr.shape, name
        assert got[name].tobytes() == arr.tobytes(), name
    assert got_meta == meta


def test_rng_state_round_trip(tmp_path):
    rng = np.random.default_rng(1234)
    rng.random(17)
    path = tmp_path / "ckpt.npz"
    ck.save_checkpoint(path, arrays={}, meta={"rng": rng.bit_generator.state})
    _, meta = ck.load_checkpoint(path)
    restored = np.random.default_rng()
    restored.bit_generator.state = meta["rng"]
    np.testing.assert_array_equal(restored.random(100), rng.random(100))
    assert restored.integers(0, 2**62, 10).tolist() == rng.integers(0, 2**62, 10).tolist()


def test_truncated_file_names_path(tmp_path):
    path = tmp_path / "ckpt.npz"
    ck.save_checkpoint(path, arrays=_arrays(), meta={"step": 1})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated") as exc:
        ck.load_checkpoint(path)
    assert str(path) in str(exc.value)


def test_random_bytes_file(tmp_path):
    path = tmp_path / "ckpt.npz"
    path.write_bytes(np.random.default_rng(5).bytes(4096))
    with pytest.raises(CheckpointError, match="not a graphnn checkpoint"):
        ck.load_checkpoint(path)


def test_foreign_npz_without_meta(tmp_path):
    path = tmp_path / "ckpt.npz"
    np.savez(path, W=np.ones(3))
    with pytest.raises(CheckpointError, match="'header'"):
        ck.load_checkpoint(path)


def test_flipped_byte_in_array_payload(tmp_path):
    path = tmp_path / "ckpt.npz"
    payload = np.arange(1000, dtype=np.float64) + 0.5
    ck.save_checkpoint(path, arrays={"W": payload}, meta={})
    data = bytearray(path.read_bytes())
    start = data.find(payload.tobytes())
    assert start > 0
    data[start + 4000] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=str(path)):
        ck.load_checkpoint(path)


def test_tampered_array_with_valid_zip_fails_digest(tmp_path):
    # Rebuild the zip with one payload byte changed: CRCs stay valid, only the digest can tell.
    path = tmp_path / "ckpt.npz"
    ck.save_checkpoint(path, arrays={"W": np.arange(100.0)}, meta={"step": 3})
    buf = io.BytesIO()
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(buf, "w") as dst:
        for info in src.infolist():
            raw = bytearray(src.read(info))
            if info.filename == "W.npy":  # arrays are stored under their names
                raw[-1] ^= 0x40
            dst.writestr(info.filename, bytes(raw))
    path.write_bytes(buf.getvalue())
    with pytest.raises(CheckpointError, match="digest mismatch"):
        ck.load_checkpoint(path)


def test_tampered_meta_fails_digest(tmp_path):
    path = tmp_path / "ckpt.npz"
    ck.save_checkpoint(path, arrays={"W": np.ones(2)}, meta={"step": 3})
    with np.load(path) as npz:
        entries = {k: npz[k] for k in npz.files}
    entries["meta"] = np.frombuffer(b'{"step": 4}', dtype=np.uint8)
    np.savez(path, **entries)
    with pytest.raises(CheckpointError, match="digest mismatch"):
        ck.load_checkpoint(path)


def test_missing_file(tmp_path):
    path = tmp_path / "nope" / "ckpt.npz"
    with pytest.raises(CheckpointError, match="does not exist") as exc:
        ck.load_checkpoint(path)
    assert str(path) in str(exc.value)


def test_unserializable_meta_writes_nothing(tmp_path):
    path = tmp_path / "ckpt.npz"
    with pytest.raises(CheckpointError, match="meta is not JSON"):
        ck.save_checkpoint(path, arrays={}, meta={"f": object()})
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("fail", ["replace", "fsync"])
def test_failed_save_keeps_previous_checkpoint_and_no_temp(tmp_path, monkeypatch, fail):
    path = tmp_path / "ckpt.npz"
    ck.save_checkpoint(path, arrays={"W": np.ones(3)}, meta={"step": 1})

    def boom(*args, **kwargs):
        raise OSError(f"simulated crash in os.{fail}")

    monkeypatch.setattr(os, fail, boom)
    with pytest.raises(OSError, match="simulated crash"):
        ck.save_checkpoint(path, arrays={"W": np.zeros(3)}, meta={"step": 2})
    monkeypatch.undo()
    arrays, meta = ck.load_checkpoint(path)
    assert meta == {"step": 1}
    np.testing.assert_array_equal(arrays["W"], np.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.npz"]


def test_concurrent_writers_never_leave_partial_file(tmp_path):
    path = tmp_path / "state.bin"
    payloads = [bytes([i]) * 200_000 for i in range(4)]
    threads = [
        threading.Thread(target=lambda p=p: [files.atomic_write_bytes(path, p) for _ in range(10)])
        for p in payloads
    ]
    for t in threads:
        t.start()
    seen = set()
    while any(t.is_alive() for t in threads):
        if path.exists():
            seen.add(path.read_bytes() in payloads)
    for t in threads:
        t.join()
    assert seen <= {True}
    assert path.read_bytes() in payloads
    assert [p.name for p in tmp_path.iterdir()] == ["state.bin"]


def test_atomic_write_text(tmp_path):
    path = tmp_path / "c.json"
    files.atomic_write_text(path, "héllo\n")
    assert path.read_text(encoding="utf-8") == "héllo\n"


def test_latest_checkpoint_picks_highest_step(tmp_path):
    assert ck.latest_checkpoint(tmp_path) is None
    assert ck.latest_checkpoint(tmp_path / "missing") is None
    for step in (5, 120, 30):
        (tmp_path / ck.checkpoint_name(step)).write_bytes(b"x")
    (tmp_path / "ckpt-999999999999.npz.tmp").write_bytes(b"x")
    (tmp_path / ".ckpt-000000999.npz.abc.tmp").write_bytes(b"x")
    (tmp_path / "notes.txt").write_bytes(b"x")
    assert ck.checkpoint_name(120) == "ckpt-000000120.npz"
    assert ck.latest_checkpoint(tmp_path) == tmp_path / "ckpt-000000120.npz"
    (tmp_path / "ckpt-1000000000.npz").write_bytes(b"x")  # more digits than the padding
    assert ck.latest_checkpoint(tmp_path).name == "ckpt-1000000000.npz"


def test_the_next_write_removes_temp_files_of_killed_writers_only(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    pid = int(dead.stdout)
    killed = tmp_path / f".ckpt-000000005.npz.{pid}.abcd1234.tmp"  # its writer is gone
    live = tmp_path / f".ckpt-000000006.npz.{os.getppid()}.abcd1234.tmp"  # a writer still running
    foreign = tmp_path / ".notes.txt.tmp"  # not graphnn's naming
    for path in (killed, live, foreign):
        path.write_bytes(b"half a checkpoint")
    ck.save_checkpoint(tmp_path / ck.checkpoint_name(7), arrays={"W": np.ones(2)}, meta={})
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([live.name, foreign.name, ck.checkpoint_name(7)])


def test_a_write_names_its_temp_file_after_its_process(tmp_path, monkeypatch):
    seen = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (seen.append(src), real(src, dst)))
    files.atomic_write_text(tmp_path / "a.json", "{}")
    assert os.path.basename(seen[0]).startswith(f".a.json.{os.getpid()}.")
