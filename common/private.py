"""Spool files are the node's user's alone: folders 0700, files 0600.

Received objects, results and the state database hold patient data, so no other local user may
read them. The node's processes run under umask 0o077 (``molsub`` sets it at start, and child
processes inherit it), so that whatever they create is private; ``make_private`` fixes a spool
made before, or by a process without that umask.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

PRIVATE_UMASK = 0o077
DIR_MODE = 0o700
FILE_MODE = 0o600


def set_private_umask() -> int:
    """Files and folders this process (and its children) creates: owner only. Returns the
    previous umask."""
    return os.umask(PRIVATE_UMASK)


def make_private(root: Path) -> int:
    """Folders under ``root`` (``root`` too) 0700 and files 0600; returns how many changed.

    Links are not followed: a link's target is not the spool's to change.
    """
    changed = 0
    for folder, dirs, files in os.walk(root):
        for path, mode in [(folder, DIR_MODE)] + [
            (os.path.join(folder, f), FILE_MODE) for f in files
        ]:
            try:
                st = os.lstat(path)
                if stat.S_ISLNK(st.st_mode) or stat.S_IMODE(st.st_mode) == mode:
                    continue
                os.chmod(path, mode)
            except FileNotFoundError:  # removed meanwhile (a temporary file)
                continue
            changed += 1
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(folder, d))]
    if changed:
        log.info("spool: made %d file(s) and folder(s) private to the node's user", changed)
    return changed
