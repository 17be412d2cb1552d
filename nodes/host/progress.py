"""A plain progress bar on stderr for the standalone host (ComfyUI has its own)."""

from __future__ import annotations

import sys
import time


class StderrProgress:
    def __init__(self, total: int, label: str = "", stream=None):
        self.total = max(int(total), 1)
        self.current = 0
        self.label = label
        self.stream = stream or sys.stderr
        self.started = time.monotonic()
        self._draw()

    def update(self, amount: int = 1) -> None:
        self.current = min(self.current + amount, self.total)
        self._draw()
        if self.current == self.total:
            self.stream.write("\n")
            self.stream.flush()

    def _draw(self) -> None:
        width = 30
        filled = int(width * self.current / self.total)
        elapsed = time.monotonic() - self.started
        bar = "#" * filled + "-" * (width - filled)
        self.stream.write(f"\r{self.label} [{bar}] {self.current}/{self.total} {elapsed:6.1f}s")
        self.stream.flush()
