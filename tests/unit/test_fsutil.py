"""helper.fsutil: guest paths resolved inside the guest root (with and without case), and the writes through it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helper import fsutil
from helper.commands import TaskError
from tests.fakeguest import make_guest


def test_resolve_stays_in_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hostname").symlink_to("/../../../../etc/passwd")
    (root / "etc" / "rel").symlink_to("../../../../../tmp")
    (root / "etc" / "loop").symlink_to("loop")
    (root / "var").symlink_to("etc")
    assert fsutil.resolve(root, "/etc/hostname") == root / "etc" / "passwd"
    assert fsutil.resolve(root, "/etc/rel/x") == root / "tmp" / "x"
    assert fsutil.resolve(root, "/var/../../../x") == root / "x"
    assert fsutil.resolve(root, "var/new/file") == root / "etc" / "new" / "file"
    assert fsutil.resolve(root, "/") == root
    with pytest.raises(fsutil.UnsafePathError):
        fsutil.resolve(root, "/etc/loop")
    assert fsutil.guest_path(root, root / "etc" / ".x") == "/etc/.x"
    assert fsutil.guest_path(root, root) == "/"


def test_write_text_keeps_mode_and_never_escapes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.write_text("precious\n")
    (root / "etc" / "hosts").symlink_to(outside)
    (root / "etc" / "shadow").write_text("old\n")
    os.chmod(root / "etc" / "shadow", 0o640)
    fsutil.write_text(root, "/etc/shadow", "new\n")
    assert (root / "etc" / "shadow").read_text() == "new\n"
    assert (root / "etc" / "shadow").stat().st_mode & 0o777 == 0o640
    with pytest.raises(fsutil.UnsafePathError, match="Refusing to edit /etc/hosts: it is a symbolic link"):
        fsutil.write_text(root, "/etc/hosts", "evil\n")  # an edit never goes through a link
    assert outside.read_text() == "precious\n"
    assert (root / "etc" / "hosts").is_symlink()
    assert fsutil.read_text(root, "/etc/shadow") == "new\n"


def test_resolve_ignoring_case_keeps_the_image_spelling(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "Windows/System32/config").mkdir(parents=True)
    (root / "Windows/System32/config/SOFTWARE").write_bytes(b"hive")
    (root / "Program Files").symlink_to("/Windows/System32")
    found = fsutil.resolve(root, "/windows/system32/CONFIG/software", ignore_case=True)
    assert found == root / "Windows/System32/config/SOFTWARE"
    assert fsutil.resolve(root, "/windows/system32/new/File.txt", ignore_case=True) == (
        root / "Windows/System32/new/File.txt"
    )
    assert fsutil.resolve(root, "/PROGRAM FILES/config", ignore_case=True) == root / "Windows/System32/config"
    assert fsutil.resolve(root, "/windows/system32") == root / "windows/system32"  # case matters by default


def test_resolve_ignoring_case_never_leaves_the_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "Windows").mkdir(parents=True)
    (tmp_path / "secret").write_text("precious\n")
    (root / "Windows/Escape").symlink_to("../../secret")
    (root / "Windows/Abs").symlink_to("/../../../secret")
    assert fsutil.resolve(root, "/windows/escape", ignore_case=True) == root / "secret"
    assert fsutil.resolve(root, "/WINDOWS/ABS", ignore_case=True) == root / "secret"


def test_resolve_without_following_the_last_component(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "var").symlink_to("etc")
    (root / "etc/link").symlink_to("/../../outside")
    assert fsutil.resolve(root, "/var/link", follow_last=False) == root / "etc/link"
    assert fsutil.resolve(root, "/var/link") == root / "outside"
    assert fsutil.entry(root, "/ETC/LINK", ignore_case=True) == root / "etc/link"
    for bad in ("relative", "/etc/../x", "/"):
        with pytest.raises(TaskError, match="Invalid path"):
            fsutil.entry(root, bad)


def test_read_optional(tmp_path: Path) -> None:
    root = make_guest(tmp_path / "root")
    assert fsutil.read_optional(root, "/etc/hostname") == "image-builder\n"
    assert fsutil.read_optional(root, "/etc/missing") is None
    assert fsutil.read_optional(root, "/etc") is None  # not a regular file


def test_write_file_replaces_a_symlink_instead_of_following_it(tmp_path: Path) -> None:
    root = make_guest(tmp_path / "root")
    outside = tmp_path / "outside"
    outside.write_text("precious\n")
    (root / "etc/evil").symlink_to("/../../outside")
    fsutil.write_file(root, "/etc/evil", b"new\n", mode=0o640, uid=1000, gid=1000)
    assert outside.read_text() == "precious\n"
    st = (root / "etc/evil").lstat()
    assert (root / "etc/evil").read_bytes() == b"new\n"
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o640, 1000, 1000)
    assert not [p for p in (root / "etc").iterdir() if p.name.startswith(".evil")]


def test_write_through_a_symlinked_directory_is_refused(tmp_path: Path) -> None:
    root = make_guest(tmp_path / "root")
    (tmp_path / "outdir").mkdir()
    (root / "outdir").mkdir()
    (root / "etc/link").symlink_to("../../outdir")
    with pytest.raises(fsutil.UnsafePathError, match=r"/etc/link is a symbolic link in the image \(to ../../outdir\)"):
        fsutil.write_file(root, "/etc/link/f", b"x", mode=0o600)
    with pytest.raises(fsutil.UnsafePathError):
        fsutil.remove(root, "/etc/link/passwd")
    assert not (tmp_path / "outdir/f").exists() and not (root / "outdir/f").exists()


def test_write_file_keeps_setuid_after_chown(tmp_path: Path) -> None:
    root = make_guest(tmp_path / "root")
    (root / "usr/bin").mkdir(parents=True)
    fsutil.write_file(root, "/usr/bin/tool", b"", mode=0o4755, uid=1000, gid=1000)
    assert (root / "usr/bin/tool").stat().st_mode & 0o7777 == 0o4755


def test_write_file_refuses_directories_and_bad_paths(tmp_path: Path) -> None:
    root = make_guest(tmp_path / "root")
    with pytest.raises(TaskError, match="is a directory"):
        fsutil.write_file(root, "/etc", b"", mode=0o644)
    for bad in ("relative", "/etc/../x", "/"):
        with pytest.raises(TaskError, match="Invalid path"):
            fsutil.write_file(root, bad, b"", mode=0o644)
    with pytest.raises(TaskError, match="directory does not exist"):
        fsutil.write_file(root, "/nope/x", b"", mode=0o644)


def test_make_dirs(tmp_path: Path) -> None:
    root = make_guest(tmp_path / "root")
    assert fsutil.make_dirs(root, "/srv/a/b", mode=0o750, uid=1000, gid=1001) == ["/srv", "/srv/a", "/srv/a/b"]
    st = (root / "srv/a").stat()
    assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o750, 1000, 1001)
    assert fsutil.make_dirs(root, "/srv/a/b", mode=0o700) == []
    with pytest.raises(TaskError, match="/etc/hostname exists in the image and is not a directory"):
        fsutil.make_dirs(root, "/etc/hostname/x", mode=0o755)


def test_make_dirs_through_a_symlink_is_refused(tmp_path: Path) -> None:
    root = make_guest(tmp_path / "root")
    (root / "var").symlink_to("/../../..")
    with pytest.raises(
        fsutil.UnsafePathError, match=r"/var is a symbolic link in the image .*: refusing to write /var/lib/x"
    ):
        fsutil.make_dirs(root, "/var/lib/x", mode=0o755)
    assert not (root / "lib").exists() and not (tmp_path / "lib").exists()


def test_remove_does_not_follow(tmp_path: Path) -> None:
    root = make_guest(tmp_path / "root")
    (root / "etc/link").symlink_to("/etc/passwd")
    assert fsutil.remove(root, "/etc/link") is True
    assert (root / "etc/passwd").exists()
    assert fsutil.remove(root, "/etc/link") is False
    with pytest.raises(TaskError):
        fsutil.remove(root, "/etc/ssh")


def test_write_and_make_dirs_ignoring_case_use_the_image_spelling(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "Windows/Setup").mkdir(parents=True)
    (root / "Windows/Setup/SetupComplete.cmd").write_bytes(b"old")
    created = fsutil.make_dirs(root, "/windows/setup/Scripts", mode=0o755, ignore_case=True)
    assert created == ["/windows/setup/Scripts"]
    assert (root / "Windows/Setup/Scripts").is_dir()
    fsutil.write_file(root, "/WINDOWS/SETUP/setupcomplete.CMD", b"new", mode=0o644, ignore_case=True)
    assert sorted(p.name for p in (root / "Windows/Setup").iterdir()) == ["Scripts", "SetupComplete.cmd"]
    assert (root / "Windows/Setup/SetupComplete.cmd").read_bytes() == b"new"


# --- the write policy --------------------------------------------------------------------------------


def layout_guest(root: Path) -> Path:
    """A guest with the symlinks of real layouts: merged /usr, /var/run, FreeBSD's /home, ostree's /root."""
    make_guest(root)
    for directory in ("usr/bin", "usr/home", "var/roothome", "run"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    (root / "home/alice").rename(root / "usr/home/alice")
    (root / "home").rmdir()
    (root / "root/.bashrc").rename(root / "var/roothome/.bashrc")
    (root / "root").rmdir()
    for link, target in {"bin": "usr/bin", "home": "usr/home", "var/run": "../run", "root": "/var/roothome"}.items():
        (root / link).symlink_to(target)
    return root


@pytest.mark.parametrize(
    ("path", "lands"),
    [
        ("/bin/tool", "usr/bin/tool"),
        ("/home/alice/.ssh/authorized_keys", "usr/home/alice/.ssh/authorized_keys"),
        ("/var/run/x.pid", "run/x.pid"),
        ("/root/.ssh/authorized_keys", "var/roothome/.ssh/authorized_keys"),
    ],
)
def test_writes_follow_the_layout_links(tmp_path: Path, path: str, lands: str) -> None:
    root = layout_guest(tmp_path / "root")
    parent = str(Path(path).parent)
    fsutil.make_dirs(root, parent, mode=0o700)
    fsutil.write_file(root, path, b"x", mode=0o600)
    assert (root / lands).read_bytes() == b"x"
    assert fsutil.directory(root, parent) == root / Path(lands).parent
    assert fsutil.remove(root, path) and not (root / lands).exists()


@pytest.mark.parametrize(
    ("link", "target", "path"),
    [
        ("home", "/etc", "/home/alice/x"),  # a layout link's name with a foreign target
        ("bin", "usr/sbin/../../etc", "/bin/x"),
        ("etc", "/root", "/etc/hostname"),
        ("root/.ssh", "/etc", "/root/.ssh/authorized_keys"),
        ("usr/home", "/etc/ssh", "/usr/home/alice/x"),
    ],
)
def test_writes_through_other_links_are_refused(tmp_path: Path, link: str, target: str, path: str) -> None:
    root = make_guest(tmp_path / "root")
    (root / "usr").mkdir(exist_ok=True)
    moved = root / link
    if moved.exists() and not moved.is_symlink():
        moved.rename(root / f"{link.replace('/', '-')}.old")
    moved.symlink_to(target)
    before = sorted(str(p) for p in root.rglob("*"))
    for write in (
        lambda: fsutil.write_file(root, path, b"x", mode=0o644),
        lambda: fsutil.write_text(root, path, "x"),
        lambda: fsutil.make_dirs(root, path, mode=0o755),
        lambda: fsutil.remove(root, path),
    ):
        with pytest.raises(fsutil.UnsafePathError, match=f"/{link} is a symbolic link in the image"):
            write()
    assert sorted(str(p) for p in root.rglob("*")) == before


def test_an_edit_never_goes_through_a_final_link_a_replacement_replaces_it(tmp_path: Path) -> None:
    root = make_guest(tmp_path / "root")
    (root / "etc/hostname").unlink()
    (root / "etc/hostname").symlink_to("shadow")
    with pytest.raises(fsutil.UnsafePathError, match="Refusing to edit /etc/hostname: it is a symbolic link"):
        fsutil.write_text(root, "/etc/hostname", "vm1\n")
    with pytest.raises(fsutil.UnsafePathError, match="Refusing to edit"):
        fsutil.write_file(root, "/etc/hostname", b"vm1\n", mode=0o644, edit=True)
    assert (root / "etc/shadow").read_text().startswith("root:*:")
    fsutil.write_file(root, "/etc/hostname", b"vm1\n", mode=0o644)
    assert not (root / "etc/hostname").is_symlink() and (root / "etc/hostname").read_text() == "vm1\n"
    assert (root / "etc/shadow").read_text().startswith("root:*:")


def test_nodes_are_replaced_and_directories_refused(tmp_path: Path) -> None:
    root = make_guest(tmp_path / "root")
    (root / "etc/hostname").unlink()
    os.mkfifo(root / "etc/hostname")
    assert fsutil.read_optional(root, "/etc/hostname") is None  # never opened: it would block
    fsutil.write_text(root, "/etc/hostname", "vm1\n")
    assert (root / "etc/hostname").read_text() == "vm1\n"
    (root / "etc/shadow").unlink()
    (root / "etc/shadow").mkdir()
    with pytest.raises(TaskError, match="Cannot write /etc/shadow: it is a directory in the image"):
        fsutil.write_text(root, "/etc/shadow", "x")


def test_a_symlink_loop_is_a_task_error(tmp_path: Path) -> None:
    root = make_guest(tmp_path / "root")
    (root / "etc/hostname").unlink()
    (root / "etc/hostname").symlink_to("loop/x")
    (root / "etc/loop").symlink_to("/etc/hostname")
    with pytest.raises(TaskError, match="too many levels of symbolic links in /etc/hostname"):
        fsutil.read_optional(root, "/etc/hostname")


def test_reads_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_guest(tmp_path / "root")
    monkeypatch.setattr(fsutil, "MAX_READ_BYTES", 64)
    with open(root / "etc/passwd", "r+b") as f:
        f.truncate(2 << 30)  # sparse: 2 GiB that cost nothing
    with pytest.raises(TaskError, match=r"/etc/passwd in the image is 2147483648 bytes, larger than"):
        fsutil.read_optional(root, "/etc/passwd")
    assert fsutil.read_bytes(root, "/etc/hostname") == b"image-builder\n"
    assert fsutil.read_bytes(root, "/etc/none") is None
