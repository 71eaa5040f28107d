"""Shared fixtures: tiny specs that exercise the real pipeline in seconds."""

import os
from pathlib import Path

import pytest

os.environ.setdefault("NASFLOW_DISABLE_PLUGIN_AUTOLOAD", "1")  # tests see only built-in plugins

from specs import tiny_spec_text  # noqa: E402  (re-exported for the test modules)

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


def pytest_configure(config):
    # CI installs the LiteRT packages so that the mobile device's tests run; there, a missing
    # package must fail the run instead of quietly skipping those tests.
    if os.environ.get("NASFLOW_REQUIRE_LITERT") == "1":
        from nasflow.plugins.devices.litert import LiteRTDevice

        reason = LiteRTDevice.unavailable_reason()
        if reason is not None:
            raise pytest.UsageError(f"NASFLOW_REQUIRE_LITERT=1 but the litert device is not usable: {reason}")


@pytest.fixture
def tiny_spec(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(tiny_spec_text(tmp_path))
    return path
