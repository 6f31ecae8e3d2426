"""The node-local image cache (issue 14, item 4), against real loopback servers that count requests."""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from snf_image.errors import ImageError, SourceError
from snf_image.settings import Settings, load_settings
from snf_image.sources import select_source
from snf_image.sources.base import ImageStream
from snf_image.sources.cachefill import FillingStream
from snf_image.sources.fetch import local_image, open_image
from snf_image.sources.local import LocalStream
from tests.osenv import REPO
from tests.servers import ImageServer, read_all
from tests.servers.ftpd import FtpServer

pytestmark = pytest.mark.usefixtures("network_deadline")

MiB = 1024 * 1024
DATA = os.urandom(3 * MiB + 777)
SHA256 = "sha256:" + hashlib.sha256(DATA).hexdigest()
FAST = {"HTTP_READ_TIMEOUT": "2", "HTTP_RETRIES": "2", "RETRY_BACKOFF": "0.01", "FTP_TIMEOUT": "2"}


def cache_settings(tmp_path: Path, size: str = "64M", **overrides: str) -> Settings:
    base = {"IMAGE_CACHE_DIR": str(tmp_path / "cache"), "IMAGE_CACHE_SIZE": size, "IMAGE_DIR": str(tmp_path)}
    return load_settings(config_dir=tmp_path / "etc", overrides={**FAST, **base, **overrides})


def opened(url: str, settings: Settings, checksum: str | None = None) -> ImageStream:
    return open_image(select_source(url, settings), url, settings, checksum)


def fetched(url: str, settings: Settings, checksum: str | None = None) -> tuple[bytes, type]:
    with opened(url, settings, checksum) as stream:
        return read_all(stream), type(stream)


def entries(tmp_path: Path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "cache").glob("*.img"))


@pytest.fixture
def server(http_server: Callable[..., ImageServer]) -> ImageServer:
    return http_server({"/img": DATA, "/b": DATA[::-1], "/c": DATA[1:] + b"c"})


# -- named by img_checksum: used without contacting the server -------------------------------------


def test_a_checksum_named_copy_is_used_without_the_server(server: ImageServer, tmp_path: Path) -> None:
    settings = cache_settings(tmp_path)
    url = server.url("/img")
    assert fetched(url, settings, SHA256) == (DATA, FillingStream)
    server.stop()  # from now on, the server is gone
    with opened(url, settings, SHA256) as stream:
        assert isinstance(stream, LocalStream) and stream.local_path is not None
        assert os.pread(stream.local_fd, 100, 1000) == DATA[1000:1100]
        assert read_all(stream) == DATA
    assert len(server.gets()) == 1


def test_a_fill_that_does_not_match_the_checksum_is_not_kept(server: ImageServer, tmp_path: Path) -> None:
    settings = cache_settings(tmp_path)
    wrong = "sha256:" + "0" * 64
    for _ in range(2):
        assert fetched(server.url("/img"), settings, wrong)[0] == DATA  # the copy's own check reports it
    assert entries(tmp_path) == [] and len(server.gets()) == 2


# -- named by URL: revalidated ---------------------------------------------------------------------


def test_a_url_named_copy_is_revalidated_with_the_etag(server: ImageServer, tmp_path: Path) -> None:
    settings = cache_settings(tmp_path)
    url = server.url("/img")
    server.behaviour.etag = '"v1"'
    assert fetched(url, settings) == (DATA, FillingStream)
    assert fetched(url, settings) == (DATA, LocalStream)
    server.files["/img"] = DATA[::-1]
    server.behaviour.etag = '"v2"'
    assert fetched(url, settings) == (DATA[::-1], FillingStream)
    assert fetched(url, settings) == (DATA[::-1], LocalStream)
    assert [r.headers.get("If-None-Match") for r in server.gets()] == [None, '"v1"', '"v1"', '"v2"']
    assert len(entries(tmp_path)) == 1


def test_an_entry_takes_the_images_data_not_its_size(server: ImageServer, tmp_path: Path) -> None:
    """A mostly empty image is kept with its zero blocks as holes, and read back exactly."""
    image = bytes(7 * MiB) + DATA + bytes(6 * MiB + 5)
    server.files["/sparse"] = image
    server.behaviour.etag = '"s1"'
    settings = cache_settings(tmp_path)
    url = server.url("/sparse")
    assert fetched(url, settings) == (image, FillingStream)
    (entry,) = (tmp_path / "cache").glob("*.img")
    assert entry.stat().st_size == len(image)
    assert entry.stat().st_blocks * 512 <= len(DATA) + 2 * MiB < len(image) // 3
    assert fetched(url, settings) == (image, LocalStream)
    # its holes are checked without being read: data turned into a hole is damage all the same
    subprocess.run(
        ["fallocate", "--punch-hole", "--offset", str(8 * MiB), "--length", str(MiB), str(entry)], check=True
    )
    assert fetched(url, settings) == (image, FillingStream)


