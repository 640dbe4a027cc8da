"""docs/architecture.md describes the code: every name it gives a file is defined there."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

import addon.capture

ARCHITECTURE = (Path(__file__).resolve().parents[1] / "docs" / "architecture.md").read_text()


def _owners() -> list[tuple[str, list[str]]]:
    """(module, names) for each row of the "Who owns what" table."""
    rows = []
    for line in ARCHITECTURE.splitlines():
        match = re.match(r"\| `(addon/\w+|storage/\w+)\.py` \| (.*) \|$", line)
        if match:
            names = [n for n in re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", match.group(2))]
            rows.append((match.group(1).replace("/", "."), names))
    return rows


@pytest.mark.parametrize("module, names", _owners(), ids=[m for m, _ in _owners()])
def test_each_name_the_architecture_page_gives_a_module_is_defined_there(module, names):
    loaded = importlib.import_module(module)
    assert names, f"no names listed for {module}"
    missing = [n for n in names if not hasattr(loaded, n) and not any(
        hasattr(getattr(loaded, cls), n) for cls in dir(loaded) if isinstance(getattr(loaded, cls), type))]
    assert not missing, f"docs/architecture.md names {missing} in {module}, which has no such name"


def test_the_message_table_lists_exactly_the_protocols_messages():
    documented = set(re.findall(r"^\| `(\w+)\(", ARCHITECTURE, re.MULTILINE))
    defined = {t.__name__ for t in addon.capture.Message.__args__}
    assert documented == defined


def test_the_readme_options_table_lists_exactly_the_addons_options():
    from addon.options import OPTIONS

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Options"):readme.index("\n## ", readme.index("## Options"))]
    documented = set(re.findall(r"^\| `(llm_metrics_\w+)` \|", section, re.MULTILINE))
    assert documented == {name for name, *_ in OPTIONS}
