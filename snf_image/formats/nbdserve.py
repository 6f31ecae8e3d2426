"""Inside the converter's sandbox: the image's file descriptor, served to qemu over NBD.

This program runs in the sandbox (see ``sandbox.py``) as the unprivileged converter user, never
on the host. qemu opens images by path, and opening an inherited descriptor again through
``/dev/fd/N`` checks the file's permissions against the converter's user: an image only root
may read could not be read that way, and a path would be looked up again. So this program keeps
the very descriptor the host checked and hashed and answers qemu-storage-daemon's NBD reads from
it with ``sendfile`` at explicit offsets: never re-opened, its offset never moved. Read-only, simple replies only, one
client on one end of a socket pair. Standard library only: the sandbox holds nothing else of ours.

usage: python3 -I -S -c "$(cat nbdserve.py)" IMAGE_FD SOCKET_FD COMMAND_FDS -- COMMAND...

COMMAND (qemu-storage-daemon) gets the other end of the socket pair on its command line; this
program starts it with exactly COMMAND_FDS (comma-separated) open, closes its own copies of
them, serves IMAGE_FD on SOCKET_FD until the client leaves, and exits with COMMAND's status.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys

NBDMAGIC = b"NBDMAGIC"
IHAVEOPT = 0x49484156454F5054
OPTION_REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698

FLAG_FIXED_NEWSTYLE = 1
FLAG_NO_ZEROES = 2
TRANSMISSION_FLAGS = 1 | 2  # HAS_FLAGS | READ_ONLY

OPT_EXPORT_NAME, OPT_ABORT, OPT_INFO, OPT_GO = 1, 2, 6, 7
REP_ACK, REP_INFO = 1, 3
REP_ERR_UNSUP, REP_ERR_INVALID = (1 << 31) + 1, (1 << 31) + 3
INFO_EXPORT = 0

CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH = 0, 1, 2, 3
EINVAL = 22

MAX_OPTION_LENGTH = 4096
MAX_READ = 32 * 1024 * 1024


class ClientGone(Exception):
    """The client closed the connection or broke the protocol: stop serving."""


def receive(conn: socket.socket, length: int) -> bytes:
    data = bytearray()
    while len(data) < length:
        chunk = conn.recv(length - len(data))
        if not chunk:
            raise ClientGone
        data += chunk
    return bytes(data)


def option_reply(conn: socket.socket, option: int, reply: int, payload: bytes = b"") -> None:
    conn.sendall(struct.pack(">QIII", OPTION_REPLY_MAGIC, option, reply, len(payload)) + payload)


def negotiate(conn: socket.socket, size: int) -> None:
    """Fixed newstyle handshake: answer EXPORT_NAME, INFO and GO, refuse every other option."""
    conn.sendall(NBDMAGIC + struct.pack(">QH", IHAVEOPT, FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES))
    (client_flags,) = struct.unpack(">I", receive(conn, 4))
    if not client_flags & FLAG_FIXED_NEWSTYLE:
        raise ClientGone
    export = struct.pack(">QH", size, TRANSMISSION_FLAGS)
    while True:
        magic, option, length = struct.unpack(">QII", receive(conn, 16))
        if magic != IHAVEOPT or length > MAX_OPTION_LENGTH:
            raise ClientGone
        data = receive(conn, length)
        if option == OPT_EXPORT_NAME:
            conn.sendall(export if client_flags & FLAG_NO_ZEROES else export + bytes(124))
            return
        if option == OPT_ABORT:
            option_reply(conn, option, REP_ACK)
            raise ClientGone
        if option in (OPT_INFO, OPT_GO):
            if length < 6 or 4 + struct.unpack_from(">I", data)[0] + 2 > length:
                option_reply(conn, option, REP_ERR_INVALID)
                continue
            option_reply(conn, option, REP_INFO, struct.pack(">H", INFO_EXPORT) + export)
            option_reply(conn, option, REP_ACK)
            if option == OPT_GO:
                return
            continue
        option_reply(conn, option, REP_ERR_UNSUP)


def transmit(conn: socket.socket, image_fd: int, size: int) -> None:
    """Answer READ (and FLUSH) requests until DISC; anything else is refused with EINVAL."""
    while True:
        magic, _flags, command, cookie, offset, length = struct.unpack(">IHHQQI", receive(conn, 28))
        if magic != REQUEST_MAGIC:
            raise ClientGone
        if command == CMD_DISC:
            return
        if command == CMD_WRITE:  # a read-only export; its payload is not ours to frame
            raise ClientGone
        reply = struct.pack(">IIQ", SIMPLE_REPLY_MAGIC, 0, cookie)
        if command == CMD_READ and length <= MAX_READ and offset + length <= size:
            conn.sendall(reply)
            send_range(conn, image_fd, offset, length)
        elif command == CMD_FLUSH:
            conn.sendall(reply)
        else:
            conn.sendall(struct.pack(">IIQ", SIMPLE_REPLY_MAGIC, EINVAL, cookie))


def send_range(conn: socket.socket, image_fd: int, offset: int, length: int) -> None:
    """The file's bytes straight from the page cache to the socket (sendfile); zeros past its end."""
    while length > 0:
        sent = os.sendfile(conn.fileno(), image_fd, offset, length)
        if sent == 0:  # the file shrank under us: what is gone reads as zeros, never short
            conn.sendall(bytes(length))
            return
        offset += sent
        length -= sent


def main(argv: list[str]) -> int:
    if len(argv) < 5 or argv[3] != "--":
        sys.stderr.write(__doc__ or "")
        return 2
    image_fd, socket_fd, command = int(argv[0]), int(argv[1]), argv[4:]
    command_fds = [int(fd) for fd in argv[2].split(",")]
    conn = socket.socket(fileno=socket_fd)
    size = os.fstat(image_fd).st_size
    child = subprocess.Popen(command, stdin=subprocess.DEVNULL, pass_fds=command_fds)
    for fd in command_fds:  # once the child is gone, its sockets must close
        os.close(fd)
    try:
        negotiate(conn, size)
        transmit(conn, image_fd, size)
    except (ClientGone, OSError):
        pass
    finally:
        conn.close()
    status = child.wait()
    return 128 - status if status < 0 else status  # killed by a signal: the shell's 128 + N


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