def test_last_modified_revalidates_too(server: ImageServer, tmp_path: Path) -> None:
    settings = cache_settings(tmp_path)
    server.behaviour.last_modified = "Tue, 01 Jul 2025 10:00:00 GMT"
    assert fetched(server.url("/img"), settings)[1] is FillingStream
    assert fetched(server.url("/img"), settings) == (DATA, LocalStream)
    assert server.gets()[1].headers["If-Modified-Since"] == "Tue, 01 Jul 2025 10:00:00 GMT"


def test_an_image_without_validators_or_checksum_is_not_cached(server: ImageServer, tmp_path: Path) -> None:
    settings = cache_settings(tmp_path)
    for _ in range(2):
        assert fetched(server.url("/img"), settings)[0] == DATA
    assert len(server.gets()) == 2 and entries(tmp_path) == []


def test_ftp_copies_are_revalidated_by_mdtm_and_size(ftp_server: Callable[..., FtpServer], tmp_path: Path) -> None:
    root = tmp_path / "ftp"
    root.mkdir()
    (root / "img").write_bytes(DATA)
    ftp = ftp_server(root)
    settings = cache_settings(tmp_path)
    assert fetched(ftp.url("img"), settings) == (DATA, FillingStream)
    assert fetched(ftp.url("img"), settings) == (DATA, LocalStream)
    assert len(ftp.drop.retrieved) == 1
    (root / "img").write_bytes(DATA[::-1])
    os.utime(root / "img", (time.time() + 5, time.time() + 5))
    assert fetched(ftp.url("img"), settings) == (DATA[::-1], FillingStream)
    assert len(ftp.drop.retrieved) == 2


# -- size and eviction -----------------------------------------------------------------------------


def test_least_recently_used_entries_are_evicted(server: ImageServer, tmp_path: Path) -> None:
    settings = cache_settings(tmp_path, size=str(int(2.5 * len(DATA))))
    sums = {p: "sha256:" + hashlib.sha256(server.files[p]).hexdigest() for p in ("/img", "/b", "/c")}
    fetched(server.url("/img"), settings, sums["/img"])
    fetched(server.url("/b"), settings, sums["/b"])
    time.sleep(0.01)
    assert fetched(server.url("/img"), settings, sums["/img"])[1] is LocalStream  # /img is now the fresher
    fetched(server.url("/c"), settings, sums["/c"])  # makes room: /b goes
    assert len(entries(tmp_path)) == 2
    assert fetched(server.url("/img"), settings, sums["/img"])[1] is LocalStream
    assert fetched(server.url("/c"), settings, sums["/c"])[1] is LocalStream
    assert fetched(server.url("/b"), settings, sums["/b"])[1] is FillingStream
    assert [len(server.gets(p)) for p in ("/img", "/b", "/c")] == [1, 2, 1]


def test_an_image_larger_than_the_cache_is_streamed_uncached(server: ImageServer, tmp_path: Path) -> None:
    settings = cache_settings(tmp_path, size="1M")
    assert fetched(server.url("/img"), settings, SHA256)[0] == DATA
    assert fetched(server.url("/img"), settings, SHA256)[0] == DATA
    assert len(server.gets()) == 2 and entries(tmp_path) == []


# -- damage ----------------------------------------------------------------------------------------


def flip_a_byte(path: Path) -> None:
    with open(path, "r+b") as fh:
        fh.seek(123_456)
        byte = fh.read(1)
        fh.seek(123_456)
        fh.write(bytes([byte[0] ^ 1]))


@pytest.mark.parametrize(
    "damage",
    [
        flip_a_byte,
        lambda path: os.truncate(path, len(DATA) - 1),
        lambda path: path.with_suffix(".json").write_text("{not json"),
        lambda path: path.unlink(),
    ],
    ids=["flipped-byte", "truncated", "bad-metadata", "image-missing"],
)
def test_a_damaged_entry_is_fetched_again_never_used(
    server: ImageServer, tmp_path: Path, damage: Callable[[Path], object]
) -> None:
    settings = cache_settings(tmp_path)
    fetched(server.url("/img"), settings, SHA256)
    (entry,) = (tmp_path / "cache").glob("*.img")
    damage(entry)
    assert fetched(server.url("/img"), settings, SHA256) == (DATA, FillingStream)
    assert fetched(server.url("/img"), settings, SHA256) == (DATA, LocalStream)  # repaired
    assert len(server.gets()) == 2


