"""Files and folders that appear complete or not at all.

Every writer in yonos that produces a result file (images, PNG bands, reports, JSON, plots, the chain's hand-off
checkpoint) writes a temporary file beside its target, in the same folder so that the rename cannot cross file
systems, and renames it into place only once the content is whole. An exception (Ctrl-C included) deletes the
temporary and leaves the target as it was. Folders (exported pipelines, SD-layout bases) are staged the same way
and swapped in whole: :func:`atomic_folder`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


def temporary_beside(path: str | Path) -> Path:
    """A new empty file in ``path``'s folder, hidden (``.name.XXXX.ext``) and keeping ``path``'s extension so that
    writers choosing a format by extension (Pillow, matplotlib) pick the target's."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(descriptor)
    return Path(temporary)


def publish(temporary: str | Path, path: str | Path) -> Path:
    """Give ``temporary`` the mode an ordinary ``open`` would have (``mkstemp`` makes 0600) and rename it onto
    ``path`` (atomic on POSIX)."""
    usual_permissions(Path(temporary))
    os.replace(temporary, path)
    return Path(path)


def usual_permissions(path: Path, folder: bool = False) -> None:
    """``0o666`` (``0o777`` for a folder) less the process's umask, as ``open(path, "w")`` or ``mkdir`` would have
    created it (``mkstemp`` / ``mkdtemp`` make 0600 / 0700)."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, (0o777 if folder else 0o666) & ~mask)


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """``with atomic_write(target) as temporary: <write temporary>``: ``target`` appears when the block ends
    normally; on an exception the temporary is deleted and ``target`` is untouched."""
    temporary = temporary_beside(path)
    try:
        yield temporary
        publish(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> Path:
    """``path.write_text(text)``, atomically."""
    with atomic_write(path) as temporary:
        temporary.write_text(text)
    return Path(path)


@contextlib.contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """``with atomic_folder(out) as staging: <fill staging>``: a hidden folder beside ``out`` that replaces ``out``
    when the block ends normally (an existing ``out`` is set aside first and deleted only once the new one is in);
    on an exception the staging folder is deleted and ``out`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.staging-", dir=path.parent))
    try:
        yield staging
        _swap_folder(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _swap_folder(staging: Path, out: Path) -> None:
    usual_permissions(staging, folder=True)
    if not out.exists() and not out.is_symlink():
        os.replace(staging, out)
        return
    if out.is_dir() and not out.is_symlink() and not any(out.iterdir()):
        out.rmdir()
        os.replace(staging, out)
        return
    previous = Path(tempfile.mkdtemp(prefix=f".{out.name}.previous-", dir=out.parent))
    os.replace(out, previous / out.name)
    try:
        os.replace(staging, out)
    except BaseException:
        os.replace(previous / out.name, out)
        previous.rmdir()
        raise
    shutil.rmtree(previous, ignore_errors=True)
