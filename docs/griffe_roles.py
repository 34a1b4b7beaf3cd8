"""Griffe extension: Sphinx roles in docstrings become checked cross-references.

The docstrings use reST roles (``:class:`Interface```, ``:meth:`send```); mkdocstrings reads
Markdown. Each role becomes an autorefs link (``[`Interface`][Interface]``), resolved in the
docstring's scope (``scoped_crossrefs``), so a role naming nothing fails ``mkdocs build
--strict`` like any broken reference. ``~`` shows the last component only, as in Sphinx.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|meth|func|attr|mod|exc|data|obj):`(~?)([\w.]+)`")


def _link(match: re.Match[str]) -> str:
    short, target = match.groups()
    title = target.rsplit(".", 1)[-1] if short else target
    return f"[`{title}`][{target}]"


class SphinxRoles(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(_link, obj.docstring.value)
