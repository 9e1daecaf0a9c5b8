"""What ``archlint check`` shows on stderr while it works.

On a terminal: one status line, redrawn in place, with the files done of the total, the
models being analysed (the stage each worker reported last) and the time so far; it is
cleared before anything else is printed. Elsewhere (a log, CI, a pipe): one line per file,
``archlint: checking PATH``, as the file is taken up. With ``-q``: nothing.

A worker's own log lines start by clearing the status line on a terminal (``worker._child``),
so they do not run into it; what the model's code prints may still land after it.
"""

from __future__ import annotations

import shutil
import sys
import threading
import time
from pathlib import Path
from typing import TextIO

# How often the status line is redrawn when nothing happens (the time keeps counting).
TICK = 1.0


class Progress:
    """Thread-safe: the files are analysed in several threads at once (``archlint.jobs``)."""

    def __init__(self, total: int, *, quiet: bool = False, stream: TextIO | None = None, terminal: bool | None = None):
        self.stream = stream if stream is not None else sys.stderr
        self.quiet = quiet
        self.terminal = (terminal if terminal is not None else _is_terminal(self.stream)) and not quiet
        self.total = total
        self.done = 0
        # Files being analysed, in the order they started: {path: "model (stage)" or None}.
        self.running: dict[str, str | None] = {}
        self._start = time.monotonic()
        self._lock = threading.RLock()
        self._shown = False
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def __enter__(self) -> "Progress":
        if self.terminal:
            self._ticker = threading.Thread(target=self._tick, name="archlint-progress", daemon=True)
            self._ticker.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        self.clear()

    def started(self, path: Path | str) -> None:
        with self._lock:
            self.running[_key(path)] = None
            if self.terminal:
                self._draw()
            elif not self.quiet:
                self.stream.write(f"archlint: checking {path}\n")
                self.stream.flush()

    def stage(self, path: Path | str, stage: str, model: str | None) -> None:
        """What a worker reported (``worker.Isolated.on_stage``)."""
        with self._lock:
            key = _key(path)
            if key in self.running:
                self.running[key] = f"{model} ({stage})" if model else f"({stage})"
                if self.terminal:
                    self._draw()

    def finished(self, path: Path | str) -> None:
        with self._lock:
            self.running.pop(_key(path), None)
            self.done += 1
            if self.terminal:
                self._draw()

    def line(self) -> str:
        """The status line (without the terminal's control characters)."""
        with self._lock:
            elapsed = int(time.monotonic() - self._start)
            clock = f"{elapsed // 60}:{elapsed % 60:02d}"
            doing = ", ".join(f"{Path(p).name}{f' {what}' if what else ''}" for p, what in self.running.items())
            return f"archlint: {self.done}/{self.total} files, {clock}{f' | {doing}' if doing else ''}"

    def clear(self) -> None:
        """Remove the status line (before printing anything else on stderr)."""
        with self._lock:
            if self._shown:
                self.stream.write("\r\x1b[K")
                self.stream.flush()
                self._shown = False

    def _draw(self) -> None:
        width = shutil.get_terminal_size((80, 24)).columns
        text = self.line()
        if len(text) >= width:  # a wrapped line could not be redrawn in place
            text = text[: max(0, width - 4)] + "..."
        self.stream.write("\r\x1b[K" + text)
        self.stream.flush()
        self._shown = True

    def _tick(self) -> None:
        while not self._stop.wait(TICK):
            with self._lock:
                self._draw()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _key(path: Path | str) -> str:
    # The worker names a file by its resolved path (worker.Isolated.analyse).
    return str(Path(path).resolve())
