"""Images stored in Pithos (Synnefo's object store): ``pithos://`` and ``pithosmap://`` ids.

The original ran ``pithcat``, which needed the Pithos backend libraries and
database on every Ganeti node. Here:

``pithos://<account>/<container>/<object path>``
    is fetched through the Pithos object API: ``GET
    {PITHOS_URL}/{account}/{container}/{object}`` with ``X-Auth-Token:
    {PITHOS_TOKEN}``. The size is the ``Content-Length`` of that response
    (the same value a HEAD returns, without the extra round trip). Streaming,
    resume after a break and the error messages are those of
    :class:`~snf_image.sources.httpstream.HttpStream`; the token is never shown
    and is not sent on to another host if Pithos redirects. A ``.`` or ``..``
    segment anywhere in the id (raw or percent-encoded) is refused: URL
    normalisation would turn it into another account's or container's
    object, fetched with the node's token.

``pithosmap://<hashmap hex>/<size>``
    is read straight from a Pithos file block store (``PITHOS_DATA``), no
    database needed. What is implemented is the layout of Pithos' file
    backend (``pithos/backends/lib/hashfiler``: ``FileMapper``,
    ``FileBlocker``, ``Store(path=PITHOS_DATA)``)::

        {PITHOS_DATA}/maps/<h[0:2]>/<h[2:4]>/<h[4:6]>/<h>     the hashmap named <h> (hex)
        {PITHOS_DATA}/blocks/<b[0:2]>/<b[2:4]>/<b[4:6]>/<b>   the block whose hash is <b> (hex)

    A hashmap file is the concatenation of the object's block hashes, each
    the raw digest (32 bytes for sha256), block 0 first. A block file holds
    at most ``PITHOS_BLOCK_SIZE`` bytes. A block's hash is the digest of its
    content *with trailing NUL bytes stripped* (``FileBlocker.block_hash``),
    so a stored block may be shorter than the block size: it is padded with
    zeros to the block size, exactly as Pithos' ``block_retr`` does. The hash
    of the empty string stands for an all-zero block that need not exist on
    disk. The object is the blocks in order, cut at ``<size>``: trailing
    zeros inside the last block are restored, the rest of it dropped.

    Each block is verified against its hash as it is read; a missing block,
    a block longer than the block size, a hash mismatch or a hashmap too short
    for ``<size>`` is a :class:`SourceError`. The hashmap's own name is not
    recomputed (Pithos versions differ in how they derive it); the block
    hashes protect the content. The RADOS and Archipelago backends of the
    original are not supported.

Settings (main config overlaid with ``backends/src/pithos.conf`` or
``pithosmap.conf``; pithos also reads the ``HTTP_*``/``TLS_*``/``DOWNLOAD_*``/
``RETRY_BACKOFF``/``ALLOW_PRIVATE_REDIRECTS`` keys of the network source):

=======================  =======================  ==================================================
key                      default                  meaning
=======================  =======================  ==================================================
PITHOS_URL               (none; required)         object API base, e.g. https://pithos.example/object-store/v1
PITHOS_TOKEN             (empty: no header)       sent as ``X-Auth-Token``
PITHOS_DATA              /var/lib/pithos/data     file block store root (maps/, blocks/)
PITHOS_BLOCK_SIZE        4194304                  the store's block size in bytes
PITHOS_HASH_ALGORITHM    sha256                   the store's hash (any hashlib name)
=======================  =======================  ==================================================
"""

from __future__ import annotations

import hashlib
import math
import re
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

from ..errors import OperatorError, SourceError
from .base import CacheIdentity, ImageSource, ImageStream
from .httpstream import HttpStream
from .options import HttpOptions, int_setting, setting
from .resuming import NotModified

DEFAULTS: dict[str, str] = {
    "PITHOS_URL": "",
    "PITHOS_TOKEN": "",
    "PITHOS_DATA": "/var/lib/pithos/data",
    "PITHOS_BLOCK_SIZE": str(4 * 1024 * 1024),
    "PITHOS_HASH_ALGORITHM": "sha256",
}

TOKEN_HEADER = "X-Auth-Token"


def _fully_unquoted(text: str) -> str:
    """``text`` percent-decoded until nothing changes (``%252e`` is a dot to a server that decodes twice)."""
    while (plain := urllib.parse.unquote(text)) != text:
        text = plain
    return text


