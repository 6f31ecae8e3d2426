"""The node-local image cache: a remote image fetched once, kept for the next deployments.

``IMAGE_CACHE_DIR`` (default ``/var/cache/snf-image/images``, made 0700) holds
up to ``IMAGE_CACHE_SIZE`` bytes of images (``0``, the default, turns the
cache off), least recently used first out. Only remote sources take part
(http, https, ftp, ftps, pithos, pithosmap: those whose
:meth:`~.base.ImageSource.cache_identity` is not None); local images are
never copied.

An entry is named by a hash of

- the ``img_checksum`` when it is a sha256 or sha512 one: then a cached copy
  is used without contacting the server at all;
- else the source and the image's redacted URL: the copy is revalidated
  with a conditional request (ETag/Last-Modified, FTP MDTM/SIZE; a pithosmap
  id names its content and needs none). An image whose server gives no
  validators is not cached.

Either way the name also hashes, with a key kept in the directory, the
credentials that chose what the server showed (URL user info and query,
the pithos token), so a copy fetched with one set is not handed to another,
and no credential appears in a file name or the metadata.

The first deployment fills the entry while it streams (:mod:`.cachefill`):
the bytes are teed into an unnamed file in the directory, and only when the
stream ended whole (size as announced, ``img_checksum`` matching) is the
file fsynced and linked into place with its metadata (size, CRC-32,
validators). A killed deployment leaves nothing behind. A second deployment
of the same image waits on the entry's lock meanwhile, then finds it.

A hit is checked before it is used: size and CRC-32 against the metadata
(the directory is root's: this guards against accidental damage; the
image's authenticity is ``img_checksum``'s job, verified by the copy as
always). A damaged entry is removed and the image fetched again.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import secrets
import stat
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .base import CacheIdentity
from .local import LocalStream

if TYPE_CHECKING:
    from ..settings import Settings

log = logging.getLogger(__name__)

IMAGE_SUFFIX = ".img"
META_SUFFIX = ".json"
LOCK_SUFFIX = ".lock"
#: Temporary names while an entry is linked into place (a crash between two renames leaves one).
LINK_PREFIX = ".link-"
META_FORMAT = 1
#: Checksum algorithms strong enough to name content (md5 and sha1 have collisions).
CONTENT_ALGORITHMS = ("sha256", "sha512")
#: Longest validator kept (they come from the server).
MAX_VALIDATOR = 1024
_MAX_META = 64 * 1024
_CHUNK = 1024 * 1024
_ZEROS = bytes(_CHUNK)


@dataclass(frozen=True)
class CacheKey:
    """One entry's name and what it is."""

    name: str
    display: str
    #: The img_checksum the entry is named by (then it needs no revalidation), or None.
    checksum: str | None


@dataclass(frozen=True)
class EntryMeta:
    """What the metadata file records of an entry."""

    size: int
    crc32: int
    validators: dict[str, str]
    source: str
    checksum: str | None

    def to_json(self) -> bytes:
        fields = {"format": META_FORMAT, "size": self.size, "crc32": self.crc32, "validators": self.validators}
        return json.dumps({**fields, "source": self.source, "checksum": self.checksum}).encode()

    @classmethod
    def from_json(cls, data: bytes) -> EntryMeta:
        """Parse; ValueError for anything but what :meth:`to_json` writes."""
        raw = json.loads(data)
        if not isinstance(raw, dict) or raw.get("format") != META_FORMAT:
            raise ValueError("unknown metadata format")
        validators = raw.get("validators")
        size, crc = raw.get("size"), raw.get("crc32")
        if not (isinstance(size, int) and isinstance(crc, int) and isinstance(validators, dict)):
            raise ValueError("malformed metadata")
        if validators and not usable_validators(validators):
            raise ValueError("malformed validators")
        checksum = raw.get("checksum")
        return cls(size, crc, validators, str(raw.get("source", "")), checksum if isinstance(checksum, str) else None)


def usable_validators(validators: Any) -> bool:
    """Whether a copy could be revalidated with these: present, short, printable ASCII (they go into headers)."""

    def clean(text: object) -> bool:
        return isinstance(text, str) and len(text) <= MAX_VALIDATOR and all(" " <= ch <= "~" for ch in text)

    return bool(validators) and all(clean(k) and clean(v) for k, v in dict(validators).items())


class EntryLock:
    """An exclusive ``flock`` on one entry's lock file, robust against the file being removed meanwhile."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, path: Path, blocking: bool) -> EntryLock | None:
        """The lock, or None when ``blocking`` is False and somebody holds it."""
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                os.close(fd)
                return None
            held = os.fstat(fd)
            try:
                current = os.stat(path, follow_symlinks=False)
            except FileNotFoundError:
                current = None
            if current is not None and (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino):
                return cls(fd)
            os.close(fd)  # an eviction removed the file while we waited: lock the one there now

    def release(self) -> None:
        """Unlock (safe to call twice)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


