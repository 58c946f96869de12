"""What both page surfaces share: the session from the cookie (opened once from a link), CSRF on every
form, strict security headers, HTML error pages, and the unit of work."""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, current_app, g, make_response, redirect, render_template, request, url_for
from werkzeug.exceptions import HTTPException

from billing_core.db import UnitOfWork, engine_for
from billing_core.errors import BillingError
from billing_core.pages import sessions
from billing_core.pages.sessions import PageSession

from ..errors import ApiError, status_for


class PageRefused(Exception):
    """No live session, or a form without its CSRF token: the page shows nothing else."""

    def __init__(self, status: int, title: str, message: str):
        super().__init__(message)
        self.status, self.title, self.message = status, title, message


def unit_of_work() -> UnitOfWork:
    return UnitOfWork(engine_for(current_app.config["LAD_SETTINGS"].database_url))


def development() -> bool:
    return os.environ.get("LAD_ENV", "development") == "development"


def frame_ancestors(surface: str) -> str:
    """Who may frame the page: for the portal, PORTAL_FRAME_ANCESTORS (space-separated origins, e.g.
    LAD's own dashboard); nobody otherwise, and never for the console."""
    if surface == sessions.PORTAL:
        allowed = os.environ.get("PORTAL_FRAME_ANCESTORS", "").split()
        if allowed:
            return " ".join(allowed)
    return "'none'"


def security_headers(surface: str, response: Response) -> Response:
    ancestors = frame_ancestors(surface)
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        f"form-action 'self'; base-uri 'none'; frame-ancestors {ancestors}")
    if ancestors == "'none'":
        response.headers["X-Frame-Options"] = "DENY"  # browsers that ignore frame-ancestors
    response.headers["X-Content-Type-Options"] = "nosniff"
    # the opening link carries the token: never send it on as a referrer; pages hold account data
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-store"
    return response


def cookie_name(surface: str) -> str:
    return f"lad_{surface}"


def open_link(surface: str, landing: str) -> Response:
    """GET …/open?token=: check the link's token, keep it in the session cookie, and land on the
    first page (a redirect, so the token leaves the address bar and the history)."""
    token = request.args.get("token")
    with unit_of_work() as uow:
        found = sessions.find_session(uow, surface, token)
    if found is None:
        raise PageRefused(401, "This link does not open anything",
                          "The link is not valid: it was changed, it expired, or it was revoked. Ask for a new one.")
    response = redirect(url_for(landing), code=303)
    # the portal is embedded in LAD's dashboard (another site): outside development its cookie must go with
    # framed requests (SameSite=None), kept apart per embedding site (Partitioned, CHIPS)
    embedded = surface == sessions.PORTAL and not development()
    response.set_cookie(
        cookie_name(surface), token or "", expires=found.expires_at, path=f"/{surface}", httponly=True,
        secure=not development(), samesite="None" if embedded else "Lax", partitioned=embedded)
    return response


def close_session(surface: str) -> Response:
    """POST …/sign-out: revoke this session now (its link too) and forget the cookie."""
    session = current_session()
    with unit_of_work() as uow:
        if surface == sessions.PORTAL:
            sessions.revoke_portal_session(uow, session.tenant_id or "", session.id)
        else:
            sessions.revoke_console_session(uow, session.id)
    response = error_page(surface, 200, "Signed out", "This session is closed. Open a new link to come back.")
    response.delete_cookie(cookie_name(surface), path=f"/{surface}")
    return response


def current_session() -> PageSession:
    session: PageSession | None = g.get("lad_page_session")
    if session is None:
        raise PageRefused(401, "Signed out", "This session has ended. Open a new link.")
    return session


def guard(surface: str) -> Callable[[], None]:
    """before_request: every page but the opening link needs a live session, and a POST its CSRF token."""

    def check() -> None:
        if request.endpoint and request.endpoint.endswith(".open"):
            return
        with unit_of_work() as uow:
            found = sessions.find_session(uow, surface, request.cookies.get(cookie_name(surface)))
        if found is None:
            raise PageRefused(401, "Signed out",
                              "There is no valid session: it expired or was revoked. Open a new link.")
        g.lad_page_session = found
        if request.method == "POST" and not found.accepts_csrf(request.form.get("csrf_token")):
            raise PageRefused(403, "Form refused", "The form was sent without its security token. Reload the page.")

    return check


def install(blueprint: Blueprint, surface: str) -> None:
    """Session guard, headers and HTML error pages for one surface."""
    blueprint.before_request(guard(surface))
    blueprint.after_request(lambda response: security_headers(surface, response))

    @blueprint.context_processor
    def _session() -> dict[str, Any]:
        return {"page_session": g.get("lad_page_session"), "surface": surface}

    @blueprint.errorhandler(PageRefused)
    def _refused(exc: PageRefused) -> Response:
        return error_page(surface, exc.status, exc.title, exc.message)

    @blueprint.errorhandler(BillingError)
    def _domain(exc: BillingError) -> Response:
        return error_page(surface, status_for(exc.code, exc.details), "Not possible", exc.message, exc.code)

    @blueprint.errorhandler(ApiError)
    def _api(exc: ApiError) -> Response:
        return error_page(surface, exc.status, "Not possible", exc.message, exc.code)

    @blueprint.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        return error_page(surface, exc.code or 500, exc.name, exc.description or exc.name)


def error_page(surface: str, status: int, title: str, message: str, code: str | None = None) -> Response:
    shown = None if status in (200, 401, 403) else g.get("lad_page_session")  # refused or closed: no navigation
    body = render_template("pages/error.html", title=title, message=message, code=code, status=status,
                           surface=surface, page_session=shown)
    response = make_response(body, status)
    return security_headers(surface, response)
