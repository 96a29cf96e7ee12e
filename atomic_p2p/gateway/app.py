"""The gateway's HTTP face: OpenAI's endpoints on Starlette, each call bought through a Requester.

How this works (docs/gateway.md)
--------------------------------
One :class:`~atomic_p2p.requester.Requester` joined to the gossip serves every HTTP call, so the
calls share its channels, bid manager, profiles, store and bid log, exactly as SDK calls do. Per
call: :class:`~.access.Access` admits the caller (API key, rate limit); :mod:`.mapping` parses
the body; :mod:`.catalog` resolves ``model`` against the live directory; the SDK buys
(``Requester.generate`` for completions, ``Requester.run`` with texts for embeddings); and
:mod:`.responses` shapes the answer.

A generation's auction runs before the HTTP answer starts: the first token (or the failure) is
awaited first, so an auction that fails is an HTTP error with a status (404, 503, 504), never a
broken stream. A stream then relays tokens as server-sent events (``data: {chunk}``, then
``data: [DONE]``) while the SDK's walk keeps its mid-stream failover: when the selling peer
dies, the runner-up continues and the client sees one stream. A client that goes away closes the
generator, which closes the :class:`~atomic_p2p.requester.Generation` (shielded from the
cancellation), which cancels the peer's call: the peer stops generating.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import socket
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from atomic_p2p.contract import TaskKind
from atomic_p2p.errors import (
    AtomicError,
    AuctionError,
    ConfigError,
    DeadlineError,
    NoBidsError,
    RateLimitedError,
    UnknownModelError,
)
from atomic_p2p.gateway import responses
from atomic_p2p.gateway.access import Access
from atomic_p2p.gateway.catalog import Catalog, catalog
from atomic_p2p.gateway.mapping import (
    GenerationCall,
    StopScanner,
    clip,
    parse_chat,
    parse_completion,
    parse_embedding,
)
from atomic_p2p.requester import GeneratedTokens, Generation, Requester

logger = logging.getLogger(__name__)

DEFAULT_DEADLINE_S = 30.0
MAX_BODY_BYTES = 1024 * 1024
FIRST_EXCHANGE_S = 2.0  # how long a call waits for the gossip's first exchange after a cold start


def _sse(data: object) -> bytes:
    return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


class Gateway:
    """OpenAI's HTTP API over a market (see the module docstring).

    ``deadline_s`` is a call's deadline unless its ``market.deadline_s`` says otherwise."""

    def __init__(
        self,
        requester: Requester,
        *,
        access: Access | None = None,
        deadline_s: float = DEFAULT_DEADLINE_S,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        if not deadline_s > 0:
            raise ConfigError("the gateway's deadline is a positive number of seconds")
        self.requester = requester
        self.access = access or Access()
        self.deadline_s = deadline_s
        self.max_body_bytes = max_body_bytes
        self._clock = requester.clock

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/models", self._guarded(self._models, body=False), methods=["GET"]),
                Route("/v1/models/{model:path}", self._guarded(self._model, body=False), methods=["GET"]),
                Route("/v1/chat/completions", self._guarded(self._chat), methods=["POST"]),
                Route("/v1/completions", self._guarded(self._completions), methods=["POST"]),
                Route("/v1/embeddings", self._guarded(self._embeddings), methods=["POST"]),
            ]
        )

    @contextlib.asynccontextmanager
    async def serving(self, host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[str]:
        """Serve on ``host:port`` (0: any free port) until the block ends; yields the base URL."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            sock.listen(128)
        except OSError as error:
            sock.close()
            raise ConfigError(f"cannot listen on {host}:{port}: {error}") from None
        bound = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app(), log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=5
        )
        server = _Server(config)
        # A plain task, not a task group: the block may begin and end in different tasks (a
        # test fixture's setup and teardown), which a cancel scope does not allow.
        serving = asyncio.ensure_future(server.serve([sock]))
        try:
            while not server.started:
                if serving.done():
                    serving.result()  # startup failed: raise its error
                    raise ConfigError("the gateway's server stopped while starting")
                await asyncio.sleep(0.005)
            where = f"[{host}]" if ":" in host else host
            yield f"http://{where}:{bound}"
        finally:
            server.should_exit = True
            await serving
        sock.close()

    # --- endpoints ------------------------------------------------------------------------------

    async def _models(self, request: Request, body: object) -> Response:
        listing = await self._catalog()
        return JSONResponse({"object": "list", "data": listing.models()})

    async def _model(self, request: Request, body: object) -> Response:
        name = request.path_params["model"]
        for model in (await self._catalog()).models():
            if model["id"] == name:
                return JSONResponse(model)
        raise UnknownModelError(f"no live peer offers model {clip(name)}")

    async def _chat(self, request: Request, body: object) -> Response:
        return await self._generation(parse_chat(body))

    async def _completions(self, request: Request, body: object) -> Response:
        return await self._generation(parse_completion(body))

    async def _embeddings(self, request: Request, body: object) -> Response:
        call = parse_embedding(body)
        route = (await self._catalog()).resolve(call.model, TaskKind.EMBEDDING)
        market = call.market
        deadline_s = market.deadline_s or self.deadline_s
        started = self._clock.monotonic()
        try:
            result = await self.requester.run(
                route.capability,
                text=list(call.texts),
                deadline_s=deadline_s,
                weights=market.weights,
                max_cost=market.max_price,
                selection=replace(market.selection, model_id=route.model_id),
            )
        except AtomicError as error:
            raise self._timed_out(error, started, deadline_s) from None
        outputs = result.outputs
        tensor = outputs["embedding"] if "embedding" in outputs else next(iter(outputs.values()))
        vectors = tensor.reshape(len(call.texts), -1).float().tolist()
        sold = responses.Sold(
            responses.decision_id(result.request_id, result.task_id),
            route.capability,
            result.winner,
            result.price,
        )
        body_out = responses.embeddings(
            call.model, vectors, as_base64=call.base64, sold=sold, input_tokens=result.input_tokens
        )
        return JSONResponse(body_out, headers=sold.headers())

    # --- generation -----------------------------------------------------------------------------

    async def _generation(self, call: GenerationCall) -> Response:
        route = (await self._catalog()).resolve(call.model, TaskKind.GENERATION)
        market = call.market
        deadline_s = market.deadline_s or self.deadline_s
        started = self._clock.monotonic()
        generation = self.requester.generate(
            route.capability,
            call.prompt,
            max_tokens=call.max_tokens,
            deadline_s=deadline_s,
            weights=market.weights,
            max_cost=market.max_price,
            selection=replace(market.selection, model_id=route.model_id),
        )
        prefix = "chatcmpl-" if call.chat else "cmpl-"
        answer = responses.Answer(
            prefix + secrets.token_hex(12), int(self._clock.wall_ms() / 1000), call.model, call.chat
        )
        try:
            first = await anext(generation, None)  # the auction, and the first token or the failure
        except AtomicError as error:
            await _close(generation)
            raise self._timed_out(error, started, deadline_s) from None
        except BaseException:
            await _close(generation)
            raise
        if call.stream:
            headers = {"x-atomic-capability": route.capability, "cache-control": "no-cache"}
            if first is not None:
                headers |= {"x-atomic-peer": first.peer_id.hex, "x-atomic-model": first.model_id}
            events = self._events(generation, first, call, answer, started, deadline_s)
            return _EventStream(events, generation, headers)
        try:
            text, stopped = await self._collect(generation, first, call.stop)
        except AtomicError as error:
            raise self._timed_out(error, started, deadline_s) from None
        finally:
            await _close(generation)
        result = generation.result
        sold = responses.sold_generation(result)
        finish = _finish(stopped, len(result.tokens), call.max_tokens)
        body = responses.completion(answer, text, finish, result.prompt_tokens, len(result.tokens), sold)
        return JSONResponse(body, headers=sold.headers())

    async def _collect(
        self, generation: Generation, first: GeneratedTokens | None, stops: tuple[str, ...]
    ) -> tuple[str, bool]:
        scanner = StopScanner(stops)
        pieces = []
        chunk = first
        while chunk is not None:
            pieces.append(scanner.feed(chunk.text))
            chunk = await anext(generation, None)
        pieces.append(scanner.flush())
        return "".join(pieces), scanner.stopped

    async def _events(
        self,
        generation: Generation,
        first: GeneratedTokens | None,
        call: GenerationCall,
        answer: responses.Answer,
        started: float,
        deadline_s: float,
    ) -> AsyncIterator[bytes]:
        """The SSE stream: a chunk per batch of text, a last chunk with the finish reason and the
        market's metadata, the usage chunk when asked, ``[DONE]``; a failure mid-stream is an
        ``error`` event (OpenAI's shape) before ``[DONE]``."""
        scanner = StopScanner(call.stop)
        try:
            opened = False
            async with contextlib.aclosing(_batches(generation, first)) as batches:
                async for batch in batches:
                    text = "".join(scanner.feed(chunk.text) for chunk in batch)
                    if text:
                        yield _sse(responses.chunk(answer, text=text, first=not opened))
                        opened = True
            result = generation.result
            tail = scanner.flush()
            finish = _finish(scanner.stopped, len(result.tokens), call.max_tokens)
            last = responses.chunk(answer, text=tail, finish=finish, first=not opened)
            last["atomic"] = responses.sold_generation(result).to_dict()
            yield _sse(last)
            if call.include_usage:
                usage_chunk = responses.chunk(answer, text=None)
                usage_chunk["usage"] = responses.usage(result.prompt_tokens, len(result.tokens))
                yield _sse(usage_chunk)
        except AtomicError as error:
            failure = self._timed_out(error, started, deadline_s)
            logger.warning("stream %s failed: %s", answer.answer_id, str(failure).splitlines()[0])
            yield _sse(responses.error_body(failure))
        finally:
            await _close(generation)
        yield DONE

    # --- plumbing -------------------------------------------------------------------------------

    async def _catalog(self) -> Catalog:
        discovery = self.requester.discovery
        await discovery.start()
        await discovery.first_exchange(FIRST_EXCHANGE_S)
        return catalog(discovery.agent.directory if discovery.agent is not None else None)

    def _timed_out(self, error: AtomicError, started: float, deadline_s: float) -> AtomicError:
        """A failure once the deadline has passed is a deadline (504), whatever the last attempt said."""
        late = self._clock.monotonic() - started >= deadline_s * 0.999
        if isinstance(error, AuctionError) and not isinstance(error, NoBidsError) and late:
            return DeadlineError(f"the deadline of {deadline_s:g} s passed: {error}")
        return error

    def _guarded(
        self, handler: Callable[[Request, object], Awaitable[Response]], *, body: bool = True
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            started = self._clock.monotonic()
            client = request.client.host if request.client else "unknown"
            try:
                who = self.access.admit(request.headers.get("authorization"), client, started)
                payload = await self._body(request) if body else None
                response = await handler(request, payload)
            except AtomicError as error:
                status = responses.status_of(error)
                logger.info(
                    "%s %s -> %d: %s", request.method, request.url.path, status, str(error).splitlines()[0]
                )
                headers = {}
                if isinstance(error, RateLimitedError):
                    headers["retry-after"] = str(max(1, round(error.retry_after_s + 0.5)))
                return JSONResponse(responses.error_body(error), status_code=status, headers=headers)
            logger.info(
                "%s %s by %s -> %d in %.0f ms",
                request.method,
                request.url.path,
                who,
                response.status_code,
                (self._clock.monotonic() - started) * 1000,
            )
            return response

        return endpoint

    async def _body(self, request: Request) -> object:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise ConfigError(f"the request body exceeds {self.max_body_bytes} bytes")
        raw = bytearray()
        async for piece in request.stream():
            raw += piece
            if len(raw) > self.max_body_bytes:
                raise ConfigError(f"the request body exceeds {self.max_body_bytes} bytes")
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise ConfigError("the request body is not valid JSON") from None


class _EventStream(StreamingResponse):
    """Server-sent events that close their generation however the response ends, even when the
    client left before the first event (the events' own ``finally`` then never runs)."""

    def __init__(self, events: AsyncIterator[bytes], generation: Generation, headers: dict[str, str]) -> None:
        super().__init__(events, media_type="text/event-stream", headers=headers)
        self._generation = generation

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await _close(self._generation)


class _Server(uvicorn.Server):
    """uvicorn's server without its signal handlers: whoever owns the gateway decides when it stops
    (``atomic gateway`` on SIGINT and SIGTERM), and a test's signals stay the test's."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _finish(stopped: bool, tokens: int, max_tokens: int) -> str:
    return "length" if not stopped and tokens >= max_tokens else "stop"


async def _batches(
    generation: Generation, first: GeneratedTokens | None
) -> AsyncGenerator[list[GeneratedTokens], None]:
    """The generation's chunks (from ``first`` on), grouped: what arrived while the last group was
    being sent goes out together, so a client that falls behind gets fewer, larger events rather
    than a backlog of small ones. A task pumps the generation; closing this generator cancels
    it (the peer's call with it) before the generation is closed."""
    queue: asyncio.Queue[GeneratedTokens | Exception | None] = asyncio.Queue()

    async def pump() -> None:
        try:
            chunk = first
            while chunk is not None:
                queue.put_nowait(chunk)
                chunk = await anext(generation, None)
            queue.put_nowait(None)
        except Exception as error:  # handed to the reader, which raises it
            queue.put_nowait(error)

    task = asyncio.ensure_future(pump())
    try:
        while True:
            items = [await queue.get()]
            while not queue.empty():
                items.append(queue.get_nowait())
            batch = [item for item in items if isinstance(item, GeneratedTokens)]
            if batch:
                yield batch
            end = items[-1]
            if isinstance(end, Exception):
                raise end
            if end is None:
                return
    finally:
        task.cancel()
        with anyio.CancelScope(shield=True):
            await asyncio.gather(task, return_exceptions=True)


async def _close(generation: Generation) -> None:
    """Close a generation even from a cancelled task: the peer's call must be cancelled."""
    with anyio.CancelScope(shield=True):
        await generation.aclose()
