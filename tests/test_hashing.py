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


def test_crc32_is_zlibs_function_on_every_kind_of_buffer(tmp_path):
    """The writers' CRC32 (zip records, read-back verification) is zlib-ng's where installed: same values as
    zlib's on bytes, memoryview slices of a memory map, numpy arrays, empty data, and with a running value."""
    import mmap
    import zlib

    import numpy as np

    p = tmp_path / "data.bin"
    payload = os.urandom(3 << 20) + b"tail"
    p.write_bytes(payload)
    with open(p, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        view = memoryview(mm)
        try:
            for a, b in ((0, len(payload)), (1, 4097), (12345, 3 << 20), (7, 7)):
                assert hashing.crc32(view[a:b]) == zlib.crc32(payload[a:b])
        finally:
            view.release()
    arr = np.arange(100_003, dtype=np.float32)
    assert hashing.crc32(arr) == zlib.crc32(arr.tobytes())
    assert hashing.crc32(b"") == zlib.crc32(b"") == 0
    assert hashing.crc32(b"world", hashing.crc32(b"hello ")) == zlib.crc32(b"hello world")


def test_crc32_is_zlib_ng_where_installed_and_zlib_without_it(tmp_path):
    import subprocess
    import sys

    from zlib_ng import zlib_ng   # a core dependency (pyproject.toml)

    assert hashing.crc32 is zlib_ng.crc32
    code = ("import sys, zlib; sys.modules['zlib_ng'] = None\n"   # as on a platform without its wheel
            "from ckpttool.io import hashing\nfrom ckpttool.io.write import save\nfrom ckpttool.io import load\n"
            "import numpy as np\nassert hashing.crc32 is zlib.crc32\n"
            f"save({str(tmp_path / 'w.pth')!r}, {{'w': np.ones(3, np.float32)}})\n"
            f"print(load({str(tmp_path / 'w.pth')!r}).state_dict()['w'].numpy().sum())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "3.0"
