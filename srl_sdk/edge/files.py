"""Atomic build outputs: a build appears under its final name complete, or not at all.

Exports take seconds to minutes and can be killed, run out of disk, or fail half way. Everything
is written under a hidden temporary name in the destination folder (same file system, so the
final `os.replace` is atomic) and renamed only after it is complete; on any failure the
temporary is removed. A full disk (ENOSPC) becomes an ExportError that says so. Files and
folders are fsynced before and after the rename, and a folder replacing an earlier build is
swapped in atomically (srl_sdk/core/atomic.py), so the final name always holds a complete build.

A process killed outright (SIGKILL, power loss) cannot clean up: its hidden `.NAME.PID-….partial`
entries stay behind, never under the final name. The temporary names carry the writer's PID, so
the next export to the same name removes the leftovers of writers that are no longer alive (and
never those of an export still running beside it).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from srl_sdk.core.atomic import replace_dir, replace_file
from srl_sdk.errors import ExportError


def disk_full_error(path: Path, exc: OSError) -> ExportError:
    return ExportError(
        f"the disk filled up while writing {path} ({exc.strerror or exc}); nothing was left under "
        "the final name: free some space (or pass --out on another disk) and run the export again"
    )


@contextlib.contextmanager
def staged_file(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside `final`; on success it is renamed to `final`."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_partials(final)
    handle, name = tempfile.mkstemp(prefix=_temp_prefix(final), suffix=".partial", dir=final.parent)
    os.close(handle)
    temp = Path(name)
    try:
        yield temp
        if not temp.is_file() or temp.stat().st_size == 0:
            raise ExportError(f"the export wrote nothing to {final}; see the messages above")
        os.chmod(temp, 0o666 & ~_umask())  # mkstemp makes 0600; a build is an ordinary file
        replace_file(temp, final)  # fsync, rename, fsync the folder: srl_sdk/core/atomic.py
    except OSError as exc:
        temp.unlink(missing_ok=True)
        if exc.errno == errno.ENOSPC:
            raise disk_full_error(final, exc) from exc
        raise ExportError(f"could not write {final}: {exc}") from exc
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `final`; on success it replaces `final`."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_partials(final)
    temp = Path(tempfile.mkdtemp(prefix=_temp_prefix(final), suffix=".partial", dir=final.parent))
    try:
        yield temp
        if not any(temp.iterdir()):
            raise ExportError(f"the export wrote nothing to {final}; see the messages above")
        os.chmod(temp, 0o777 & ~_umask())  # mkdtemp makes 0700; a build is an ordinary folder
        replace_dir(temp, final)  # an earlier build stays in place until the new one is whole
    except OSError as exc:
        shutil.rmtree(temp, ignore_errors=True)
        if exc.errno == errno.ENOSPC:
            raise disk_full_error(final, exc) from exc
        raise ExportError(f"could not write {final}: {exc}") from exc
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise


def _temp_prefix(final: Path) -> str:
    return f".{final.name}.{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_dead_partials(final: Path) -> list[Path]:
    """Delete the temporaries that killed exports to `final` left behind; return what was removed."""
    removed = []
    pattern = re.compile(rf"^\.{re.escape(final.name)}\.(\d+)-.*\.partial(\..*)?$")
    for entry in final.parent.iterdir():
        match = pattern.match(entry.name)
        if not match or _alive(int(match.group(1))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def size_of(path: Path) -> int:
    """Bytes of a file, or of every file in a folder."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size
