"""create_app(settings) → the Centre's FastAPI app: the JSON API (routes/), its limits, and the static web UI."""

from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, JSONResponse

from moeforge.service.errors import body as error_body
from moeforge.service.errors import install as install_errors
from moeforge.service.settings import ServiceSettings

STATIC = Path(__file__).with_name("static")
SETTINGS_ENV = "MOEFORGE_SERVICE_SETTINGS"  # the settings file of `service up --api-workers N`'s API processes
UPLOAD_PATH = "/v1/files"
MULTIPART_SLACK = 64 * 1024  # headers and boundaries around the file part


class BodyLimit:
    """413 for a body over its route's limit, whether it says its length or not (then counted as it streams)."""

    def __init__(self, app, settings: ServiceSettings):
        self.app, self.settings = app, settings

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        upload = scope["path"] == UPLOAD_PATH and scope["method"] == "POST"
        limit = self.settings.max_upload_bytes + MULTIPART_SLACK if upload else self.settings.max_json_bytes
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            response = JSONResponse(error_body(413, f"the request body is {length.decode(errors='replace')} bytes; the limit "
                                                    f"here is {limit:,}", "body", "request_too_large"), status_code=413)
            return await response(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    from moeforge.service.errors import APIError

                    raise APIError(413, f"the request body is over the limit of {limit:,} bytes", param="body",
                                   code="request_too_large")
            return message

        return await self.app(scope, counted, send)


def create_app(settings: ServiceSettings) -> FastAPI:
    from moeforge.service.db import Database, centre_library
    from moeforge.service.market.search import RoutingMatcher
    from moeforge.service.routes import earnings, exports, files, jobs, keys, market, models
    from moeforge.store.open import open_store

    @asynccontextmanager
    async def lifespan(_app):
        import anyio.to_thread

        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.api_threads
        yield

    app = FastAPI(title="moeforge Customization Centre", version="1", docs_url="/docs", redoc_url=None, lifespan=lifespan)
    app.state.settings = settings
    app.state.db = Database(settings.database)
    app.state.store = open_store(settings.store)
    app.state.library = centre_library(app.state.db, settings.library_store)
    app.state.matcher = RoutingMatcher(app.state.library)
    install_errors(app)
    for module in (files, jobs, models, exports, keys, market, earnings):
        app.include_router(module.router)

    @app.get("/health")
    def health():
        return {"status": "ok"}

    from fastapi import Depends

    from moeforge.service.auth import requires

    @app.get("/v1/bases")
    def bases(caller=Depends(requires("read"))):
        return {"object": "list", "data": [{"id": name, "object": "base_model", "default": name == settings.default_base}
                                           for name in settings.bases], "has_more": False}

    @app.get("/")
    def index():
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/static/{name}")
    def static(name: str):
        path = STATIC / name
        if "/" in name or name.startswith(".") or not path.is_file():
            from moeforge.service.errors import not_found

            raise not_found("static file", name)
        return FileResponse(path)

    app.add_middleware(BodyLimit, settings=settings)
    return app


def from_environment() -> FastAPI:
    """The app of one of the API processes `service up` starts when it runs more than one: on the settings file it
    wrote, named in $MOEFORGE_SERVICE_SETTINGS. The process dies with `service up` (PR_SET_PDEATHSIG)."""
    import os

    from moeforge.network.local import die_with_parent
    from moeforge.service.settings import read_settings

    die_with_parent()
    return create_app(read_settings(Path(os.environ[SETTINGS_ENV])))
