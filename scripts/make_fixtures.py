#!/usr/bin/env python
"""Write the test fixtures: python scripts/make_fixtures.py [--out fixtures/generated] [--only NAME,...] [--force]

Families: mmengine, layouts, formats, malicious, diff (see tests/support/fixtures.py for files and manifests);
kaist_mmdet only with --only (it needs the [mmdet] venv: .venv-mmdet/bin/python scripts/make_fixtures.py ...).
Idempotent: a family is skipped when its .stamp matches the hash of the generator sources, the key files and
the library versions. Prints one line per family to stderr; exit 2 on bad arguments.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.support import fixtures  # noqa: E402  (stdlib-only at import time)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(fixtures.DEFAULT_OUT), help="output root (default fixtures/generated)")
    ap.add_argument("--only", default="", help=f"comma-separated families of {','.join(fixtures.FAMILIES)}")
    ap.add_argument("--force", action="store_true", help="regenerate even when the stamps match")
    ap.add_argument("--sentinel-dir", default=None,
                    help="directory the malicious payloads name for their sentinel files (default OUT/malicious)")
    args = ap.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()] or None
    if only:
        bad = sorted(set(only) - set(fixtures.FAMILIES) - set(fixtures.OPTIONAL_FAMILIES))
        if bad:
            ap.error(f"unknown families {bad}; known: {', '.join(fixtures.FAMILIES)}")
    t0 = time.perf_counter()
    fixtures.generate(args.out, only=only, force=args.force, sentinel_dir=args.sentinel_dir,
                      log=lambda m: print(m, file=sys.stderr, flush=True))
    print(f"fixtures: done in {time.perf_counter() - t0:.1f}s -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
