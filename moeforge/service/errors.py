"""One error shape for every failure the caller can see: `{"error": {"message", "type", "param", "code"}}`.

As the OpenAI API answers. A caller's mistake is a 4xx naming what is wrong and where (`param`: the
field, header or file line); anything else is a 500 whose body says only that it was logged.
"""

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from moeforge.errors import ArtifactNotFound, MoeforgeError

log = logging.getLogger(__name__)

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
          405: "invalid_request_error", 409: "conflict_error", 413: "request_too_large", 415: "invalid_request_error",
          422: "invalid_request_error", 429: "rate_limit_error"}


class APIError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def not_found(what: str, ident: str, param: str | None = None) -> APIError:
    """The one answer for "no such id" and "another tenant's id": the two must be indistinguishable."""
    shown = ident if len(ident) <= 80 else ident[:77] + "…"
    return APIError(404, f"no {what} {shown!r}", param=param, code=f"{what.replace(' ', '_')}_not_found")


def body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": _TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error"),
                      "param": param, "code": code}}


def install(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api(request: Request, exc: APIError):
        return JSONResponse(body(exc.status, exc.message, exc.param, exc.code), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body",)]
        param = ".".join(loc) or None
        message = first.get("msg", "invalid request")
        if first.get("type") == "extra_forbidden":
            message = f"unknown field {param!r}"
        elif first.get("type") == "json_invalid":
            message = f"the body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})"
            param = None
        else:
            message = f"{param}: {message}" if param else message
        return JSONResponse(body(400, message, param, first.get("type")), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else "request refused"
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}"
        return JSONResponse(body(exc.status_code, message), status_code=exc.status_code)

    @app.exception_handler(ArtifactNotFound)
    async def _missing(request: Request, exc: ArtifactNotFound):
        return JSONResponse(body(404, str(exc)), status_code=404)

    @app.exception_handler(MoeforgeError)
    async def _moeforge(request: Request, exc: MoeforgeError):
        return JSONResponse(body(400, str(exc)), status_code=400)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse(body(500, "internal error; it was logged on the server"), status_code=500)