class PithosSource(ImageSource):
    """``pithos://account/container/object`` through the Pithos object API over HTTP(S)."""

    name = "pithos"
    default_priority = 50

    def probe(self, img_id: str) -> bool:
        """The original's ``^pithos:`` (``pithosmap:`` is the other source's)."""
        return img_id.startswith("pithos:")

    @staticmethod
    def parse_id(img_id: str) -> tuple[str, str, str]:
        """(account, container, object path); raises :class:`OperatorError`."""
        match = re.fullmatch(r"pithos://([^/]+)/([^/]+)/(.+)", img_id)
        if not match or any(ord(ch) < 32 or ord(ch) == 127 for ch in img_id):
            raise OperatorError(f"invalid image id {img_id!r}: expected pithos://<account>/<container>/<object path>")
        for segment in img_id[len("pithos://") :].split("/"):
            if _fully_unquoted(segment) in (".", ".."):
                raise OperatorError(f"invalid image id {img_id!r}: '.' and '..' segments are not allowed")
        return match.group(1), match.group(2), match.group(3)

    def _base_url(self) -> str:
        base = setting(self.config, "PITHOS_URL", DEFAULTS)
        if not base:
            raise OperatorError("setting PITHOS_URL is not set (needed for pithos:// images)")
        parts = urllib.parse.urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise OperatorError(f"setting PITHOS_URL must be an http(s) URL, got {base!r}")
        if parts.username is not None or parts.query:
            raise OperatorError("setting PITHOS_URL must not carry credentials or a query; use PITHOS_TOKEN")
        return base.rstrip("/")

    def object_url(self, img_id: str) -> str:
        """The object API URL of ``img_id`` (names are raw in the id and quoted here)."""
        account, container, path = self.parse_id(img_id)
        quote = urllib.parse.quote
        return f"{self._base_url()}/{quote(account, safe='')}/{quote(container, safe='')}/{quote(path, safe='/')}"

    def check(self, img_id: str) -> None:
        """Id syntax and settings; no request is made."""
        self.object_url(img_id)
        HttpOptions.from_config(self.config)

    def open(self, img_id: str) -> ImageStream:
        """Start the GET; the size is the object's Content-Length."""
        return self._stream(img_id)

    def cache_identity(self, img_id: str) -> CacheIdentity:
        """The object's URL; the token (what the server lets us see) is the secret."""
        return CacheIdentity(
            public=self.object_url(img_id), secret=setting(self.config, "PITHOS_TOKEN", DEFAULTS), display=img_id
        )

    def open_if_changed(self, img_id: str, validators: Mapping[str, str]) -> ImageStream | None:
        """A conditional GET (``If-None-Match``/``If-Modified-Since``)."""
        try:
            return self._stream(img_id, validators)
        except NotModified:
            return None

    def _stream(self, img_id: str, revalidate: Mapping[str, str] | None = None) -> HttpStream:
        url = self.object_url(img_id)
        token = setting(self.config, "PITHOS_TOKEN", DEFAULTS)
        headers = {TOKEN_HEADER: token} if token else {}
        return HttpStream(
            url,
            HttpOptions.from_config(self.config),
            display=img_id,
            headers=headers,
            private_headers=(TOKEN_HEADER,),
            revalidate=revalidate,
        )


class PithosMapSource(ImageSource):
    """``pithosmap://<hashmap>/<size>`` read block by block from a Pithos file block store."""

    name = "pithosmap"
    default_priority = 50

    def probe(self, img_id: str) -> bool:
        """The original's ``^pithosmap:``."""
        return img_id.startswith("pithosmap:")

    def _store(self) -> BlockStore:
        algorithm = setting(self.config, "PITHOS_HASH_ALGORITHM", DEFAULTS)
        try:
            hashlib.new(algorithm)
        except ValueError:
            raise OperatorError(f"setting PITHOS_HASH_ALGORITHM: unknown hash {algorithm!r}") from None
        block_size = int_setting(self.config, "PITHOS_BLOCK_SIZE", DEFAULTS)
        if block_size <= 0:
            raise OperatorError("setting PITHOS_BLOCK_SIZE must be greater than zero")
        return BlockStore(Path(setting(self.config, "PITHOS_DATA", DEFAULTS)), block_size, algorithm)

    def parse_id(self, img_id: str, store: BlockStore) -> tuple[str, int]:
        """(hashmap hex, size); raises :class:`OperatorError`."""
        match = re.fullmatch(r"pithosmap://([0-9a-fA-F]+)/([0-9]+)", img_id)
        if not match or len(match.group(1)) != 2 * store.hash_length:
            raise OperatorError(
                f"invalid image id {img_id!r}: expected pithosmap://<hashmap as {2 * store.hash_length} "
                "hex digits>/<size in bytes>"
            )
        return match.group(1).lower(), int(match.group(2))

    def check(self, img_id: str) -> None:
        """Id syntax, settings, and that the hashmap exists in the local store."""
        store = self._store()
        hashmap, _ = self.parse_id(img_id, store)
        if not store.map_path(hashmap).is_file():
            raise OperatorError(f"img_id: hashmap {hashmap} not found under {store.root / 'maps'}")

    def open(self, img_id: str) -> ImageStream:
        """Open the hashmap; blocks are read (and verified) as the caller reads."""
        store = self._store()
        hashmap, size = self.parse_id(img_id, store)
        return BlockMapStream(store, hashmap, size)

    def cache_identity(self, img_id: str) -> CacheIdentity:
        """The id names the content (a hashmap of block hashes): nothing secret in it."""
        hashmap, size = self.parse_id(img_id, self._store())
        return CacheIdentity(public=f"pithosmap://{hashmap}/{size}", secret="", display=img_id)

    def open_if_changed(self, img_id: str, validators: Mapping[str, str]) -> ImageStream | None:
        """Content named by its hashes never changes: a copy with the same hashmap is always current."""
        hashmap, size = self.parse_id(img_id, self._store())
        if dict(validators) == BlockMapStream.validators_of(hashmap, size):
            return None
        return self.open(img_id)


