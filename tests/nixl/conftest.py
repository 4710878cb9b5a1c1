"""Says in pytest's header which NIXL the suite drives and where the TCPX plugin comes from
(nixl_wheel.py decides both, before any test module creates an agent).

TCPX_NIXL_PLUGIN=installed: the run is meant to test the plugin `tcpx nixl install` put into
the wheel's own folder; it stops before any test when NIXL would load another."""

import os
import sys

import pytest

import nixl_wheel


def pytest_configure(config):
    if os.environ.get("TCPX_NIXL_PLUGIN", "").strip() == "installed" and not nixl_wheel.INSTALLED:
        raise pytest.UsageError(
            f"TCPX_NIXL_PLUGIN=installed, but NIXL would load TCPX from {nixl_wheel.PLUGIN_DIR}"
            f" (NIXL_PLUGIN_DIR): run tcpx nixl install --python {sys.executable} and leave "
            "NIXL_PLUGIN_DIR and TCPX_PLUGIN_DIR unset")


def pytest_report_header(config):
    return nixl_wheel.describe()
