"""identity's own pages: sign up, sign in, sign out, the account center, consent and errors.

Every form carries a CSRF token bound to a random HttpOnly cookie (`kz_csrf`): the token is an
HMAC of the cookie, so a cross-site form post (which can neither read the cookie nor the page)
cannot produce it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from kizuna.kit import i18n
from kizuna.kit.bounds import same_secret
from kizuna.kit.errors import DomainError, Unauthenticated
from kizuna.kit.web import page_templates, service_links
from sqlmodel import col, select

from identity import members, sessions, throttle
from identity.clients import Client, Consent
from identity.context import identity_of
from identity.provider import Provider
from identity.sessions import OpSession
from identity.tokens import Grant, live_grants, revoke_grant

router = APIRouter()
templates = page_templates(Path(__file__).parent / "templates", service="identity")
CSRF_COOKIE = "kz_csrf"


def provider_of(request: Request) -> Provider:
    return identity_of(request.app.state.runtime).provider


def client_ip(request: Request) -> str:
    return request.client.host if request.client else "unknown"


# ---- CSRF and cookies -----------------------------------------------------------------------


def _csrf_cookie(request: Request) -> tuple[str, bool]:
    value = request.cookies.get(CSRF_COOKIE)
    if value and len(value) >= 32:
        return value, False
    new = getattr(request.state, "csrf_new", None) or secrets.token_urlsafe(32)
    request.state.csrf_new = new
    return new, True


def csrf_token(request: Request) -> str:
    value, _ = _csrf_cookie(request)
    return hmac.new(provider_of(request).csrf_secret, value.encode(), hashlib.sha256).hexdigest()


def csrf_ok(request: Request, token: str | None) -> bool:
    """Made with the current key-encryption key version's secret; a form rendered before a new
    version was added (an older version's) is still accepted while that version is configured."""
    value = request.cookies.get(CSRF_COOKIE)
    if not value or not token:
        return False
    return any(
        same_secret(token, hmac.new(secret, value.encode(), hashlib.sha256).hexdigest())
        for secret in provider_of(request).csrf_secrets
    )


def set_cookie(request: Request, response: Response, name: str, value: str, max_age: int | None = None) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        httponly=True,
        samesite="lax",
        secure=provider_of(request).secure_cookies,
        path="/",
    )


def render(request: Request, template: str, context: dict[str, Any], status: int = 200) -> HTMLResponse:
    value, new = _csrf_cookie(request)
    response = templates.TemplateResponse(
        request,
        template,
        {"csrf_token": csrf_token(request), **context},
        status_code=status,
        headers={
            "Cache-Control": "no-store",
            "X-Frame-Options": "DENY",
            "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
        },
    )
    if new:
        set_cookie(request, response, CSRF_COOKIE, value)
    renewed = getattr(request.state, "session_cookie_renewal", None)
    if renewed is not None:  # signed under an older key version: the current one signs it again
        set_cookie(request, response, sessions.COOKIE, renewed[0], renewed[1])
    return response


def error_page(request: Request, message: str, status: int) -> HTMLResponse:
    return render(request, "error.html", {"title": "Something went wrong", "message": message}, status)


def csrf_failed(request: Request) -> HTMLResponse:
    return error_page(
        request, "This form has expired or did not come from this site. Go back, reload and try again.", 403
    )


