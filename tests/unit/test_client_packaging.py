"""The client libraries install as packages: `pip install ./clients/python` into a fresh virtualenv, and
the tarball of `npm pack` in clients/node into a fresh project, loaded with require, import and tsc."""
from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.support.node_client import NODE_PACKAGE, built_node_package, npm

PYTHON_PACKAGE = Path(__file__).resolve().parents[2] / "clients" / "python"


def run(*args: str | Path, cwd: Path | None = None, timeout: float = 600) -> str:
    result = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def test_pip_install_gives_an_installable_typed_package(tmp_path):
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    python = venv / "bin" / "python"
    run(python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", PYTHON_PACKAGE)
    found = json.loads(run(python, "-c", (
        "import json, pathlib, lad_billing;"
        "root = pathlib.Path(lad_billing.__file__).parent;"
        "print(json.dumps({'version': lad_billing.__version__, 'typed': (root / 'py.typed').exists(),"
        " 'root': str(root), 'client': lad_billing.BillingClient.__name__}))"), cwd=tmp_path))
    assert found["version"] == "0.1.0" and found["typed"] and found["client"] == "BillingClient"
    assert str(venv) in found["root"]  # the installed copy, not the source tree


@pytest.mark.node
def test_npm_pack_gives_an_installable_package_for_require_import_and_typescript(tmp_path):
    package = built_node_package()
    output = npm("pack", "--json", "--pack-destination", str(tmp_path))
    tarball = tmp_path / json.loads(output[output.index("["):])[0]["filename"]
    with tarfile.open(tarball) as packed:
        names = set(packed.getnames())
    for wanted in ("dist/cjs/index.js", "dist/cjs/index.d.ts", "dist/cjs/package.json", "dist/esm/index.js",
                   "dist/esm/index.d.ts", "dist/esm/package.json", "README.md", "package.json"):
        assert f"package/{wanted}" in names, wanted
    assert not any(n.startswith(("package/src/", "package/test/", "package/node_modules/")) for n in names)

    app = tmp_path / "app"
    app.mkdir()
    (app / "package.json").write_text(json.dumps({"name": "app", "version": "1.0.0", "private": True}))
    npm("install", "--no-audit", "--no-fund", str(tarball), cwd=app)
    check = ("const {{ BillingClient, InsufficientBalance, BillingError }} = {};"
             "const c = new BillingClient({{ baseUrl: 'http://127.0.0.1:9', token: 't' }});"
             "if (!(new InsufficientBalance('x') instanceof BillingError) || typeof c.call !== 'function') process.exit(1);"
             "console.log('ok')")
    assert run("node", "-e", check.format("require('@lad/billing-client')"), cwd=app).strip() == "ok"
    assert run("node", "--input-type=module", "-e",
               "import * as lib from '@lad/billing-client';" + check.format("lib"), cwd=app).strip() == "ok"

    # the declarations resolve for both module formats and type the answers
    consumer = ("import {{ BillingClient, type Wallet }} from '@lad/billing-client';\n"
                "const client = new BillingClient({{ baseUrl: 'http://127.0.0.1:9', token: () => 't' }});\n"
                "export async function balance(): Promise<string> {{ const w: Wallet = await client.wallet(); "
                "return w.availableBalance; }}\n"
                "export const done = client.call('voice-agent', {{ hold: '2.50' }}, async (call) => "
                "call.settle([{{ category: 'stt', provider: 'openai', model: 'whisper-1', unit: 'second', quantity: 1 }}]));\n"
                "// @ts-expect-error amounts are decimal strings, not numbers\n"
                "export const wrong = async (): Promise<number> => (await client.wallet()).currentBalance;\n{}")
    (app / "cjs.ts").write_text(consumer.format(""))
    (app / "esm.mts").write_text(consumer.format(""))
    (app / "tsconfig.json").write_text(json.dumps({"compilerOptions": {
        "module": "node16", "moduleResolution": "node16", "target": "ES2022", "strict": True, "noEmit": True,
        "types": ["node"], "typeRoots": [str(NODE_PACKAGE / "node_modules" / "@types")]}, "files": ["cjs.ts", "esm.mts"]}))
    run("node", package / "node_modules" / "typescript" / "bin" / "tsc", "-p", app / "tsconfig.json", cwd=app)
