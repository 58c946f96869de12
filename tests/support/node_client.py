"""The Node client package (clients/node) for the tests: `npm ci` and the build, once per session."""
from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path

NODE_PACKAGE = Path(__file__).resolve().parents[2] / "clients" / "node"


def npm(*args: str, cwd: Path = NODE_PACKAGE, timeout: float = 600, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(["npm", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, f"npm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


@functools.cache
def built_node_package() -> Path:
    """clients/node with its locked dev dependencies installed and dist/ built (CJS, ESM, declarations)."""
    assert shutil.which("node") and shutil.which("npm"), "node and npm are needed: `make test` installs them"
    npm("ci", "--no-audit", "--no-fund")
    npm("run", "build")
    return NODE_PACKAGE