def safe_next(value: str | None) -> str:
    """Only same-site paths: never an open redirect."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return "/account"


# ---- sessions ---------------------------------------------------------------------------------


async def current_session(request: Request) -> OpSession | None:
    provider = provider_of(request)
    sid, stale = provider.cookie.read(request.cookies.get(sessions.COOKIE))
    op = await provider.op_session(sid)
    if op is not None and stale:
        remaining = int((op.expires_at - provider.now()).total_seconds())
        request.state.session_cookie_renewal = (provider.cookie.dumps(op.id), max(remaining, 1))
    return op


# prompt=login: a sign-in this recent counts as the re-authentication asked for (the way back from
# the sign-in page also drops `login` from the prompt, see signin_redirect).
FRESH_LOGIN_SECONDS = 5


def fresh_login(request: Request, op: OpSession | None) -> bool:
    """True when the member signed in moments ago (they just re-authenticated for this request)."""
    if op is None:
        return False
    return (provider_of(request).now() - op.auth_time).total_seconds() <= FRESH_LOGIN_SECONDS


def signin_redirect(
    request: Request, params: list[tuple[str, str]], login_hint: str = "", force: bool = False
) -> RedirectResponse:
    """To the sign-in page, coming back to this authorization request (`params`, from the query or
    a POSTed form, as a GET). When re-authentication was demanded (prompt=login, max_age) the way
    back drops that demand: it is about to be met."""
    query = list(params)
    if force:
        query = [
            (k, " ".join(p for p in v.split() if p != "login") if k == "prompt" else v)
            for k, v in query
            if k != "max_age"
        ]
        query = [(k, v) for k, v in query if not (k == "prompt" and not v)]
    back = request.url.path + ("?" + urlencode(query) if query else "")
    target = {"next": back}
    if login_hint:
        target["login_hint"] = login_hint
    if force:
        target["reauth"] = "1"
    return RedirectResponse("/signin?" + urlencode(target), status_code=302)


def consent_page(
    request: Request, client: Client, scopes: list[str], params: list[tuple[str, list[str]]]
) -> HTMLResponse:
    hidden = [(k, v) for k, values in params for v in values if k not in ("csrf_token", "consent")]
    described = [(s, provider_of(request).scopes.describe(s)) for s in scopes]
    return render(
        request, "consent.html", {"title": "Allow access?", "client": client, "scopes": described, "hidden": hidden}
    )


async def _start_session(request: Request, member_id: str, next_url: str) -> RedirectResponse:
    provider = provider_of(request)
    async with provider.db.transaction() as session:
        op = await sessions.start(
            session,
            member_id=member_id,
            now=provider.now(),
            lifetime_seconds=provider.settings.identity_session_seconds,
            user_agent=request.headers.get("user-agent", ""),
            ip=client_ip(request),
        )
    response = RedirectResponse(safe_next(next_url), status_code=303)
    set_cookie(
        request, response, sessions.COOKIE, provider.cookie.dumps(op.id), provider.settings.identity_session_seconds
    )
    return response


@router.get("/signin")
async def signin_form(request: Request, next: str = "", login_hint: str = "", reauth: str = "") -> HTMLResponse:
    return render(
        request, "signin.html", {"title": "Sign in", "next": next, "email": login_hint, "reauth": bool(reauth)}
    )


@router.post("/signin")
async def signin(
    request: Request,
    email: str = Form(""),
    password: str = Form(""),
    next: str = Form(""),
    csrf_token: str = Form(""),
) -> Response:
    if not csrf_ok(request, csrf_token):
        return csrf_failed(request)
    provider = provider_of(request)
    settings = provider.settings
    now = provider.now()
    account = email.strip().lower()
    ip = client_ip(request)
    context = {"title": "Sign in", "next": next, "email": email}
    policy = throttle.Policy.from_settings(settings)
    devices = device_cookies(provider, policy)
    device = devices.device_for(request.cookies.get(throttle.DEVICE_COOKIE), account)
    decision = await throttle.open_attempt(provider.db, account=account, ip=ip, device=device, now=now, policy=policy)
    if decision.attempt_id is None:
        provider.sign_ins.record(sessions.SignInCounter.THROTTLED)
        error = throttle.wait_message(decision.wait_seconds)
        return _throttled(render(request, "signin.html", {**context, "error": error}, 429), decision)
    attempt = decision.attempt_id
    async with provider.db.sessions() as session:
        member = await members.by_email(session, account)
    # argon2id costs tens of milliseconds of CPU: off the event loop (it releases the GIL), so
    # other requests are served meanwhile and two sign-ins use both cores.
    ok = await asyncio.to_thread(provider.passwords.verify, member.password_hash if member else None, password)
    ok = ok and member is not None and member.status == members.ACTIVE
    if ok and member is not None:
        async with provider.db.transaction() as session:
            await sessions.attempt_succeeded(session, attempt)
            if provider.passwords.needs_rehash(member.password_hash):
                stored = await members.get(session, member.id)
                stored.password_hash = provider.passwords.hash(password)
                session.add(stored)
    if not ok or member is None:
        provider.sign_ins.record(sessions.SignInCounter.FAILURE)
        return render(request, "signin.html", {**context, "error": "The email or password is not correct."}, 401)
    provider.sign_ins.record(sessions.SignInCounter.SUCCESS)
    response = await _start_session(request, member.id, next)
    remember_device(request, response, account)
    return response


@router.get("/signup")
async def signup_form(request: Request, next: str = "") -> HTMLResponse:
    return render(request, "signup.html", {"title": "Create your Kizuna ID", "next": next})


@router.post("/signup")
async def signup(
    request: Request,
    email: str = Form(""),
    display_name: str = Form(""),
    password: str = Form(""),
    next: str = Form(""),
    csrf_token: str = Form(""),
) -> Response:
    if not csrf_ok(request, csrf_token):
        return csrf_failed(request)
    provider = provider_of(request)
    try:
        async with provider.db.transaction() as session:
            member = await members.register(
                session,
                provider.passwords,
                email=email,
                display_name=display_name,
                password=password,
                now=provider.now(),
            )
    except DomainError as exc:
        return render(
            request,
            "signup.html",
            {
                "title": "Create your Kizuna ID",
                "next": next,
                "email": email,
                "display_name": display_name,
                "error": exc.message,
            },
            exc.http_status,
        )
    provider.email.send(member)
    response = await _start_session(request, member.id, next)
    remember_device(request, response, member.email)
    return response


# ---- account center ---------------------------------------------------------------------------


async def _account_context(request: Request, op: OpSession) -> dict[str, Any]:
    provider = provider_of(request)
    now = provider.now()
    async with provider.db.sessions() as session:
        member = await members.get(session, op.member_id)
        active = await sessions.sessions_of(session, member.id, now)
        grants = await live_grants(session, member_id=member.id)
        consents = (await session.exec(select(Consent).where(Consent.member_id == member.id))).all()
        client_ids = sorted({g.client_id for g in grants} | {c.client_id for c in consents})
        clients = [c for c in [await session.get(Client, cid) for cid in client_ids] if c is not None]
    return {
        "title": "Your account",
        "member": member,
        "member_name": member.display_name,
        "sessions": active,
        "current_sid": op.id,
        "clients": clients,
    }


# One line per service on the home page (labels and links come from the platform's KIZUNA_LINKS).
SERVICE_BLURBS = {
    "points": "Your points: balance, expiry and history",
    "shop": "Shop from Kizuna merchants and earn points",
    "travel": "Hotels across Japan, paid with points and card",
    "fintech": "Kizuna Card, bank and investments",
    "partner": "Earn and spend points at stores outside Kizuna",
}


@router.get("/")
async def home(request: Request) -> Response:
    """The member's Kizuna: points, what expires when, what is held or being earned, the campaigns
    live now, the services and recent activity (points' explanations in the page's language)."""
    from identity.home import member_home

    op = await current_session(request)
    provider = provider_of(request)
    member = await provider.member(op.member_id) if op else None
    links = {link["name"]: link["url"] for link in service_links()}
    context: dict[str, Any] = {
        "title": "Home",
        "member": member,
        "member_name": member.display_name if member else None,
        "blurbs": SERVICE_BLURBS,
        "points_url": links.get("points", ""),
    }
    if member is not None:
        context["home"] = await member_home(provider, member.id, i18n.language())
    return render(request, "home.html", context)


@router.get("/account")
async def account(request: Request) -> Response:
    op = await current_session(request)
    if op is None:
        return RedirectResponse("/signin?" + urlencode({"next": "/account"}), status_code=302)
    return render(request, "account.html", await _account_context(request, op))


async def _account_post(request: Request, csrf: str) -> OpSession | Response:
    if not csrf_ok(request, csrf):
        return csrf_failed(request)
    op = await current_session(request)
    if op is None:
        return RedirectResponse("/signin?" + urlencode({"next": "/account"}), status_code=303)
    return op


async def _account_change(request: Request, csrf: str, change: Any, done: str) -> Response:
    op = await _account_post(request, csrf)
    if not isinstance(op, OpSession):
        return op
    provider = provider_of(request)
    try:
        async with provider.db.transaction() as session:
            member = await members.get(session, op.member_id)
            await change(session, provider, member)
    except DomainError as exc:
        return render(
            request, "account.html", {**await _account_context(request, op), "error": exc.message}, exc.http_status
        )
    return render(request, "account.html", {**await _account_context(request, op), "notice": done})


def device_cookies(provider: Provider, policy: throttle.Policy) -> throttle.DeviceCookie:
    device_secrets = [hmac.new(secret, b"known-device", hashlib.sha256).digest() for secret in provider.csrf_secrets]
    return throttle.DeviceCookie(device_secrets, policy.device_days)


def remember_device(request: Request, response: Response, account: str) -> None:
    """After a successful sign-in: this browser becomes a known device of the account (see throttle)."""
    provider = provider_of(request)
    policy = throttle.Policy.from_settings(provider.settings)
    value = device_cookies(provider, policy).after_success(request.cookies.get(throttle.DEVICE_COOKIE), account)
    set_cookie(request, response, throttle.DEVICE_COOKIE, value, policy.device_days * 24 * 3600)


def _throttled(response: HTMLResponse, decision: throttle.Decision) -> HTMLResponse:
    response.headers["Retry-After"] = str(max(1, math.ceil(decision.wait_seconds)))
    return response


async def _password_attempt(request: Request, op: OpSession) -> Response | int:
    """The account center asks for the current password again in some forms; those checks are
    throttled like sign-in, so a stolen session cookie does not become a password oracle. Returns
    the attempt (failed until the form succeeds), or the refusal page."""
    provider = provider_of(request)
    async with provider.db.sessions() as session:
        account = (await members.get(session, op.member_id)).email
    policy = throttle.Policy.from_settings(provider.settings)
    device = device_cookies(provider, policy).device_for(request.cookies.get(throttle.DEVICE_COOKIE), account)
    decision = await throttle.open_attempt(
        provider.db, account=account, ip=client_ip(request), device=device, now=provider.now(), policy=policy
    )
    if decision.attempt_id is not None:
        return decision.attempt_id
    context = await _account_context(request, op)
    error = throttle.wait_message(decision.wait_seconds)
    return _throttled(render(request, "account.html", {**context, "error": error}, 429), decision)


async def _password_form_refused(request: Request, op: OpSession, exc: DomainError, attempt: int) -> Response:
    """The account page with the reason; only a wrong current password counts as a failed attempt."""
    provider = provider_of(request)
    if not isinstance(exc, Unauthenticated):
        async with provider.db.transaction() as session:
            await sessions.attempt_succeeded(session, attempt)
    return render(
        request, "account.html", {**await _account_context(request, op), "error": exc.message}, exc.http_status
    )


@router.post("/account/profile")
async def account_profile(request: Request, display_name: str = Form(""), csrf_token: str = Form("")) -> Response:
    async def change(session: Any, provider: Provider, member: members.Member) -> None:
        await members.update_profile(session, member, display_name=display_name, now=provider.now())

    return await _account_change(request, csrf_token, change, "Your profile is saved.")


@router.post("/account/email")
async def account_email(
    request: Request, email: str = Form(""), password: str = Form(""), csrf_token: str = Form("")
) -> Response:
    op = await _account_post(request, csrf_token)
    if not isinstance(op, OpSession):
        return op
    provider = provider_of(request)
    attempt = await _password_attempt(request, op)
    if isinstance(attempt, Response):
        return attempt
    changed = False
    try:
        async with provider.db.transaction() as session:
            member = await members.get(session, op.member_id)
            before = member.email
            await members.change_email(
                session, provider.passwords, member, new_email=email, password=password, now=provider.now()
            )
            await sessions.attempt_succeeded(session, attempt)
            changed = member.email != before
    except DomainError as exc:
        return await _password_form_refused(request, op, exc, attempt)
    if changed:  # after the commit
        provider.email.send(member)
    notice = "Your email address is changed. We sent a confirmation link to it."
    return render(request, "account.html", {**await _account_context(request, op), "notice": notice})


@router.post("/account/email/verify")
async def account_email_verify(request: Request, csrf_token: str = Form("")) -> Response:
    op = await _account_post(request, csrf_token)
    if not isinstance(op, OpSession):
        return op
    provider = provider_of(request)
    async with provider.db.sessions() as session:
        member = await members.get(session, op.member_id)
    if not member.email_verified:
        provider.email.send(member)
    context = await _account_context(request, op)
    return render(request, "account.html", {**context, "notice": f"We sent a confirmation link to {member.email}."})


@router.get("/verify-email")
async def verify_email(request: Request, token: str = "") -> Response:
    provider = provider_of(request)
    try:
        async with provider.db.transaction() as session:
            member = await provider.email.confirm(session, token, provider.now())
    except DomainError as exc:
        return error_page(request, exc.message, exc.http_status)
    message = f"Thank you: {member.email} is confirmed for your Kizuna ID."
    return render(request, "message.html", {"title": "Email confirmed", "message": message})


@router.post("/account/password")
async def account_password(
    request: Request, current_password: str = Form(""), new_password: str = Form(""), csrf_token: str = Form("")
) -> Response:
    from identity import backchannel
    from identity.session_end import end_other_sessions_in

    op = await _account_post(request, csrf_token)
    if not isinstance(op, OpSession):
        return op
    provider = provider_of(request)
    attempt = await _password_attempt(request, op)
    if isinstance(attempt, Response):
        return attempt
    now = provider.now()
    try:
        async with provider.db.transaction() as session:
            member = await members.get(session, op.member_id)
            await members.change_password(
                session, provider.passwords, member, current=current_password, new=new_password, now=now
            )
            # Whoever else knew the old password (or holds a session or refresh token obtained
            # with it) is out: every other session ends and every grant outside this one is revoked.
            deliveries = await end_other_sessions_in(session, member.id, keep_sid=op.id, now=now)
            await sessions.attempt_succeeded(session, attempt)
    except DomainError as exc:
        return await _password_form_refused(request, op, exc, attempt)
    await backchannel.deliver_due(provider, deliveries)
    notice = "Your password is changed. You are signed out everywhere else."
    return render(request, "account.html", {**await _account_context(request, op), "notice": notice})


@router.post("/account/sessions/{sid}/end")
async def account_end_session(request: Request, sid: str, csrf_token: str = Form("")) -> Response:
    from identity.session_end import end_sessions

    op = await _account_post(request, csrf_token)
    if not isinstance(op, OpSession):
        return op
    provider = provider_of(request)
    async with provider.db.sessions() as session:
        mine = [s.id for s in await sessions.sessions_of(session, op.member_id, provider.now())]
    if sid in mine:
        await end_sessions(provider, [sid])
    return RedirectResponse("/account" if sid != op.id else "/signin", status_code=303)


@router.post("/account/sessions/end-all")
async def account_end_all(request: Request, csrf_token: str = Form("")) -> Response:
    from identity.session_end import end_sessions

    op = await _account_post(request, csrf_token)
    if not isinstance(op, OpSession):
        return op
    provider = provider_of(request)
    async with provider.db.sessions() as session:
        mine = [s.id for s in await sessions.sessions_of(session, op.member_id, provider.now())]
    await end_sessions(provider, mine)
    response = RedirectResponse("/signin", status_code=303)
    response.delete_cookie(sessions.COOKIE, path="/")
    return response


@router.post("/account/clients/{client_id}/revoke")
async def account_revoke_client(request: Request, client_id: str, csrf_token: str = Form("")) -> Response:
    op = await _account_post(request, csrf_token)
    if not isinstance(op, OpSession):
        return op
    provider = provider_of(request)
    now = provider.now()
    async with provider.db.transaction() as session:
        grants = (
            await session.exec(
                select(Grant).where(
                    Grant.member_id == op.member_id, Grant.client_id == client_id, col(Grant.revoked_at).is_(None)
                )
            )
        ).all()
        for grant in grants:
            await revoke_grant(session, grant.id, now)
        consent = await session.get(Consent, (op.member_id, client_id))
        if consent is not None:
            await session.delete(consent)
    return RedirectResponse("/account", status_code=303)


# ---- privacy: download my data, delete my account -----------------------------------------------


@router.post("/account/export")
async def account_export(request: Request, csrf_token: str = Form("")) -> Response:
    from identity import privacy

    op = await _account_post(request, csrf_token)
    if not isinstance(op, OpSession):
        return op
    archive = await privacy.export_archive(provider_of(request), op.member_id)
    stamp = provider_of(request).now().strftime("%Y%m%d")
    return Response(
        archive,
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="kizuna-data-{stamp}.zip"', "Cache-Control": "no-store"},
    )


@router.post("/account/delete")
async def account_delete(
    request: Request, password: str = Form(""), confirm: str = Form(""), csrf_token: str = Form("")
) -> Response:
    from identity import backchannel, privacy

    op = await _account_post(request, csrf_token)
    if not isinstance(op, OpSession):
        return op
    provider = provider_of(request)
    if confirm != "yes":
        context = await _account_context(request, op)
        return render(request, "account.html", {**context, "error": "Tick the box to confirm the deletion."}, 400)
    attempt = await _password_attempt(request, op)
    if isinstance(attempt, Response):
        return attempt
    try:
        async with provider.db.transaction() as session:
            link, deliveries = await privacy.erase_member(
                session, provider, op.member_id, password=password, now=provider.now()
            )
            await sessions.attempt_succeeded(session, attempt)
    except DomainError as exc:
        return await _password_form_refused(request, op, exc, attempt)
    await backchannel.deliver_due(provider, deliveries)
    response = RedirectResponse(f"/erasure/{link}?new=1", status_code=303)
    response.delete_cookie(sessions.COOKIE, path="/")
    return response


@router.get("/erasure/{link}")
async def erasure_progress(request: Request, link: str, new: str = "") -> Response:
    from identity import privacy

    provider = provider_of(request)
    async with provider.db.sessions() as session:
        found = await privacy.progress(session, link)
    if found is None:
        return error_page(request, "There is no account deletion at this address.", 404)
    erasure, status = found
    complete = all(when is not None for when in status.values())
    response = render(
        request,
        "erasure.html",
        {
            "title": "Account deletion",
            "status": status,
            "complete": complete,
            "member_id": erasure.member_id,
            "link": str(request.url.replace(query="")),
            "new": bool(new),
        },
    )
    response.headers["Referrer-Policy"] = "no-referrer"
    return response
