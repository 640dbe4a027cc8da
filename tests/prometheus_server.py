"""A real Prometheus server for tests (Debian's `prometheus` package; `.ci/run` installs it): its
own config and data folder, on a free port of 127.0.0.1, scraping the targets it is given every
second; PromQL through its HTTP API. Skipped, with the reason, where no `prometheus` is installed,
unless LLM_METRICS_REQUIRE_PROMETHEUS=1 (CI sets it), when that is a failure."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import free_port


def prometheus_binary() -> str:
    found = shutil.which("prometheus")
    if found is None:
        reason = "no `prometheus` binary (Debian: apt-get install prometheus)"
        if os.environ.get("LLM_METRICS_REQUIRE_PROMETHEUS") == "1":
            pytest.fail(f"Prometheus is required here: {reason}")
        pytest.skip(reason)
    return found


class PrometheusServer:
    def __init__(self, workdir: Path, targets: list[str]) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        config = workdir / "prometheus.yml"
        # JSON is YAML: no YAML writer needed.
        config.write_text(json.dumps({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [{"job_name": "llm-metrics-proxy", "static_configs": [{"targets": targets}]}],
        }))
        self.log_path = workdir / "prometheus.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [prometheus_binary(), f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self._log, stderr=subprocess.STDOUT, cwd=workdir)
        self.wait_ready()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"prometheus not ready within {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def api(self, path: str, **params: Any) -> Any:
        """`data` of an API answer; AssertionError with Prometheus's own words when it refuses."""
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params, doseq=True)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                answer = json.load(response)
        except urllib.error.HTTPError as exc:
            answer = json.load(exc)
        assert answer.get("status") == "success", f"{path} {params}: {answer}"
        return answer["data"]

    def query(self, expr: str) -> list[dict]:
        """An instant vector's samples as {labels..., "value": float}; a scalar as one sample."""
        data = self.api("query", query=expr)
        if data["resultType"] == "scalar":
            return [{"value": float(data["result"][1])}]
        assert data["resultType"] == "vector", f"{expr}: {data['resultType']}"
        return [{**sample["metric"], "value": float(sample["value"][1])} for sample in data["result"]]

    def value(self, expr: str) -> float | None:
        """The one value of an expression whose answer is one sample (None: none)."""
        samples = self.query(expr)
        assert len(samples) <= 1, f"{expr}: {samples}"
        return samples[0]["value"] if samples else None

    def wait_for(self, expr: str, done: Callable[[float | None], bool], timeout: float = 20.0) -> float | None:
        deadline = time.monotonic() + timeout
        while True:
            value = self.value(expr)
            if done(value) or time.monotonic() > deadline:
                return value
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def has_number(samples: list[dict]) -> bool:
    return any(not math.isnan(s["value"]) for s in samples)
