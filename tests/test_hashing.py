"""io.hashing.digest: the one sha256 (files, and folders as graft, average and eval all record them)."""
from __future__ import annotations

import hashlib
import os

from ckpttool.io import hashing


def test_file_digest_is_plain_sha256(tmp_path):
    p = tmp_path / "a.bin"
    p.write_bytes(b"abc" * 1000)
    assert hashing.digest(p) == hashlib.sha256(b"abc" * 1000).hexdigest()
    (tmp_path / "empty").write_bytes(b"")
    assert hashing.digest(tmp_path / "empty") == hashlib.sha256(b"").hexdigest()


def test_folder_digest_covers_relative_names_and_bytes(tmp_path):
    d = tmp_path / "dcp"
    (d / "sub").mkdir(parents=True)
    (d / "b.distcp").write_bytes(b"BB")
    (d / "sub" / ".metadata").write_bytes(b"M")
    expected = hashlib.sha256(b"b.distcp\0BB" + b"sub/.metadata\0M").hexdigest()
    assert hashing.digest(d) == expected
    os.rename(d / "b.distcp", d / "c.distcp")  # same bytes, another name: another digest
    assert hashing.digest(d) != expected


def test_digest_cache_notices_a_changed_file(tmp_path):
    p = tmp_path / "w.pth"
    p.write_bytes(b"one")
    first = hashing.digest(p)
    assert hashing.digest(p) == first  # served from the (dev, inode, size, mtime_ns) cache
    p.write_bytes(b"two!")
    assert hashing.digest(p) == hashlib.sha256(b"two!").hexdigest()


def test_graft_average_and_eval_use_the_same_hasher():
    import ckpttool.engine.pipeline as pipeline
    import ckpttool.surgery.average as average
    import ckpttool.surgery.graft as graft

    assert graft.digest is hashing.digest and average.hashing is hashing
    assert "from ckpttool.io.hashing import digest" in open(pipeline.__file__).read()
