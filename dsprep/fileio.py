"""Write a file so that its final name is always whole: a temporary sibling, then a rename."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomic(
    path: str | os.PathLike,
    data: str | bytes,
    *,
    tmp: str | os.PathLike | None = None,
    fsync: bool = False,
) -> Path:
    """Write ``data`` (text is UTF-8) to ``path`` through ``tmp`` and ``os.replace``.

    A crash at any moment leaves either the old file or the new one under ``path``, never half
    of one; the temporary file is removed when the write fails.

    Args:
        path: the final name.
        data: the whole content.
        tmp: the temporary name, in the same folder (default: ``path`` + ``.partial``).
        fsync: flush the bytes to the disk before the rename (for files a resume depends on).
    """
    path = Path(path)
    tmp = Path(tmp) if tmp is not None else path.with_name(path.name + ".partial")
    raw = data.encode("utf-8") if isinstance(data, str) else data
    try:
        with open(tmp, "wb") as fh:
            fh.write(raw)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
