"""Files written whole: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import os
from typing import Callable


def replace_atomically(path: str, write: Callable[[str], None]) -> None:
    """Make `path` by write(tmp) on a name of its own in the same directory, then rename
    it over `path`. Concurrent writers each rename a whole file; a failed or interrupted
    write removes its temporary file and leaves `path` as it was."""
    tmp = f"{path}.{os.getpid()}-{os.urandom(4).hex()}.tmp"
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
