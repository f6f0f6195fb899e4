"""Imports every command module (and the app's own options) so each registers itself."""

from __future__ import annotations

from sweeps.cli import _version  # noqa: F401
from sweeps.cli import cancel_cmd  # noqa: F401
from sweeps.cli import export_cmd  # noqa: F401
from sweeps.cli import report_cmd  # noqa: F401
from sweeps.cli import run_cmd  # noqa: F401
from sweeps.cli import status_cmd  # noqa: F401
from sweeps.cli import ui_cmd  # noqa: F401
from sweeps.cli import validate_cmd  # noqa: F401