class ImageCache:
    """The cache directory: entries, their locks, metadata and eviction."""

    def __init__(self, directory: Path, limit: int) -> None:
        self.directory = directory
        self.limit = limit

    @classmethod
    def from_settings(cls, settings: Settings) -> ImageCache | None:
        """The cache the settings describe, or None when it is off or its directory is unsafe to use."""
        if settings.image_cache_size <= 0:
            return None
        cache = cls(settings.image_cache_dir, settings.image_cache_size)
        problem = cache.prepare()
        if problem:
            log.warning("image cache not used: %s", problem)
            return None
        return cache

    def prepare(self) -> str | None:
        """Make the directory (0700, ours, not a symlink); a reason not to use it, or None."""
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            info = os.lstat(self.directory)
            if not stat.S_ISDIR(info.st_mode):
                return f"IMAGE_CACHE_DIR {self.directory} is not a directory"
            if info.st_uid != os.geteuid():
                return f"IMAGE_CACHE_DIR {self.directory} belongs to uid {info.st_uid}, not to us"
            if stat.S_IMODE(info.st_mode) != 0o700:
                os.chmod(self.directory, 0o700, follow_symlinks=False)
        except OSError as exc:
            return f"cannot use IMAGE_CACHE_DIR {self.directory}: {exc.strerror}"
        return None

    # -- names -------------------------------------------------------------------------------------

    def _path(self, name: str, suffix: str) -> Path:
        return self.directory / f"{name}{suffix}"

    def _secret_key(self) -> bytes:
        """The directory's own key for hashing credentials into names (made once, 0600)."""
        path = self.directory / ".key"
        try:
            return path.read_bytes()
        except FileNotFoundError:
            pass
        fresh = self.directory / f".key-{secrets.token_hex(8)}"
        fd = os.open(fresh, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, secrets.token_bytes(32))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(fresh, path)  # never replaces a key another deployment made first
        except FileExistsError:
            pass
        finally:
            fresh.unlink()
        return path.read_bytes()

    def key(self, source: str, identity: CacheIdentity, checksum: str | None) -> CacheKey:
        """The entry for an image of ``source`` (named by its checksum when a strong one is given)."""
        secret = ""
        if identity.secret:
            secret = hmac.new(self._secret_key(), identity.secret.encode(), "sha256").hexdigest()
        algorithm = (checksum or "").partition(":")[0].lower()
        if checksum and algorithm in CONTENT_ALGORITHMS:
            material, by = f"checksum\0{checksum.lower()}\0{secret}", checksum.lower()
        else:
            material, by = f"source\0{source}\0{identity.public}\0{secret}", None
        return CacheKey(hashlib.sha256(material.encode()).hexdigest(), identity.display, by)

    # -- entries -----------------------------------------------------------------------------------

    def lock(self, key: CacheKey) -> EntryLock:
        """The entry's lock; waits (saying so) while another deployment fills or checks it."""
        path = self._path(key.name, LOCK_SUFFIX)
        held = EntryLock.acquire(path, blocking=False)
        if held is None:
            log.info("waiting for another deployment that is fetching %s", key.display)
            held = EntryLock.acquire(path, blocking=True)
        assert held is not None
        return held

    def read_meta(self, key: CacheKey) -> EntryMeta | None:
        """The entry's metadata; None when there is no entry (a damaged one is removed)."""
        try:
            fd = os.open(self._path(key.name, META_SUFFIX), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        try:
            with os.fdopen(fd, "rb") as fh:
                return EntryMeta.from_json(fh.read(_MAX_META))
        except (OSError, ValueError) as exc:
            log.warning("cached copy of %s has damaged metadata (%s); fetching it again", key.display, exc)
            self.remove(key.name)
            return None

    def open_verified(self, key: CacheKey, meta: EntryMeta) -> LocalStream | None:
        """The entry as a local stream if its size and CRC-32 match the metadata; else remove it, None."""
        path = self._path(key.name, IMAGE_SUFFIX)
        try:
            file = open(path, "rb", buffering=0, opener=_no_follow)  # noqa: SIM115 - handed to the stream
        except OSError:
            problem = "its image file is missing"
        else:
            problem = _damage(file, meta)
            if problem is None:
                file.seek(0)
                os.utime(self._path(key.name, META_SUFFIX))  # most recently used
                log.info("image %s comes from the node's image cache", key.display)
                return LocalStream(path, file)
            file.close()
        log.warning("cached copy of %s is damaged (%s); fetching it again", key.display, problem)
        self.remove(key.name)
        return None

    def commit(self, key: CacheKey, fd: int, meta: EntryMeta) -> None:
        """Make the unnamed file ``fd`` (fully written) the entry, atomically; raises OSError."""
        os.fsync(fd)
        image, meta_name = f"{key.name}{IMAGE_SUFFIX}", f"{key.name}{META_SUFFIX}"
        link = f"{LINK_PREFIX}{key.name}-{secrets.token_hex(4)}"
        dir_fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(meta_name, dir_fd=dir_fd)  # no old metadata may describe the new image
            try:
                # linkat(AT_SYMLINK_FOLLOW) names the unnamed file (os.link uses it only with a dir fd)
                os.link(f"/proc/self/fd/{fd}", link, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=True)
                os.replace(link, image, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                _write_new(dir_fd, link, meta.to_json())
                os.replace(link, meta_name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(link, dir_fd=dir_fd)
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def new_file(self) -> int:
        """An unnamed file in the directory to fill (gone by itself unless :meth:`commit` names it)."""
        return os.open(self.directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)

    def remove(self, name: str) -> None:
        """Remove an entry's files (its lock file is left to whoever holds it)."""
        for suffix in (META_SUFFIX, IMAGE_SUFFIX):
            self._path(name, suffix).unlink(missing_ok=True)

    # -- size --------------------------------------------------------------------------------------

    def evict(self, room: int = 0) -> None:
        """Remove least recently used entries until ``room`` more bytes fit in the limit.

        Entries being filled or checked (their lock held) are left alone, and
        so is the lock file of an entry that is used.
        """
        with _DirectoryLock(self.directory / LOCK_SUFFIX):
            entries = []
            for meta_path in self.directory.glob(f"*{META_SUFFIX}"):
                name = meta_path.name[: -len(META_SUFFIX)]
                try:
                    used = meta_path.stat().st_mtime
                    size = self._path(name, IMAGE_SUFFIX).stat().st_size
                except FileNotFoundError:
                    size, used = 0, 0.0
                entries.append((used, name, size))
            self._remove_orphans({name for _, name, _ in entries})
            total = sum(size for _, _, size in entries)
            for _, name, size in sorted(entries):
                if total + room <= self.limit:
                    break
                lock_path = self._path(name, LOCK_SUFFIX)
                held = EntryLock.acquire(lock_path, blocking=False)
                if held is None:
                    continue
                try:
                    log.info("image cache: evicting %s (%d bytes)", name, size)
                    self.remove(name)
                    lock_path.unlink(missing_ok=True)
                finally:
                    held.release()
                total -= size

    def _remove_orphans(self, named: set[str]) -> None:
        """Image files without metadata and leftover link names of a crashed commit, when nobody fills them."""
        for path in self.directory.iterdir():
            if path.name.startswith(LINK_PREFIX):
                name = path.name[len(LINK_PREFIX) :].rsplit("-", 1)[0]
            elif path.name.endswith(IMAGE_SUFFIX) and path.name[: -len(IMAGE_SUFFIX)] not in named:
                name = path.name[: -len(IMAGE_SUFFIX)]
            else:
                continue
            held = EntryLock.acquire(self._path(name, LOCK_SUFFIX), blocking=False)
            if held is not None:
                try:
                    if path.name.startswith(LINK_PREFIX) or not self._path(name, META_SUFFIX).exists():
                        path.unlink(missing_ok=True)
                finally:
                    held.release()


class _DirectoryLock:
    """The directory-wide lock eviction holds."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock: EntryLock | None = None

    def __enter__(self) -> None:
        self._lock = EntryLock.acquire(self._path, blocking=True)

    def __exit__(self, *exc: object) -> None:
        if self._lock is not None:
            self._lock.release()


def _no_follow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC)


def _damage(file: Any, meta: EntryMeta) -> str | None:
    """What is wrong with an entry's file compared with its metadata, or None."""
    info = os.fstat(file.fileno())
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    if info.st_size != meta.size:
        return f"size {info.st_size}, recorded {meta.size}"
    crc = 0
    buffer = memoryview(bytearray(_CHUNK))
    # its holes are not read (that would fill the page cache with zeros): their CRC is computed
    with LocalStream(None, os.fdopen(os.dup(file.fileno()), "rb", buffering=0)) as stream:
        while True:
            hole = stream.skip_hole()
            for step in range(0, hole, _CHUNK):
                crc = zlib.crc32(_ZEROS[: min(_CHUNK, hole - step)], crc)
            count = stream.readinto(buffer)
            if not count and not hole:
                break
            crc = zlib.crc32(buffer[:count], crc)
    if crc != meta.crc32:
        return "CRC-32 mismatch"
    return None


def _write_new(dir_fd: int, name: str, data: bytes) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600, dir_fd=dir_fd)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
