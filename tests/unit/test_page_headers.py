"""The pages' security headers from their settings, without a server."""
from __future__ import annotations


def test_portal_frame_ancestors_come_from_the_setting(monkeypatch):
    from flask import Response

    from web.app import create_app
    from web.pages.common import security_headers

    monkeypatch.setenv("PORTAL_FRAME_ANCESTORS", "https://dashboard.lad.example https://lad.example")
    with create_app().test_request_context():
        portal = security_headers("portal", Response())
        console = security_headers("console", Response())
    assert "frame-ancestors https://dashboard.lad.example https://lad.example" in portal.headers["Content-Security-Policy"]
    assert "X-Frame-Options" not in portal.headers
    assert "frame-ancestors 'none'" in console.headers["Content-Security-Policy"]
    assert console.headers["X-Frame-Options"] == "DENY"
