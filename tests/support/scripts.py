"""The project's scripts (``scripts/``, not a package), imported by tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SCRIPTS_DIR = Path(__file__).resolve().parents[2] / "scripts"


def load_script(relative: str, name: str | None = None) -> ModuleType:
    """Import ``scripts/<relative>`` as module ``name`` (default: the file's stem), registered in
    ``sys.modules`` first: dataclasses look their module up there while a class is built."""
    path = SCRIPTS_DIR / relative
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"no script {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
