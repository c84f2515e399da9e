"""Audit progress: a bar on a terminal, plain periodic lines otherwise (logs, cron, CI)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    """Tracks shards and images done; renders to ``stream`` (stderr by default)."""

    def __init__(self, n_listed: int, n_todo: int, n_shards: int, stream: TextIO | None = None,
                 interval: float = 10.0, tty: bool | None = None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.n_listed, self.n_todo, self.n_shards = n_listed, n_todo, n_shards
        self.shards_done = 0
        self.objects_done = 0
        self.images = 0
        self.started = time.monotonic()
        self.interval = interval
        self._last_line = float("-inf")  # the first update always prints

    def rate(self) -> float:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        return self.objects_done / elapsed

    def eta_seconds(self) -> float | None:
        r = self.rate()
        return (self.n_todo - self.objects_done) / r if r > 0 else None

    def text(self) -> str:
        eta = self.eta_seconds()
        eta_s = "--" if eta is None else time.strftime("%H:%M:%S", time.gmtime(eta))
        return (
            f"listed {self.n_listed}  shards {self.shards_done}/{self.n_shards}  "
            f"objects {self.objects_done}/{self.n_todo}  {self.rate():.1f} obj/s  left {eta_s}"
        )

    def update(self, n_objects: int, n_images: int = 0) -> None:
        self.shards_done += 1
        self.objects_done += n_objects
        self.images += n_images
        now = time.monotonic()
        if self.tty:
            width = 30
            frac = self.objects_done / self.n_todo if self.n_todo else 1.0
            bar = "#" * int(frac * width) + "-" * (width - int(frac * width))
            self.stream.write(f"\r[{bar}] {self.text()}")
            if self.shards_done == self.n_shards:
                self.stream.write("\n")
            self.stream.flush()
        elif now - self._last_line >= self.interval or self.shards_done == self.n_shards:
            self._last_line = now
            self.stream.write(f"radlint: {self.text()}\n")
            self.stream.flush()
