"""Write a file completely or not at all: a temporary name beside it, fsync, then rename."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

# Exclusive create (never follows or reuses an existing name); binary on Windows; not inherited.
_CREATE_FLAGS = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
                 | getattr(os, "O_CLOEXEC", 0))
_TRIES = 100


def _create_temp(folder: Path, name: str) -> tuple[int, Path]:
    """Create `.<name>.<random>.tmp` in `folder` with mode 0666, which the kernel masks by umask.

    tempfile.mkstemp would give 0600: outputs a web server or another user could not read.
    Asking open(2) for 0666 gives exactly what `open(path, "w")` gives (umask and default ACLs
    applied by the kernel), without reading the umask (os.umask can only be read by setting it,
    which races with other threads creating files).
    """
    for _ in range(_TRIES):
        tmp = folder / f".{name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, _CREATE_FLAGS, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{folder}: could not find a free temporary name for {name} in {_TRIES} tries")


@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb", encoding: str | None = None
                ) -> Iterator[IO]:
    """Open a temporary file in `path`'s folder; on a clean exit it replaces `path`.

    A crash or exception inside the block removes the temporary file, so readers only ever see
    the old file or the complete new one (rename is atomic on POSIX within one filesystem).
    The file gets the usual permissions of a new file (0666 minus the umask), also when it
    replaces an existing file whatever that file's mode was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path.parent, path.name)
    try:
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
