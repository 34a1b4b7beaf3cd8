"""mkdocs hook: the command-line page shows ``memif-aio --help`` of every subcommand, as the
installed command prints it, so the page cannot drift from the parser."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from mkdocs.exceptions import PluginError

MARKER = "<!-- memif-aio --help -->"
SUBCOMMAND = re.compile(r"^    ([a-z][\w-]*)\s{2,}\S", re.MULTILINE)


def _help(*args: str) -> str:
    env = {**os.environ, "COLUMNS": "100"}
    done = subprocess.run(
        [sys.executable, "-m", "memif_aio", *args, "--help"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    if done.returncode != 0:
        raise PluginError(f"memif-aio {' '.join(args)} --help failed: {done.stderr.strip()}")
    return done.stdout.rstrip()


def on_page_markdown(markdown: str, page, **kwargs) -> str:
    if MARKER not in markdown:
        return markdown
    top = _help()
    commands = SUBCOMMAND.findall(top.split("positional arguments:", 1)[-1])
    if not commands:
        raise PluginError("found no subcommands in `memif-aio --help`")
    sections = [f"```text\n$ memif-aio --help\n{top}\n```"]
    for command in commands:
        sections.append(f"## memif-aio {command}\n\n```text\n{_help(command)}\n```")
    return markdown.replace(MARKER, "\n\n".join(sections))
