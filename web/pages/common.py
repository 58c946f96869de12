"""What both page surfaces share: the session from the cookie (a link opens it once), CSRF on every
form, the principal's rate limits, strict security headers, HTML error pages, links and redirects on
the public address, and the unit of work."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from flask import Blueprint, Response, current_app, g, make_response, redirect, render_template, request, url_for
from werkzeug.exceptions import HTTPException

from billing_core.access import sessions
from billing_core.access.sessions import PageSession
from billing_core.errors import BillingError
from web.errors import ApiError, status_for
from web.limits import check_page_limits, count_refusal
from web.runtime import settings, unit_of_work


class PageRefused(Exception):
    """No live session, or a form without its CSRF token: the page shows nothing else."""

    def __init__(self, status: int, title: str, message: str):
        super().__init__(message)
        self.status, self.title, self.message = status, title, message


def public_url() -> str:
    """LAD_PUBLIC_URL (web.app.public_url_of): links and redirects never name a request's Host."""
    return current_app.config["LAD_PUBLIC_URL"]


def public_redirect(endpoint: str, **values: Any) -> Response:
    # flask's redirect makes the app's response class; werkzeug's signature says its base class
    return cast(Response, redirect(public_url() + url_for(endpoint, **values), code=303))


def development() -> bool:
    return settings().lad_env == "development"


def frame_ancestors(surface: str) -> str:
    """Who may frame the page: for the portal, PORTAL_FRAME_ANCESTORS (space-separated origins, e.g.
    LAD's own dashboard); nobody otherwise, and never for the console."""
    if surface == sessions.PORTAL:
        allowed = settings().portal_frame_ancestors.split()
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
    """…/open?token=: a link opens once. Its first opening exchanges the link's token for a session secret
    of its own (the cookie) and lands on the first page; the link then opens nothing (410), though it stays
    in the browser's history. When the browser has a portal session of another tenant open, a GET only
    asks (a page whose POST carries that session's CSRF token), so a page of another site cannot swap
    the person into someone else's portal unnoticed."""
    token = request.form.get("token") if request.method == "POST" else request.args.get("token")
    with unit_of_work() as uow:
        state = sessions.link_state(uow, surface, token)
    if state is None:
        raise _refused_link()
    if state == sessions.USED:
        raise PageRefused(410, "This link was used already",
                          "A link opens the pages once, and this one has been opened. Ask for a new link.")
    current = _cookie_session(surface)
    if request.method == "POST":
        if current is None or not current.accepts_csrf(request.form.get("csrf_token")):
            count_refusal(None)
            raise PageRefused(403, "Form refused", "The form was sent without its security token. Reload the page.")
    elif surface == sessions.PORTAL and current is not None and current.tenant_id != state:
        body = render_template("pages/switch.html", token=token, current=current.tenant_id, new=state,
                               csrf_token=current.csrf_token, stay=public_url() + url_for(landing))
        return make_response(body, 200)
    with unit_of_work() as uow:
        opened = sessions.open_link(uow, surface, token)
    if opened is None:  # opened by someone else a moment ago, or revoked meanwhile
        raise _refused_link()
    response = public_redirect(landing)
    # the portal is embedded in LAD's dashboard (another site): outside development its cookie must go with
    # framed requests (SameSite=None), kept apart per embedding site (Partitioned, CHIPS)
    embedded = surface == sessions.PORTAL and not development()
    response.set_cookie(
        cookie_name(surface), opened.cookie, expires=opened.expires_at, path=f"/{surface}", httponly=True,
        secure=not development(), samesite="None" if embedded else "Lax", partitioned=embedded)
    return response


def _refused_link() -> PageRefused:
    count_refusal(None)
    return PageRefused(401, "This link does not open anything",
                       "The link is not valid: it was changed, it expired, or it was revoked. Ask for a new one.")


def _cookie_session(surface: str) -> PageSession | None:
    with unit_of_work() as uow:
        return sessions.find_session(uow, surface, request.cookies.get(cookie_name(surface)))


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
    """before_request: every page but the opening link needs a live session, and a POST its CSRF token;
    then the request counts in the session's rate-limit buckets (its tenant's, as the API counts)."""

    def check() -> None:
        if request.endpoint and request.endpoint.endswith(".open"):
            return
        found = _cookie_session(surface)
        if found is None:
            count_refusal(None)
            raise PageRefused(401, "Signed out",
                              "There is no valid session: it expired or was revoked. Open a new link.")
        g.lad_page_session = found
        if request.method == "POST" and not found.accepts_csrf(request.form.get("csrf_token")):
            count_refusal(None)
            raise PageRefused(403, "Form refused", "The form was sent without its security token. Reload the page.")
        check_page_limits(found, writing=request.method not in ("GET", "HEAD"))

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
