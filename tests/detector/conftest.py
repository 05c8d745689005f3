"""The detector's tests run in the torch environment (.venv-torch, Detectron2 from deploy/detectron2);
elsewhere they are skipped."""

from __future__ import annotations

import pytest

pytest.importorskip("detectron2", reason="the detector tests run in .venv-torch (scripts/test.sh)")
