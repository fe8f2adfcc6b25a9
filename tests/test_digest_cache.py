"""Digests remembered across runs (ckpttool/io/hashing.py): a hit only for the very same bytes, never a stale one."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from ckpttool.io import hashing
from ckpttool.io.write import save
from ckpttool.surgery.average import average

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh cache folder; files count as settled as soon as they are written; the process cache emptied."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("CKPT_CACHE_DIR", str(folder))
    monkeypatch.setattr(hashing, "SETTLED_NS", 0)
    monkeypatch.setattr(hashing, "_CACHE", {})
    return folder / "digests"


def forget_process_cache(monkeypatch):
    monkeypatch.setattr(hashing, "_CACHE", {})


def no_hashing(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("hashed a file whose digest is remembered")

    monkeypatch.setattr(hashing, "_update", refuse)


def test_a_later_run_gets_the_digest_without_reading_the_file(tmp_path, cache, monkeypatch):
    p = tmp_path / "w.pth"
    p.write_bytes(b"weights" * 1000)
    first = hashing.digest(p)
    assert first == hashlib.sha256(b"weights" * 1000).hexdigest()
    assert len(os.listdir(cache)) == 1
    forget_process_cache(monkeypatch)
    no_hashing(monkeypatch)
    assert hashing.digest(p) == first


def test_another_process_reads_the_same_entry(tmp_path, cache):
    p = tmp_path / "w.pth"
    p.write_bytes(b"x" * 4096)
    ours = hashing.digest(p)
    code = ("import sys; from ckpttool.io import hashing; hashing._update = None; "  # a hash would fail
            "print(hashing.digest(sys.argv[1]))")
    out = subprocess.run([sys.executable, "-c", code, str(p)], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": ROOT}).stdout.strip()
    assert out == ours


def test_same_size_rewrite_with_mtime_set_back_is_a_miss(tmp_path, cache, monkeypatch):
    p = tmp_path / "w.pth"
    p.write_bytes(b"one!")
    st = os.stat(p)
    assert hashing.digest(p) == hashlib.sha256(b"one!").hexdigest()
    p.write_bytes(b"two!")                               # same size, same inode
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))     # mtime put back: only ctime tells
    forget_process_cache(monkeypatch)
    assert hashing.digest(p) == hashlib.sha256(b"two!").hexdigest()
    assert hashing.digest(p) == hashlib.sha256(b"two!").hexdigest()  # and the process cache follows


def test_a_file_changed_just_before_hashing_is_not_remembered(tmp_path, cache, monkeypatch):
    monkeypatch.setattr(hashing, "SETTLED_NS", 10**12)  # every file is "just written"
    p = tmp_path / "w.pth"
    p.write_bytes(b"fresh")
    assert hashing.digest(p) == hashlib.sha256(b"fresh").hexdigest()
    assert not cache.exists() or not os.listdir(cache)
    assert not hashing._CACHE


def test_a_file_changing_while_hashed_is_not_remembered(tmp_path, cache, monkeypatch):
    p = tmp_path / "w.pth"
    p.write_bytes(b"aaaa")
    real = hashing._update

    def update_then_change(h, path, tick=None):
        real(h, path, tick)
        with open(path, "r+b") as f:
            f.write(b"b")

    monkeypatch.setattr(hashing, "_update", update_then_change)
    hashing.digest(p)
    assert not os.listdir(cache) and not hashing._CACHE


@pytest.mark.parametrize("damage", ["garbage", "other stamp", "not hex", "empty"])
def test_a_damaged_entry_is_a_miss(tmp_path, cache, monkeypatch, damage):
    p = tmp_path / "w.pth"
    p.write_bytes(b"data")
    right = hashing.digest(p)
    (entry,) = os.listdir(cache)
    full, _ = (cache / entry).read_text().split()
    text = {"garbage": "\x00\xff" * 40, "other stamp": f"{'0' * 64} {'1' * 64}\n",
            "not hex": f"{full} {'z' * 64}\n", "empty": ""}[damage]
    (cache / entry).write_bytes(text.encode("latin-1"))
    forget_process_cache(monkeypatch)
    assert hashing.digest(p) == right


def test_a_folder_others_can_write_to_is_not_used(tmp_path, cache, monkeypatch):
    os.makedirs(cache)
    os.chmod(cache, 0o777)
    p = tmp_path / "w.pth"
    p.write_bytes(b"data")
    assert hashing.digest(p) == hashlib.sha256(b"data").hexdigest()
    assert not os.listdir(cache) and hashing.cache_dir() is None


def test_turned_off_and_unwritable_folders_only_cost_the_hash(tmp_path, cache, monkeypatch):
    p = tmp_path / "w.pth"
    p.write_bytes(b"data")
    monkeypatch.setenv("CKPT_DIGEST_CACHE", "0")
    assert hashing.digest(p) == hashlib.sha256(b"data").hexdigest()
    assert not cache.exists()
    monkeypatch.delenv("CKPT_DIGEST_CACHE")
    (tmp_path / "file").write_bytes(b"")
    monkeypatch.setenv("CKPT_CACHE_DIR", str(tmp_path / "file"))   # a file where the folder should be
    forget_process_cache(monkeypatch)
    assert hashing.digest(p) == hashlib.sha256(b"data").hexdigest()


def test_the_folder_stays_bounded(tmp_path, cache, monkeypatch):
    monkeypatch.setattr(hashing, "MAX_ENTRIES", 8)
    for i in range(20):
        p = tmp_path / f"w{i}.pth"
        p.write_bytes(b"%d" % i)
        hashing.digest(p)
        assert len(os.listdir(cache)) <= 8


def test_folders_are_remembered_and_a_new_file_in_them_is_a_miss(tmp_path, cache, monkeypatch):
    d = tmp_path / "dcp"
    d.mkdir()
    (d / "a.distcp").write_bytes(b"A")
    first = hashing.digest(d)
    forget_process_cache(monkeypatch)
    (d / "b.distcp").write_bytes(b"B")
    assert hashing.digest(d) == hashlib.sha256(b"a.distcp\0A" + b"b.distcp\0B").hexdigest() != first


def _inputs(tmp_path, n=3):
    paths = []
    for i in range(n):
        rng = np.random.default_rng(i)
        p = tmp_path / f"epoch_{i + 1}.pth"
        save(p, {"w": rng.standard_normal((64, 64), dtype=np.float32), "b": rng.standard_normal(7)})
        paths.append(str(p))
    return paths


def test_average_remembers_what_it_hashed_and_a_second_run_hashes_nothing(tmp_path, cache, monkeypatch):
    paths = _inputs(tmp_path)
    truth = {p: hashlib.sha256(open(p, "rb").read()).hexdigest() for p in paths}
    cold = average(paths, str(tmp_path / "a.pth"))
    assert {r["path"]: r["sha256"] for r in cold.inputs} == truth
    assert len(os.listdir(cache)) == 3
    forget_process_cache(monkeypatch)
    no_hashing(monkeypatch)
    import ckpttool.surgery.average as average_module

    monkeypatch.setattr(average_module, "hashlib", None)   # InputDigests' own hashes would fail
    warm = average(paths, str(tmp_path / "b.pth"))
    assert {r["path"]: r["sha256"] for r in warm.inputs} == truth
    assert open(tmp_path / "a.pth", "rb").read() == open(tmp_path / "b.pth", "rb").read()


def test_average_after_an_input_changed_records_the_new_digest(tmp_path, cache, monkeypatch):
    paths = _inputs(tmp_path)
    average(paths, str(tmp_path / "a.pth"))
    st = os.stat(paths[1])
    save(paths[1], {"w": np.zeros((64, 64), np.float32), "b": np.zeros(7)}, force=True)
    os.utime(paths[1], ns=(st.st_atime_ns, st.st_mtime_ns))
    forget_process_cache(monkeypatch)
    again = average(paths, str(tmp_path / "b.pth"))
    assert {r["path"]: r["sha256"] for r in again.inputs}[paths[1]] == \
        hashlib.sha256(open(paths[1], "rb").read()).hexdigest()


def test_a_fifo_in_a_folder_is_an_error_not_a_hang(tmp_path, cache):
    d = tmp_path / "dcp"
    d.mkdir()
    (d / "a.distcp").write_bytes(b"A")
    os.mkfifo(d / "b.distcp")
    with pytest.raises(OSError, match="not a regular file"):
        hashing.digest(d)


def test_real_runner_checkpoints_are_hashed_once_under_the_default_rules(tmp_path, fixtures_dir, manifest,
                                                                          monkeypatch):
    """mmengine Runner checkpoints (EMA runs), the default SETTLED_NS: the second average reads no input to hash."""
    runs = manifest["mmengine"]["runs"]
    paths = [str(fixtures_dir / runs[t]["path"]) for t in ("sgd", "adamw")]
    newest = max(max(os.stat(p).st_mtime_ns, os.stat(p).st_ctime_ns) for p in paths)
    time.sleep(max(0.0, (newest + hashing.SETTLED_NS - time.time_ns()) / 1e9 + 0.1))  # freshly generated
    monkeypatch.setenv("CKPT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(hashing, "_CACHE", {})
    truth = {p: hashlib.sha256(open(p, "rb").read()).hexdigest() for p in paths}
    cold = average(paths, str(tmp_path / "a.pth"))
    assert {r["path"]: r["sha256"] for r in cold.inputs} == truth
    assert len(os.listdir(tmp_path / "cache" / "digests")) == 2
    forget_process_cache(monkeypatch)
    no_hashing(monkeypatch)
    import ckpttool.surgery.average as average_module

    monkeypatch.setattr(average_module, "hashlib", None)
    warm = average(paths, str(tmp_path / "b.pth"))
    assert {r["path"]: r["sha256"] for r in warm.inputs} == truth
    assert all(hashing.digest(p) == truth[p] for p in paths)   # graft's and eval's hasher: the same entries
