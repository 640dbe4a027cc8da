"""docs/architecture.md describes the code: every name it gives a file is defined there."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
from mitmproxy.test import taddons

import addon.capture
from addon.llm_metrics import LLMMetrics
from storage.db import DEFAULT_DB_PATH, ENV_VAR

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


def _readme_options() -> list[tuple[str, str]]:
    """(name, default cell) of each row of the README's options table, in order."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = readme.index("## Options")
    section = readme[start:readme.index("\n## ", start)]
    return re.findall(r"^\| `(\w+)` \| ([^|]*) \|", section, re.MULTILINE)


def _declared_options() -> dict[str, object]:
    """Every option the addon declares to mitmproxy when loaded, with its default."""
    with taddons.context(LLMMetrics()) as tctx:
        return {name: tctx.options.default(name) for name in tctx.options.keys() if name.startswith("llm_metrics_")}


def test_the_readme_options_table_lists_exactly_the_options_the_addon_declares_each_once():
    documented = [name for name, _ in _readme_options()]
    assert len(documented) == len(set(documented)), "an option is listed twice"
    declared = _declared_options()
    assert set(documented) - set(declared) == set(), "listed in the README, not declared by the addon"
    assert set(declared) - set(documented) == set(), "declared by the addon, not listed in the README"


def test_the_readme_options_table_gives_each_options_default():
    declared = _declared_options()
    for name, cell in _readme_options():
        default = declared[name]
        if name == "llm_metrics_db":  # the environment's, else the home default
            assert cell.strip() == f"`${ENV_VAR}`, else `{DEFAULT_DB_PATH}`"
        elif default in ("", [], None):
            assert cell.strip() in ("none", "off"), (name, cell)
        else:
            shown = str(default).lower() if isinstance(default, bool) else str(default)
            assert cell.strip().startswith(f"`{shown}`"), (name, cell, default)
