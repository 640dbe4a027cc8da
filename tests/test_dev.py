"""dev.py, the set-up script: which tests `python3 dev.py test` runs."""

from __future__ import annotations

import importlib.util

import pytest

from tests.conftest import ROOT

_spec = importlib.util.spec_from_file_location("dev", ROOT / "dev.py")
assert _spec is not None and _spec.loader is not None
dev = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dev)


@pytest.mark.parametrize(("given", "runs"), [
    ([], ["-m", "not slow and (not e2e or smoke)", "-n", "auto"]),
    (["-q", "-k", "stream"], ["-m", "not slow and (not e2e or smoke)", "-n", "auto", "-q", "-k", "stream"]),
    (["-n", "0"], ["-m", "not slow and (not e2e or smoke)", "-n", "0"]),
    (["-s"], ["-m", "not slow and (not e2e or smoke)", "-s"]),
    (["--all", "-q"], ["-q"]),  # what CI runs: every test
])
def test_the_default_is_the_fast_tests_on_every_core_and_all_runs_every_one(given, runs):
    assert dev.test_selection(given) == runs


@pytest.mark.parametrize("given", [["-m", "e2e"], ["-me2e"], ["tests/test_e2e_load.py"],
                                   ["tests/test_e2e_load.py::test_x", "-x"]])
def test_tests_chosen_by_marker_or_file_run_as_chosen(given):
    assert dev.test_selection(given) == given


def test_ci_runs_the_whole_suite_on_each_python():
    runs = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines() if "dev.py" in line and " test" in line
            and not line.strip().startswith(("#", "echo"))]
    assert runs and all(line.endswith("test --all -q") for line in runs), runs
