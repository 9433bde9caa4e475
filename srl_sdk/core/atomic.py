"""Crash-safe replacement of files and folders: the final name always holds a complete version.

Builds (GGUF, ONNX, merged models), training checkpoints (`final/`, `adapter/`) and run files are
written under a temporary name in the destination folder and then put in place. A crash, a kill or
a power loss at any moment must leave, under the final name, either the complete old version or
the complete new one: never a mix, never a file whose blocks did not reach the disk, never nothing.
The recipe, as databases and package managers do it:

1. write under a temporary name in the same folder (same file system, so renames are atomic);
2. fsync every file and folder written: `rename` is atomic but not durable, and after a power
   loss a renamed file can be empty if its data was still in the page cache (ext4, xfs);
3. put it in place: a file with `os.replace` (atomic on POSIX); a folder by exchanging the two
   names atomically (Linux `renameat2(RENAME_EXCHANGE)`), so the final name never disappears.
   Where the file system cannot exchange, the old folder is renamed aside, the new one in, and a
   final name found missing later (`restore_aside`, run before every swap) gets the old one back;
4. fsync the parent folder, so the rename itself is on disk;
5. delete the old version last.

Every caller in the SDK goes through this module (edge/files.py, training's run files and stage
folders, the converter caches), so the rules are in one place.
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
from pathlib import Path

_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100
_renameat2 = None  # resolved on first use: libc's renameat2, or False where it does not exist


def fsync_file(path: str | os.PathLike[str]) -> None:
    """Flush a file's data and metadata to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (names created, renamed or removed in it) to the disk.

    Some platforms and file systems cannot fsync a folder (EINVAL, or no O_DIRECTORY): there the
    rename's durability is the file system's own business, and nothing more can be done."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        if sys.platform.startswith("linux"):
            raise
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(fd)


def fsync_tree(path: str | os.PathLike[str]) -> None:
    """fsync every file of a folder, then every folder from the deepest up, the folder itself last."""
    for root, _dirs, files in os.walk(path, topdown=False):
        for name in files:
            file = os.path.join(root, name)
            if not os.path.islink(file):
                fsync_file(file)
        fsync_dir(root)


def replace_file(temp: str | os.PathLike[str], final: str | os.PathLike[str]) -> None:
    """Put the complete file `temp` in place of `final` (same folder), durably."""
    final = Path(final)
    fsync_file(temp)
    os.replace(temp, final)
    fsync_dir(final.parent)


def write_atomic(path: str | os.PathLike[str], data: str | bytes) -> Path:
    """Write `data` (text is UTF-8) to `path` so that `path` holds the old or the new content, whole."""
    path = Path(path)
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        with open(temp, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def aside_name(final: Path) -> Path:
    """Where the old folder waits while a non-exchanging swap puts the new one in."""
    return final.with_name(f".{final.name}.old")


def restore_aside(final: str | os.PathLike[str]) -> bool:
    """A swap cut short between its two renames left `final` missing and the old folder aside:
    put the old one back. True if something was restored. Cheap; call before reading `final`."""
    final = Path(final)
    aside = aside_name(final)
    if final.exists() or not aside.is_dir():
        return False
    os.rename(aside, final)
    fsync_dir(final.parent)
    return True


def replace_dir(temp: str | os.PathLike[str], final: str | os.PathLike[str]) -> None:
    """Put the complete folder `temp` in place of `final` (same parent), durably, never leaving
    `final` without a complete version. `temp` is gone afterwards (it holds the old version
    for a moment and is then deleted)."""
    temp, final = Path(temp), Path(final)
    fsync_tree(temp)
    restore_aside(final)
    if not final.exists():
        os.rename(temp, final)
        fsync_dir(final.parent)
        return
    if _exchange(temp, final):  # final: the new version; temp: the old one
        fsync_dir(final.parent)
        shutil.rmtree(temp, ignore_errors=True)
        return
    aside = aside_name(final)
    shutil.rmtree(aside, ignore_errors=True)
    os.rename(final, aside)
    try:
        os.rename(temp, final)
    except BaseException:
        os.rename(aside, final)  # put the old version back before reporting the failure
        raise
    fsync_dir(final.parent)
    shutil.rmtree(aside, ignore_errors=True)


def place_dir(temp: str | os.PathLike[str], final: str | os.PathLike[str]) -> None:
    """Put the complete folder `temp` at `final` if `final` is absent or empty (first writer wins:
    OSError ENOTEMPTY/EEXIST when another process already put its complete version there)."""
    temp, final = Path(temp), Path(final)
    fsync_tree(temp)
    os.rename(temp, final)
    fsync_dir(final.parent)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two names atomically (Linux renameat2 RENAME_EXCHANGE). False where the platform or the
    file system cannot (the caller then renames aside); other errors are raised."""
    global _renameat2
    if _renameat2 is None:
        _renameat2 = _load_renameat2()
    if not _renameat2:
        return False
    import ctypes

    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(err, f"cannot exchange {a} and {b}: {os.strerror(err)}")


def _load_renameat2():
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.renameat2  # glibc >= 2.28, musl >= 1.2.2
    except (OSError, AttributeError):
        return False
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function
