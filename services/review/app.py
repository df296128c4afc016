"""The review app (FastAPI): thin routes over `queries` (reads) and lema.core.reviews (grades).

    GET  /healthz                  open
    GET  /login, POST /login       the token once -> a session cookie (auth.py); POST /logout
    GET  /                         the queue: filters run, source, status, grade (yours), q (search); ungraded first
    GET  /review?<filters>         the first correction of the filtered queue
    GET  /correction?id=&<filters> one correction: problem, the model's solution with its first wrong step marked, the
                                   corrector's step, explanation and corrected solution, the verifier's verdict, a diff
    GET  /summary                  grades per round and per corrector model, agreement between reviewers
    POST /api/grades               {"correction_id", "grade": excellent|good|poor, "note"?} -> 201
    POST /api/grades/undo          {"correction_id"}: withdraw your latest grade there
    GET  /api/summary              the summary as JSON

Pages without a session answer 401 with the login page; API calls 401 JSON. Every page is sent with a Content
Security Policy that allows this server's own script and style only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from lema.core.config import ReviewConfig
from lema.core.errors import InvalidInput, NotFound
from lema.core.reviews import GRADES, MAX_NOTE_CHARS, record_grade, undo_grade
from lema.services.review import queries
from lema.services.review.auth import (
    COOKIE,
    REVIEWER_HEADER,
    WRITE_HEADER,
    Caller,
    Unauthenticated,
    authenticate,
    check_login,
    session_cookie,
)

HERE = Path(__file__).resolve().parent
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
MAX_ID_CHARS = 400


class GradeIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    correction_id: str = Field(min_length=1, max_length=MAX_ID_CHARS, description="the correction's id")
    grade: str = Field(description="excellent | good | poor", examples=["good"])
    note: str = Field(default="", max_length=MAX_NOTE_CHARS, description="why (optional)")
    # The queue the reviewer is working through: the next correction in it is returned (so the page moves on).
    filters: dict[str, str] = Field(default_factory=dict, description="the queue's filters (run, source, status, "
                                                                      "grade, q)")


class UndoIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    correction_id: str = Field(min_length=1, max_length=MAX_ID_CHARS)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"message": message[:1000], "code": status}},
                        headers=SECURITY_HEADERS)


def build_app(config: ReviewConfig, sessions) -> FastAPI:
    app = FastAPI(title="lema review", description="Grade the corrector's corrections (lema serve review).",
                  docs_url=None, redoc_url=None)
    templates = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]))
    app.state.config, app.state.sessions = config, sessions
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    secure_cookie = config.tls_cert is not None

    def page(name: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = templates.get_template(name).render(grades=GRADES, **context)
        return HTMLResponse(html, status_code=status, headers=SECURITY_HEADERS)

    def login_page(status: int, message: str = "") -> HTMLResponse:
        return page("login.html", status, message=message, reviewer=None, token_env=config.token_env)

    def caller(request: Request) -> Caller:
        return authenticate(config.token_env, request.headers.get("authorization"), request.cookies.get(COOKIE),
                            request.headers.get(REVIEWER_HEADER))

    def writer(request: Request) -> Caller:
        who = caller(request)
        if who.by_cookie and request.headers.get(WRITE_HEADER) != "1":
            raise Unauthenticated(f"a write with the session cookie needs the {WRITE_HEADER} header")
        return who

    def is_api(request: Request) -> bool:
        return request.url.path.startswith("/api/")

    @app.exception_handler(Unauthenticated)
    async def _unauthenticated(request: Request, exc: Unauthenticated):
        return _error(401, str(exc)) if is_api(request) else login_page(401, str(exc))

    @app.exception_handler(InvalidInput)
    async def _invalid(request: Request, exc: InvalidInput):
        if is_api(request):
            return _error(400, str(exc))
        return page("message.html", 400, title="Bad request", message=str(exc)[:500], reviewer=None)

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound):
        if is_api(request):
            return _error(404, str(exc))
        return page("message.html", 404, title="Not found", message=str(exc)[:500], reviewer=None)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        field = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        return _error(422, f"{field}: {first.get('msg', 'invalid')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return _error(exc.status_code, str(exc.detail)) if is_api(request) or exc.status_code != 404 else \
            page("message.html", 404, title="Not found", message="no such page", reviewer=None)

    def _filters(request: Request) -> queries.QueueFilter:
        params = request.query_params
        return queries.QueueFilter(run=params.get("run", ""), source=params.get("source", ""),
                                   status=params.get("status", ""), grade=params.get("grade", "any"),
                                   q=params.get("q", ""))

    @app.get("/healthz", include_in_schema=False)
    async def healthz():
        return {"status": "ok"}

    @app.get("/login", response_class=HTMLResponse)
    async def login_form():
        return login_page(200)

    @app.post("/login")
    async def login(request: Request):
        form = await request.form()
        try:
            reviewer = check_login(config.token_env, str(form.get("token", "")), str(form.get("reviewer", "")))
        except Unauthenticated as exc:
            return login_page(401, str(exc))
        except InvalidInput as exc:
            return login_page(400, str(exc))
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, session_cookie(_token(config), reviewer, config.session_hours),
                            max_age=int(config.session_hours * 3600), httponly=True, samesite="strict",
                            secure=secure_cookie, path="/")
        return response

    @app.post("/logout")
    async def logout():
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    @app.get("/", response_class=HTMLResponse)
    def queue_page(request: Request, who: Caller = Depends(caller)):
        flt = _filters(request)
        try:
            offset = max(0, int(request.query_params.get("offset", "0")))
        except ValueError:
            raise InvalidInput("offset must be a whole number") from None
        with sessions() as session:
            result = queries.queue(session, flt, who.reviewer, offset, config.page_size)
        return page("queue.html", page_name="queue", reviewer=who.reviewer, result=result, flt=flt,
                    filters=flt.query_string(), statuses=queries.STATUSES, grade_filters=queries.GRADE_FILTERS)

    @app.get("/review")
    def start(request: Request, who: Caller = Depends(caller)):
        flt = _filters(request)
        with sessions() as session:
            first = queries.first_in_queue(session, flt, who.reviewer)
        if first is None:
            return page("message.html", 200, title="Nothing to review", reviewer=who.reviewer,
                        message="No correction matches these filters.")
        return RedirectResponse(_correction_url(first, flt), status_code=303)

    @app.get("/correction", response_class=HTMLResponse)
    def correction_page(request: Request, who: Caller = Depends(caller)):
        correction_id = request.query_params.get("id", "")
        if not correction_id or len(correction_id) > MAX_ID_CHARS:
            raise InvalidInput(f"id: a correction id of 1-{MAX_ID_CHARS} characters is required")
        flt = _filters(request)
        with sessions() as session:
            view = queries.correction_view(session, correction_id)
            before, after = queries.neighbours(session, flt, who.reviewer, correction_id)
        mine = next((g for g in view["grades"] if g["reviewer"] == who.reviewer), None)
        return page("correction.html", page_name="correction", reviewer=who.reviewer, c=view, mine=mine, flt=flt,
                    filters=flt.query_string(), prev_url=before and _correction_url(before, flt),
                    next_url=after and _correction_url(after, flt))

    @app.get("/summary", response_class=HTMLResponse)
    def summary_page(who: Caller = Depends(caller)):
        with sessions() as session:
            data = queries.summary(session)
        return page("summary.html", page_name="summary", reviewer=who.reviewer, s=data)

    @app.get("/api/summary")
    def summary_api(who: Caller = Depends(caller)):
        with sessions() as session:
            return JSONResponse(queries.summary(session), headers=SECURITY_HEADERS)

    @app.post("/api/grades", status_code=201)
    def grade(body: GradeIn, who: Caller = Depends(writer)):
        flt = queries.QueueFilter(**{k: v for k, v in body.filters.items() if k in ("run", "source", "status",
                                                                                     "grade", "q")})
        with sessions.begin() as session:
            saved = record_grade(session, body.correction_id, who.reviewer, body.grade, body.note)
        with sessions() as session:  # after the grade: an "ungraded" queue no longer holds this one
            _, after = queries.neighbours(session, flt, who.reviewer, body.correction_id)
        return JSONResponse(status_code=201, headers=SECURITY_HEADERS, content={
            "correction_id": saved.correction_id, "reviewer": saved.reviewer, "grade": saved.grade,
            "note": saved.note, "at": saved.created_at.isoformat(timespec="seconds"),
            "next_url": after and _correction_url(after, flt)})

    @app.post("/api/grades/undo")
    def undo(body: UndoIn, who: Caller = Depends(writer)):
        with sessions.begin() as session:
            now = undo_grade(session, body.correction_id, who.reviewer)
        return JSONResponse(headers=SECURITY_HEADERS, content={
            "correction_id": body.correction_id, "reviewer": who.reviewer, "grade": now.grade if now else None})

    @app.middleware("http")
    async def _headers(request: Request, call_next) -> Response:
        response = await call_next(request)
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response

    return app


def _token(config: ReviewConfig) -> str:
    from lema.core.security import read_token

    return read_token(config.token_env)


def _correction_url(correction_id: str, flt: queries.QueueFilter) -> str:
    from urllib.parse import urlencode

    rest = flt.query_string()
    return f"/correction?{urlencode({'id': correction_id})}" + (f"&{rest}" if rest else "")