# -- concurrency and interruptions -----------------------------------------------------------------


def test_two_deployments_at_once_fetch_the_image_once(server: ImageServer, tmp_path: Path) -> None:
    settings = cache_settings(tmp_path)
    server.behaviour.stall_after = 1_000_000  # the first transfer takes a while
    server.behaviour.stall_seconds = 1.0
    results: dict[str, tuple[bytes, type]] = {}

    def deploy(name: str) -> None:
        results[name] = fetched(server.url("/img"), settings, SHA256)

    threads = [threading.Thread(target=deploy, args=(name,)) for name in ("first", "second")]
    for thread in threads:
        thread.start()
        time.sleep(0.2)
    for thread in threads:
        thread.join(15)
    assert sorted(kind.__name__ for _, kind in results.values()) == ["FillingStream", "LocalStream"]
    assert all(data == DATA for data, _ in results.values())
    assert len(server.gets()) == 1


def test_a_deployment_that_stops_early_keeps_nothing_and_blocks_nobody(server: ImageServer, tmp_path: Path) -> None:
    settings = cache_settings(tmp_path)
    with opened(server.url("/img"), settings, SHA256) as stream:
        assert stream.readinto(memoryview(bytearray(100_000)))
    assert entries(tmp_path) == []
    assert fetched(server.url("/img"), settings, SHA256) == (DATA, FillingStream)


KILLED_FILL = """
import sys
from pathlib import Path
from snf_image.settings import load_settings
from snf_image.sources import select_source
from snf_image.sources.fetch import open_image
overrides = {"IMAGE_CACHE_DIR": sys.argv[3], "IMAGE_CACHE_SIZE": "64M"}
settings = load_settings(config_dir=Path(sys.argv[2]), overrides=overrides)
stream = open_image(select_source(sys.argv[1], settings), sys.argv[1], settings, sys.argv[4])
stream.readinto(memoryview(bytearray(500_000)))
print("filling", flush=True)
while stream.readinto(memoryview(bytearray(65536))):
    pass
"""


