"""The OpenAI endpoint's API-key check and error handlers, for other routes served beside it (e.g. `/v1/rag`).

The same rules as `components.deploy.app`: with `LIFECYCLE_API_KEY` set, every request needs
`Authorization: Bearer <key>` (401 otherwise); errors are OpenAI-shaped JSON bodies, and an
invalid body is a 422 naming the field.
"""

import hmac

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError

from components.deploy.app import ApiError, _api_error, _invalid


def authorize(request: Request, api_key: str | None) -> None:
    """Raise a 401 `ApiError` unless `api_key` is None or the request carries it as a bearer token."""
    if api_key is None:
        return
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
        raise ApiError(401, "missing or wrong API key (Authorization: Bearer ...)", kind="authentication_error",
                       code="invalid_api_key")


def add_error_handlers(app: FastAPI) -> FastAPI:
    """Answer `ApiError` and request validation errors on `app` exactly as the OpenAI endpoint does."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    return app
