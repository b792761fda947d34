"""The parent-death watch of the processes the platform starts (replicas, conversion workers):
each exits by itself when the process that started it goes away, so a server killed with
``kill -9`` leaves nothing running."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

log = logging.getLogger("modelplane.watchdog")
PERIOD_S = 0.5


def _watch(parent: int, before_exit: Callable[[], None]) -> None:
    while True:
        if os.getppid() != parent:
            log.warning("parent process %s is gone; exiting", parent)
            before_exit()
            os._exit(0)
        time.sleep(PERIOD_S)


def watch_parent(parent: int, before_exit: Callable[[], None] = lambda: None) -> None:
    """Exit this process (after ``before_exit``) once ``parent`` is no longer its parent. Give
    the parent's pid as the parent knew it, so a parent that died before this ran is seen."""
    threading.Thread(target=_watch, args=(parent, before_exit), daemon=True).start()