class BlockStore:
    """Paths and hashing of a Pithos file block store (see the module docstring for the layout)."""

    def __init__(self, root: Path, block_size: int, algorithm: str) -> None:
        self.root = root
        self.block_size = block_size
        self.algorithm = algorithm
        self.empty_hash = hashlib.new(algorithm).digest()
        self.hash_length = len(self.empty_hash)

    @staticmethod
    def _fanout(base: Path, name: str) -> Path:
        return base / name[0:2] / name[2:4] / name[4:6] / name

    def map_path(self, hashmap_hex: str) -> Path:
        return self._fanout(self.root / "maps", hashmap_hex)

    def block_path(self, block_hex: str) -> Path:
        return self._fanout(self.root / "blocks", block_hex)

    def block_hash(self, data: bytes) -> bytes:
        """Pithos' block hash: trailing NUL bytes do not count."""
        return hashlib.new(self.algorithm, data.rstrip(b"\0")).digest()


class BlockMapStream(ImageStream):
    """The object's bytes, one verified block at a time (memory: one block)."""

    def __init__(self, store: BlockStore, hashmap: str, size: int) -> None:
        self._store = store
        self._hashmap = hashmap
        self.size = size
        self.position = 0
        self._blocks = math.ceil(size / store.block_size)
        self._index = 0
        self._block = b""  # stored bytes of the current block (maybe shorter than its length)
        self._block_length = 0  # its length within the object
        self._offset = 0  # read position inside the current block
        self._zeros = memoryview(bytes(0))
        self.validators = self.validators_of(hashmap, size)
        path = store.map_path(hashmap)
        try:
            self._map: BinaryIO | None = open(path, "rb")  # noqa: SIM115 - closed by close()
        except FileNotFoundError:
            raise SourceError(f"hashmap {hashmap} not found under {store.root / 'maps'}") from None
        except OSError as exc:
            raise SourceError(f"cannot read hashmap {hashmap}: {exc.strerror}") from None
        entries = path.stat().st_size // store.hash_length
        if entries < self._blocks or path.stat().st_size % store.hash_length:
            self.close()
            raise SourceError(
                f"hashmap {hashmap} lists {entries} blocks of {store.block_size} bytes, "
                f"too few for an object of {size} bytes"
            )

    @staticmethod
    def validators_of(hashmap: str, size: int) -> dict[str, str]:
        """What identifies the object: its hashmap and size (which name its content)."""
        return {"hashmap": hashmap, "size": str(size)}

    def _next_block(self) -> None:
        assert self._map is not None
        store = self._store
        digest = self._map.read(store.hash_length)
        if len(digest) != store.hash_length:
            raise SourceError(f"hashmap {self._hashmap} ends before block {self._index}")
        start = self._index * store.block_size
        self._block_length = min(store.block_size, self.size - start)
        self._offset = 0
        self._index += 1
        if digest == store.empty_hash:
            self._block = b""
            return
        name = digest.hex()
        try:
            with open(store.block_path(name), "rb") as block:
                data = block.read(store.block_size + 1)
        except FileNotFoundError:
            raise SourceError(
                f"block {name} of hashmap {self._hashmap} is missing from {store.root / 'blocks'}"
            ) from None
        except OSError as exc:
            raise SourceError(f"cannot read block {name} of hashmap {self._hashmap}: {exc.strerror}") from None
        if len(data) > store.block_size or store.block_hash(data) != digest:
            raise SourceError(f"block {name} of hashmap {self._hashmap} is corrupt (hash mismatch)")
        self._block = data

    def readinto(self, buffer: memoryview) -> int:
        """Copy from the current block (stored bytes, then its zero padding); load the next when done."""
        view = memoryview(buffer).cast("B")
        if not len(view) or self.position >= self.size:
            return 0
        if self._offset >= self._block_length:
            self._next_block()
        want = min(len(view), self._block_length - self._offset)
        stored = len(self._block)
        if self._offset < stored:
            count = min(want, stored - self._offset)
            view[:count] = memoryview(self._block)[self._offset : self._offset + count]
        else:
            count = want
            if len(self._zeros) < count:
                self._zeros = memoryview(bytes(min(max(count, 1 << 20), self._store.block_size)))
            count = min(count, len(self._zeros))
            view[:count] = self._zeros[:count]
        self._offset += count
        self.position += count
        return count

    def close(self) -> None:
        """Close the hashmap file."""
        hashmap, self._map = self._map, None
        if hashmap is not None:
            hashmap.close()
