"""README.md read as a script: its fenced blocks, their commands, and a plain shell to run them
in a fresh clone (tests/flows/test_readme.py)."""
from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

PLAIN_PATH = "/usr/local/bin:/usr/bin:/bin"
FENCE = re.compile(r"^```(\w*)\s*$")
# a command that runs until stopped says so in its comment: "serves http://... until Ctrl-C"
UNTIL_STOPPED = re.compile(r"#.*\b(?:serves (?P<url>https?://\S+)|polls\b.*?) until Ctrl-C")


@dataclass(frozen=True)
class Block:
    lang: str   # bash, console, python, text, or "" (a diagram, an output listing)
    line: int   # where it starts in README.md
    text: str


def blocks(text: str) -> list[Block]:
    """Every fenced block of a markdown text, in order."""
    out, lang, start, lines = [], None, 0, []
    for number, line in enumerate(text.splitlines(), 1):
        match = FENCE.match(line)
        if match and lang is None:
            lang, start, lines = match.group(1), number, []
        elif line.startswith("```") and lang is not None:
            out.append(Block(lang, start, "\n".join(lines)))
            lang = None
        elif lang is not None:
            lines.append(line)
    return out


def complete(command: str) -> bool:
    """A command is whole when its quotes close and no line continues it."""
    if command.rstrip().endswith("\\"):
        return False
    try:
        shlex.split(command, comments=True)
    except ValueError:
        return False
    return True


def commands(text: str) -> list[str]:
    """The commands of a shell block: continuation lines and multi-line quotes joined, lines
    that hold only a comment left out (a comment after a command stays with it)."""
    out, pending = [], ""
    for line in text.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending = f"{pending}\n{line}" if pending else line
        if complete(pending):
            out.append(pending)
            pending = ""
    assert not pending, f"an unfinished command in the README: {pending!r}"
    return out


def console_steps(text: str) -> list[tuple[str, list[str]]]:
    """A console block: each `$ command` with the output lines shown under it."""
    steps: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        elif steps and line.strip():
            steps[-1][1].append(line)
    return steps


def runs_until_stopped(command: str) -> tuple[bool, str | None]:
    """(whether the command runs until Ctrl-C, the URL it serves if it names one)."""
    match = UNTIL_STOPPED.search(command.splitlines()[-1])
    return (match is not None, match.group("url") if match else None)


def plain_env(home: Path, **extra: str) -> dict[str, str]:
    """A newcomer's shell: PATH without the venv, no PREFECT_HOME, PYTHONPATH or MLflow URI."""
    keep = {k: os.environ[k] for k in ("HOME", "LANG", "TMPDIR") if k in os.environ}
    return {**keep, "PATH": PLAIN_PATH, "TERM": "dumb", "HOME": str(home), **extra}


@dataclass
class Shell:
    """Runs commands as a user types them, in one checkout; keeps what each printed."""

    cwd: Path
    env: dict[str, str]
    log: Path
    background: list[tuple[str, subprocess.Popen]] = field(default_factory=list)

    def run(self, command: str, timeout: float = 900, check: bool = True,
            **extra: str) -> subprocess.CompletedProcess:
        started = time.monotonic()
        proc = subprocess.run(["bash", "-c", command], cwd=self.cwd, env={**self.env, **extra},
                              capture_output=True, text=True, timeout=timeout)
        self._note(command, proc.returncode, time.monotonic() - started,
                   proc.stdout + proc.stderr)
        if check:
            assert proc.returncode == 0, (
                f"README command failed (exit {proc.returncode}): {command}\n"
                f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
        return proc

    def start(self, command: str, url: str | None, timeout: float = 120) -> None:
        """A command that runs until stopped: in the background, until its URL answers (or,
        naming none, while it stays up for a few seconds)."""
        out = open(self.log.with_name(f"bg-{len(self.background)}.log"), "w")  # noqa: SIM115
        proc = subprocess.Popen(["bash", "-c", command], cwd=self.cwd, env=self.env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.background.append((command, proc))
        deadline = time.monotonic() + (timeout if url else 8)
        while time.monotonic() < deadline:
            assert proc.poll() is None, (f"README command stopped (exit {proc.returncode}): "
                                         f"{command}\n{Path(out.name).read_text()[-4000:]}")
            if url and _answers(url):
                self._note(command, None, 0.0, f"(serving {url})")
                return
            time.sleep(0.5)
        assert url is None, f"{url} never answered: {command}"
        self._note(command, None, 0.0, "(running)")

    def stop_background(self) -> None:
        """Ctrl-C each background command (its whole process group), as a user would."""
        for _, proc in self.background:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(10)
        self.background.clear()

    def _note(self, command: str, code: int | None, seconds: float, output: str) -> None:
        with open(self.log, "a", encoding="utf-8") as fh:
            fh.write(f"$ {command}\n# exit {code}, {seconds:.1f} s\n{output[-2000:]}\n\n")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except OSError:
        return False
