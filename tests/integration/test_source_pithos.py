"""The pithos sources: the object API over a real loopback HTTP server, and a block store on disk.

The block store is laid out by the test exactly as the pithos module's
docstring documents it (Pithos' file blocker/mapper layout).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from snf_image.errors import OperatorError, SourceError
from snf_image.sources.pithos import PithosMapSource, PithosSource
from tests.servers import ImageServer, read_all

pytestmark = pytest.mark.usefixtures("network_deadline")

DATA = os.urandom(2 * 1024 * 1024 + 999)
DIGEST = hashlib.sha256(DATA).hexdigest()
TOKEN = "tok-3f9a"
ACCOUNT = "5e9f0f3c-7b3e-4c1d-9a55-0123456789ab"
OBJECT = "images/debian 12/base.diskdump"  # a space and sub-"directories" in the object name
IMG_ID = f"pithos://{ACCOUNT}/{OBJECT}"
FAST = {"HTTP_CONNECT_TIMEOUT": "2", "HTTP_READ_TIMEOUT": "0.5", "HTTP_RETRIES": "3", "RETRY_BACKOFF": "0.01"}
BLOCK = 64 * 1024


# -- pithos:// through the object API -------------------------------------------------------------


@pytest.fixture
def pithos(http_server: Callable[..., ImageServer]) -> ImageServer:
    server = http_server({f"/object-store/v1/{ACCOUNT}/{OBJECT}": DATA})
    server.behaviour.require_headers = {"X-Auth-Token": TOKEN}
    return server


def pithos_source(server: ImageServer, **config: str) -> PithosSource:
    return PithosSource({"PITHOS_URL": server.url("/object-store/v1/"), "PITHOS_TOKEN": TOKEN, **FAST, **config})


def test_pithos_object_is_streamed_with_the_token(pithos: ImageServer) -> None:
    source = pithos_source(pithos)
    assert source.probe(IMG_ID) and not source.probe("pithosmap://ab/1")
    with source.open(IMG_ID) as stream:
        assert stream.size == len(DATA)
        assert hashlib.sha256(read_all(stream, 100_000)).hexdigest() == DIGEST
    request = pithos.requests[0]
    assert request.method == "GET"
    assert request.path == f"/object-store/v1/{ACCOUNT}/images/debian%2012/base.diskdump"
    assert request.headers["X-Auth-Token"] == TOKEN


def test_pithos_download_resumes(pithos: ImageServer) -> None:
    pithos.behaviour.drop_after = 700_000
    pithos.behaviour.drop_times = 2
    with pithos_source(pithos).open(IMG_ID) as stream:
        assert hashlib.sha256(read_all(stream, 100_000)).hexdigest() == DIGEST
    resumes = [r for r in pithos.requests if "Range" in r.headers]
    assert len(resumes) == 2 and all(r.headers["X-Auth-Token"] == TOKEN for r in resumes)


def test_pithos_wrong_token(pithos: ImageServer) -> None:
    with pytest.raises(SourceError) as err:
        pithos_source(pithos, PITHOS_TOKEN="wrong").open(IMG_ID)
    assert str(err.value) == f"authentication failed for {IMG_ID} (HTTP 401)"
    assert "wrong" not in str(err.value)


def test_pithos_missing_object(pithos: ImageServer) -> None:
    img_id = f"pithos://{ACCOUNT}/images/nope"
    with pytest.raises(SourceError) as err:
        pithos_source(pithos).open(img_id)
    assert str(err.value) == f"image not found at {img_id} (HTTP 404)"


def test_pithos_token_does_not_follow_a_redirect_to_another_host(
    pithos: ImageServer, http_server: Callable[..., ImageServer]
) -> None:
    other = http_server({"/elsewhere": DATA})
    path = f"/object-store/v1/{ACCOUNT}/{OBJECT}"
    pithos.behaviour.require_headers = {}
    pithos.behaviour.redirects = {path: other.url("/elsewhere", host="localhost")}
    with pithos_source(pithos).open(IMG_ID) as stream:
        assert hashlib.sha256(read_all(stream, 100_000)).hexdigest() == DIGEST
    assert other.requests and all("X-Auth-Token" not in r.headers for r in other.requests)


@pytest.mark.parametrize(
    "object_path",
    ["../../victim/private/secret.img", "x/%2e%2e/%2E%2E/%2e%2e/victim/private/secret.img", "./x", "x/%252e%252e/y"],
)
def test_pithos_ids_with_dot_segments_are_refused(http_server: Callable[..., ImageServer], object_path: str) -> None:
    """URL normalisation would turn ``..`` into another account's object, fetched with the node's token."""
    server = http_server({"/object-store/v1/victim/private/secret.img": b"not yours"})
    img_id = f"pithos://{ACCOUNT}/images/{object_path}"
    source = pithos_source(server)
    for attempt in (source.check, source.open):
        with pytest.raises(OperatorError) as err:
            attempt(img_id)
        assert str(err.value) == f"invalid image id {img_id!r}: '.' and '..' segments are not allowed"
    assert not server.requests


def test_pithos_check_needs_url_and_a_full_id() -> None:
    with pytest.raises(OperatorError, match=r"^setting PITHOS_URL is not set"):
        PithosSource({}).check(IMG_ID)
    source = PithosSource({"PITHOS_URL": "https://pithos.example/object-store/v1"})
    source.check(IMG_ID)
    for bad in ("pithos://acc/container", "pithos://acc//obj", "pithos:acc/c/o"):
        with pytest.raises(OperatorError, match="expected pithos://<account>/<container>/<object path>"):
            source.check(bad)


# -- pithosmap:// from a block store on disk ------------------------------------------------------


def fanout(base: Path, name: str) -> Path:
    path = base / name[0:2] / name[2:4] / name[4:6] / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def store_object(root: Path, data: bytes, block_size: int = BLOCK, strip: bool = False) -> str:
    """Lay ``data`` out as Pithos does; return the hashmap's hex name.

    With ``strip`` the block files hold the block without its trailing zeros
    (also a valid store: the hash ignores them and reading pads them back).
    """
    empty = hashlib.sha256(b"").digest()
    hashes = []
    for offset in range(0, len(data), block_size):
        block = data[offset : offset + block_size]
        digest = hashlib.sha256(block.rstrip(b"\0")).digest()
        hashes.append(digest)
        if digest != empty:
            fanout(root / "blocks", digest.hex()).write_bytes(block.rstrip(b"\0") if strip else block)
    hashmap = b"".join(hashes)
    name = hashlib.sha256(hashmap).hexdigest()
    fanout(root / "maps", name).write_bytes(hashmap)
    return name


def map_source(root: Path, **config: str) -> PithosMapSource:
    return PithosMapSource({"PITHOS_DATA": str(root), "PITHOS_BLOCK_SIZE": str(BLOCK), **config})


def tricky_data() -> bytes:
    """Random blocks, an all-zero block, a block ending in zeros, and a short last block ending in zeros."""
    return (
        os.urandom(BLOCK)
        + bytes(BLOCK)
        + os.urandom(BLOCK // 2)
        + bytes(BLOCK // 2)
        + os.urandom(3 * BLOCK)
        + os.urandom(1234)
        + bytes(777)
    )


@pytest.mark.parametrize("strip", [False, True])
@pytest.mark.parametrize("bufsize", [1000, BLOCK, 5 * BLOCK + 3])
def test_pithosmap_roundtrip(tmp_path: Path, strip: bool, bufsize: int) -> None:
    data = tricky_data()
    name = store_object(tmp_path, data, strip=strip)
    source = map_source(tmp_path)
    img_id = f"pithosmap://{name}/{len(data)}"
    assert source.probe(img_id) and not PithosSource({}).probe(img_id)
    source.check(img_id)
    with source.open(img_id) as stream:
        assert stream.size == len(data)
        assert read_all(stream, bufsize) == data


def test_pithosmap_object_ending_inside_a_zero_tail(tmp_path: Path) -> None:
    data = os.urandom(BLOCK + 10) + bytes(5000)
    name = store_object(tmp_path, data, strip=True)
    with map_source(tmp_path).open(f"pithosmap://{name}/{len(data)}") as stream:
        assert read_all(stream, 100_000) == data


def test_pithosmap_empty_object(tmp_path: Path) -> None:
    name = store_object(tmp_path, b"")
    with map_source(tmp_path).open(f"pithosmap://{name}/0") as stream:
        assert stream.size == 0 and read_all(stream, 100_000) == b""


def test_pithosmap_default_block_size(tmp_path: Path) -> None:
    data = os.urandom(4 * 1024 * 1024 + 17)
    name = store_object(tmp_path, data, block_size=4 * 1024 * 1024)
    with PithosMapSource({"PITHOS_DATA": str(tmp_path)}).open(f"pithosmap://{name}/{len(data)}") as stream:
        assert hashlib.sha256(read_all(stream, 1 << 20)).digest() == hashlib.sha256(data).digest()


def test_pithosmap_missing_block(tmp_path: Path) -> None:
    data = os.urandom(3 * BLOCK)
    name = store_object(tmp_path, data)
    victim = hashlib.sha256(data[BLOCK : 2 * BLOCK]).hexdigest()
    fanout(tmp_path / "blocks", victim).unlink()
    with map_source(tmp_path).open(f"pithosmap://{name}/{len(data)}") as stream, pytest.raises(SourceError) as err:
        read_all(stream, 100_000)
    assert str(err.value) == f"block {victim} of hashmap {name} is missing from {tmp_path / 'blocks'}"


def test_pithosmap_corrupt_block(tmp_path: Path) -> None:
    data = os.urandom(3 * BLOCK)
    name = store_object(tmp_path, data)
    victim = hashlib.sha256(data[2 * BLOCK :]).hexdigest()
    path = fanout(tmp_path / "blocks", victim)
    corrupt = bytearray(path.read_bytes())
    corrupt[100] ^= 1
    path.write_bytes(corrupt)
    with map_source(tmp_path).open(f"pithosmap://{name}/{len(data)}") as stream, pytest.raises(SourceError) as err:
        read_all(stream, 100_000)
    assert str(err.value) == f"block {victim} of hashmap {name} is corrupt (hash mismatch)"


def test_pithosmap_size_larger_than_the_map(tmp_path: Path) -> None:
    name = store_object(tmp_path, os.urandom(2 * BLOCK))
    with pytest.raises(SourceError) as err:
        map_source(tmp_path).open(f"pithosmap://{name}/{2 * BLOCK + 1}")
    assert str(err.value) == (
        f"hashmap {name} lists 2 blocks of {BLOCK} bytes, too few for an object of {2 * BLOCK + 1} bytes"
    )


def test_pithosmap_check_errors(tmp_path: Path) -> None:
    source = map_source(tmp_path)
    missing = "ab" * 32
    with pytest.raises(OperatorError, match=f"^img_id: hashmap {missing} not found under "):
        source.check(f"pithosmap://{missing}/10")
    with pytest.raises(SourceError, match=f"^hashmap {missing} not found under "):
        source.open(f"pithosmap://{missing}/10")
    for bad in ("pithosmap://abcd/10", "pithosmap://" + "zz" * 32 + "/1", f"pithosmap://{missing}", "pithosmap:x"):
        with pytest.raises(OperatorError, match=r"^invalid image id"):
            source.check(bad)
    with pytest.raises(OperatorError, match="PITHOS_HASH_ALGORITHM"):
        map_source(tmp_path, PITHOS_HASH_ALGORITHM="nohash").check(f"pithosmap://{missing}/1")
    with pytest.raises(OperatorError, match="PITHOS_BLOCK_SIZE"):
        map_source(tmp_path, PITHOS_BLOCK_SIZE="0").check(f"pithosmap://{missing}/1")
