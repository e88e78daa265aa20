"""The simulated substation's peers each run as a child process: one way to stop them all."""

from __future__ import annotations

import subprocess
from typing import Self


class ChildProcess:
    """A peer (a meter, a broker, a pty pair) in a process of its own; subclasses start it."""

    _process: subprocess.Popen | None = None

    def start(self) -> Self:
        """Start the process and return once it serves."""
        raise NotImplementedError

    @property
    def running(self) -> bool:
        """Whether the process is up."""
        return self._process is not None and self._process.poll() is None

    def stop(self) -> None:
        """Terminate the process (killed after 5 s) and close its pipes; safe to call twice."""
        if self._process is None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        for stream in (self._process.stdout, self._process.stderr):
            if stream:
                stream.close()
        self._process = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
