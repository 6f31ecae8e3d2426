#!/usr/bin/python3
"""What the node-local image cache costs and saves, measured in one run over loopback HTTP.

Not a test: prints figures and ratios. One image of random data (--size MiB) is
served by the test HTTP server on 127.0.0.1 with an ETag; each row drains the
stream a deployment would read:

  uncached       -- IMAGE_CACHE_SIZE=0: straight from the server;
  first (fill)   -- the cache on and empty: streamed and teed into the cache;
  hit, checksum  -- named by img_checksum: CRC-32 check of the entry, then read it;
  hit, URL       -- named by URL: a conditional GET (304), the check, the read;
  local_image    -- the entry as a local file (the check only).

  /usr/bin/python3 benchmarks/image_cache.py [--size 512] [--dir /var/tmp/snf-image-bench]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from snf_image.settings import load_settings  # noqa: E402
from snf_image.sources import select_source  # noqa: E402
from snf_image.sources.fetch import local_image, open_image  # noqa: E402
from tests.servers import ImageServer  # noqa: E402

MiB = 1 << 20


def drain(url: str, settings: object, checksum: str | None) -> str:
    stream = open_image(select_source(url, settings), url, settings, checksum)  # type: ignore[arg-type]
    buffer = memoryview(bytearray(8 * MiB))
    with stream:
        while stream.readinto(buffer):
            pass
    return type(stream).__name__


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="image size in MiB")
    parser.add_argument("--dir", type=Path, default=Path("/var/tmp/snf-image-bench-cache"))
    args = parser.parse_args()
    shutil.rmtree(args.dir, ignore_errors=True)
    args.dir.mkdir(parents=True)
    data = os.urandom(args.size * MiB)
    checksum = "sha256:" + hashlib.sha256(data).hexdigest()
    rows: list[tuple[str, float, str]] = []
    try:
        with ImageServer({"/img": data}) as server:
            server.behaviour.etag = '"bench"'
            url = server.url("/img")

            def settings(size: str, cache: str) -> object:
                overrides = {"IMAGE_CACHE_DIR": str(args.dir / cache), "IMAGE_CACHE_SIZE": size}
                return load_settings(config_dir=args.dir / "etc", overrides=overrides)

            off, by_sum, by_url = settings("0", "off"), settings("64G", "sum"), settings("64G", "url")
            for name, config, check in [
                ("uncached", off, None),
                ("first (fill)", by_sum, checksum),
                ("hit, checksum", by_sum, checksum),
                ("first (fill), URL", by_url, None),
                ("hit, URL", by_url, None),
            ]:
                started = time.monotonic()
                kind = drain(url, config, check)
                rows.append((name, time.monotonic() - started, kind))
            started = time.monotonic()
            with local_image(url, by_sum, checksum) as image:  # type: ignore[arg-type]
                assert image.size == len(data)
            rows.append(("local_image (hit)", time.monotonic() - started, "LocalStream"))
            requests = len(server.gets())
    finally:
        shutil.rmtree(args.dir, ignore_errors=True)
    base = rows[0][1]
    print(f"image: {args.size} MiB random, loopback HTTP; server GETs in all: {requests}")
    print(f"{'run':<20} {'seconds':>8} {'MiB/s':>8} {'x uncached':>11}  stream")
    for name, seconds, kind in rows:
        print(f"{name:<20} {seconds:8.2f} {args.size / seconds:8.0f} {seconds / base:11.2f}  {kind}")


if __name__ == "__main__":
    main()
