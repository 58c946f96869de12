"""The TypeScript client library (clients/node, @lad/billing-client) against the real stack: its own
tests run with Node's built-in test runner after `npm ci` and the build, with the stack's URL, the test
JWT secret and a fault proxy (tests/support/fault_proxy.py) in the environment."""
from __future__ import annotations

import os
import re
import subprocess

import pytest

from tests.support.fault_proxy import FaultProxy
from tests.support.node_client import built_node_package
from tests.support.stack import TEST_SECRET

NODE_TESTS = ["test/client.test.mjs", "test/require.test.cjs", "test/retries.test.mjs"]


@pytest.mark.node
def test_node_client_suite(live):
    package = built_node_package()
    proxy = FaultProxy(live.api.base_url).start()
    try:
        env = {**os.environ, "LAD_BILLING_URL": live.api.base_url, "LAD_PROXY_URL": proxy.url,
               "LAD_TEST_JWT_SECRET": TEST_SECRET}
        # TAP on every Node version (only retries.test.mjs uses the proxy, so files may run in parallel)
        result = subprocess.run(["node", "--test", "--test-reporter=tap", *NODE_TESTS], cwd=package, env=env,
                                capture_output=True, text=True, timeout=600)
    finally:
        proxy.stop()
    assert result.returncode == 0, f"node --test failed:\n{result.stdout[-20000:]}\n{result.stderr[-5000:]}"
    passed = re.search(r"^# pass (\d+)$", result.stdout, re.M)
    assert passed and int(passed.group(1)) >= 8 and re.search(r"^# fail 0$", result.stdout, re.M), result.stdout