def test_a_killed_fill_leaves_no_file_behind(server: ImageServer, tmp_path: Path) -> None:
    server.behaviour.stall_after = 1_000_000
    server.behaviour.stall_seconds = 10
    cache = tmp_path / "cache"
    child = subprocess.Popen(
        ["/usr/bin/python3", "-c", KILLED_FILL, server.url("/img"), str(tmp_path / "etc"), str(cache), SHA256],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stdout.readline() == "filling\n"
    child.send_signal(signal.SIGKILL)
    child.wait(5)
    child.stdout.close()
    left = sorted(p.name for p in cache.iterdir())
    assert [name for name in left if not name.endswith(".lock")] == []
    assert fetched(server.url("/img"), cache_settings(tmp_path), SHA256) == (DATA, FillingStream)


def test_concurrent_cli_deployments_fetch_the_image_once(server: ImageServer, tmp_path: Path) -> None:
    """Two real ``snf-image deploy`` processes started together: one download, two identical disks."""
    conf = tmp_path / "etc"
    conf.mkdir()
    (conf / "snf-image.conf").write_text(f"IMAGE_CACHE_DIR={tmp_path / 'cache'}\nIMAGE_CACHE_SIZE=64M\n")
    server.behaviour.stall_after = 1_000_000
    server.behaviour.stall_seconds = 1.0
    disks = [tmp_path / "disk0.raw", tmp_path / "disk1.raw"]
    procs = []
    for disk in disks:
        disk.write_bytes(b"\xa5" * (4 * MiB))
        args = ["deploy", "--disk", str(disk), "--image", server.url("/img"), "--format", "diskdump"]
        command = ["/usr/bin/python3", "-m", "snf_image", "--config-dir", str(conf), *args]
        procs.append(
            subprocess.Popen(
                [*command, "--checksum", SHA256, "--no-customize"],
                cwd=REPO,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        )
        time.sleep(0.3)
    for proc in procs:
        _, err = proc.communicate(timeout=15)
        assert proc.returncode == 0, err
    assert all(disk.read_bytes()[: len(DATA)] == DATA for disk in disks)
    assert len(server.gets()) == 1


# -- what is kept, and how -------------------------------------------------------------------------


def test_local_images_are_never_copied(tmp_path: Path) -> None:
    (tmp_path / "local.img").write_bytes(DATA)
    settings = cache_settings(tmp_path)
    with opened("local://local.img", settings) as stream:
        assert stream.local_path == tmp_path / "local.img"
    assert not (tmp_path / "cache").exists()


def test_credentials_select_the_entry_and_never_show_in_it(server: ImageServer, tmp_path: Path) -> None:
    settings = cache_settings(tmp_path)
    server.behaviour.etag = '"v1"'
    server.behaviour.require_headers = {"Authorization": "Basic YWxpY2U6czNjcmV0"}  # alice:s3cret
    url = server.url("/img?sig=t0ken")
    alice = url.replace("http://", "http://alice:s3cret@")
    assert fetched(alice, settings) == (DATA, FillingStream)
    assert fetched(alice, settings) == (DATA, LocalStream)
    with pytest.raises(SourceError, match=r"\(HTTP 401\)"):
        fetched(url.replace("http://", "http://bob:guess@"), settings)  # not alice's copy
    with pytest.raises(SourceError, match=r"\(HTTP 401\)"):
        fetched(url, settings)
    cache = tmp_path / "cache"
    for path in cache.iterdir():
        for secret in ("alice", "s3cret", "t0ken", "sig="):
            assert secret not in path.name
            assert secret.encode() not in path.read_bytes()
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in cache.iterdir()} == {0o600}
    assert {p.name for p in cache.iterdir() if p.suffix not in (".img", ".json", ".lock")} == {".key", ".lock"}


def test_pithos_objects_and_pithosmap_ids_are_cached(http_server: Callable[..., ImageServer], tmp_path: Path) -> None:
    pithos = http_server({"/v1/acc/images/img": DATA})
    pithos.behaviour.etag = '"p1"'
    pithos.behaviour.require_headers = {"X-Auth-Token": "tok"}
    settings = cache_settings(tmp_path, PITHOS_URL=pithos.url("/v1"), PITHOS_TOKEN="tok")
    assert fetched("pithos://acc/images/img", settings) == (DATA, FillingStream)
    assert fetched("pithos://acc/images/img", settings) == (DATA, LocalStream)
    store = tmp_path / "store"
    block = 1024 * 1024
    hashes = []
    for offset in range(0, len(DATA), block):
        digest = hashlib.sha256(DATA[offset : offset + block].rstrip(b"\0")).digest()
        path = store / "blocks" / digest.hex()[:2] / digest.hex()[2:4] / digest.hex()[4:6] / digest.hex()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(DATA[offset : offset + block])
        hashes.append(digest)
    name = hashlib.sha256(b"".join(hashes)).hexdigest()
    map_path = store / "maps" / name[:2] / name[2:4] / name[4:6] / name
    map_path.parent.mkdir(parents=True)
    map_path.write_bytes(b"".join(hashes))
    settings = cache_settings(tmp_path, PITHOS_DATA=str(store), PITHOS_BLOCK_SIZE=str(block))
    img_id = f"pithosmap://{name}/{len(DATA)}"
    assert fetched(img_id, settings) == (DATA, FillingStream)
    for path in (store / "blocks").rglob("*"):
        if path.is_file():
            path.unlink()  # the store's blocks are gone: only the cache can deliver now
    assert fetched(img_id, settings) == (DATA, LocalStream)


# -- the image as a local file -----------------------------------------------------------------------


def test_local_image_with_the_cache_is_the_entry_fetched_once(server: ImageServer, tmp_path: Path) -> None:
    settings = cache_settings(tmp_path)
    for _ in range(2):
        with local_image(server.url("/img"), settings, SHA256) as image:
            assert image.local_path is not None and image.local_path.parent == tmp_path / "cache"
            assert image.size == len(DATA) and os.pread(image.local_fd, len(DATA), 0) == DATA
            assert read_all(image) == DATA
    assert len(server.gets()) == 1


def test_local_image_without_the_cache_is_a_private_unnamed_copy(server: ImageServer, tmp_path: Path) -> None:
    settings = cache_settings(tmp_path, size="0")
    with local_image(server.url("/img"), settings, SHA256) as image:
        assert image.local_path is None and image.size == len(DATA)
        assert os.pread(image.local_fd, 1000, len(DATA) - 1000) == DATA[-1000:]
        assert stat.S_IMODE(os.fstat(image.local_fd).st_mode) == 0o600
        assert list((tmp_path / "cache").iterdir()) == []  # unnamed: nothing to leave behind
    with pytest.raises(ImageError, match="image checksum mismatch"):
        local_image(server.url("/img"), settings, "sha256:" + "1" * 64)


def test_local_image_of_a_local_file_is_the_file_itself(tmp_path: Path) -> None:
    (tmp_path / "local.img").write_bytes(DATA)
    with local_image("local://local.img", cache_settings(tmp_path), SHA256) as image:
        assert image.local_path == tmp_path / "local.img" and read_all(image) == DATA
    with pytest.raises(ImageError, match="image checksum mismatch"):
        local_image("local://local.img", cache_settings(tmp_path), "sha256:" + "2" * 64)
