"""The upload routes answered from the form the upload guard parsed: one parse per request.

The service's last ASGI middleware, behind the upload guard (serving/http_guard.py), which reads and
checks the whole form and hands it on in the scope. For a POST to an upload route the door calls
the route's declared API method as BentoML's endpoint would (`api_endpoint` in
_bentoml_impl/server/app.py): arguments validated by the method's input model from the parsed form
(BentoML's multipart serde), the result answered by its output model, with BentoML's `Server` and
`X-BentoML-Request-ID` headers. So each route's signature, types and answers stay declared once, on
the service; what a request no longer pays for is BentoML's second parse of the body, its context
middleware, router and exception handlers (docs/performance.md, "Cut: the upload door").

BentoML's outer middlewares (metrics, tracing, access log, request deadline) and the service's
(disconnect cancellation, the guard) still run before it, as for every route. CORS, which BentoML
adds after the service's middlewares when `http.cors` is enabled, is applied here to these answers.
"""

from __future__ import annotations

import functools
import inspect
import logging
from typing import Any

import bentoml
from bentoml._internal.context import trace_context
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from serving.http_guard import FORM

log = logging.getLogger("sound_classifier")


class _ParsedRequest(Request):
    """A request whose form the guard has parsed: BentoML's multipart serde reads it from here."""

    async def form(self, **_: Any) -> Any:
        return self.scope[FORM]


class UploadDoor:
    """ASGI middleware: answers a request that carries the guard's parsed form (`scope[FORM]`)
    from the served service's API method for its route; anything else goes on to BentoML's app."""

    def __init__(self, app):
        from _bentoml_impl.serde import MultipartSerde
        from bentoml._internal.configuration.containers import BentoMLContainer

        self.app = app
        self.serde = MultipartSerde()
        self.id_format = BentoMLContainer.logging_formatting.get()["span_id"]
        self.answer = self._answer
        if BentoMLContainer.http.cors.enabled.get():
            from starlette.middleware.cors import CORSMiddleware

            self.answer = CORSMiddleware(self._answer, **BentoMLContainer.access_control_options.get())

    async def __call__(self, scope, receive, send) -> None:
        if FORM in scope:
            await self.answer(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _answer(self, scope, receive, send) -> None:
        instance = bentoml.get_current_service()
        service = instance.bento_service
        name, method = _method(service, scope["path"])
        try:
            arguments = await method.input_spec.from_http_request(_ParsedRequest(scope, receive), self.serde)
        except ValidationError as e:  # as BentoML answers a form its input model refuses
            response = JSONResponse({"error": f"{e.error_count()} validation error for {e.title}",
                                     "detail": e.errors(include_context=False, include_input=False)},
                                    status_code=400)
        else:
            try:
                call = getattr(instance, name).local
                output = await call(**{k: getattr(arguments, k) for k in type(arguments).model_fields})
                response = output if isinstance(output, Response) else await method.output_spec.to_http_response(
                    output, self.serde)
            except Exception:  # a bug: BentoML's logged 500, not a dropped connection
                log.exception("Exception on %s [POST]", scope["path"])
                response = JSONResponse({"error": "An unexpected error has occurred, please check the server log."},
                                        status_code=500)
        # BentoML's own headers: the service, and the request's id (its tracing span's, as in the access log).
        response.headers["Server"] = f"BentoML Service/{service.name}"
        if trace_context.request_id is not None:
            response.headers["X-BentoML-Request-ID"] = format(trace_context.request_id, self.id_format)
        await response(scope, receive, send)


@functools.cache
def _method(service: Any, route: str) -> tuple[str, Any]:
    """(name, APIMethod) of `service`'s route, if the door can call it as BentoML's endpoint would."""
    for name, method in service.apis.items():
        if method.route == route:
            if method.ctx_param is not None or method.batchable or not inspect.iscoroutinefunction(method.func):
                raise TypeError(f"{route}: the upload door calls async API methods without a context only")
            return name, method
    raise LookupError(f"{route} has an upload rule but no API method")
