"""Image containers and formats, decided from the bytes, never guessed by qemu.

* ``sniff``: what the first bytes are (libmagic, restricted to what sniffing needs), and whether
  they match the declared ``img_format``;
* ``streams``: the stream peeked at, and gzip/xz/zstd decoded in it with bounded memory;
* ``headers``: qcow2, VMDK, VHD, VHDX and VDI headers checked on the host (no backing files,
  external data, extents or parents; a virtual size that fits the disk);
* ``sandbox`` + ``convert`` (+ ``nbdserve``, which runs inside): those containers converted by
  qemu-storage-daemon as an unprivileged user in its own namespaces, with limits, from the very
  descriptor that was checked and hashed, its raw output read back over NBD;
* ``mbr``: the MBR prefix that makes an extdump/ntfsdump a whole disk.
"""
