"""The gateway: checks routes, picks a replica (least outstanding requests), forwards bytes.

It never decodes tensors; the replica does that once.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass

import httpx

from modelplane.errors import DeadlineExceeded, NotFound, Unavailable
from modelplane.serving.replica_app import TOKEN_HEADER
from modelplane.serving.routing import Endpoint, Route, RoutingTable

FORWARD_HEADERS = ("content-type", "inference-header-content-length")


@dataclass(frozen=True, slots=True)
class Forwarded:
    status: int
    body: bytes
    headers: dict[str, str]


class Gateway:
    def __init__(self, table: RoutingTable, token: str, timeout_s: float) -> None:
        self.table = table
        self._token = token
        self._timeout = timeout_s
        self._clients: dict[str, httpx.AsyncClient] = {}
        self._outstanding: defaultdict[str, int] = defaultdict(int)

    def route(self, name: str, version: str | None) -> Route:
        route = self.table.get(name)
        if route is None:
            raise NotFound(
                f"model {name!r} is not deployed; deploy it with `modelplane deploy {name}`"
            )
        if version is not None and version != route.version:
            raise NotFound(
                f"version {version} of model {name!r} is not deployed (deployed: {route.version})"
            )
        return route

    def _client(self, endpoint: Endpoint) -> httpx.AsyncClient:
        client = self._clients.get(endpoint.url)
        if client is None:
            limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
            if endpoint.url.startswith("unix:"):
                transport = httpx.AsyncHTTPTransport(uds=endpoint.url[5:], limits=limits)
                client = httpx.AsyncClient(transport=transport, base_url="http://replica")
            else:
                client = httpx.AsyncClient(base_url=endpoint.url, limits=limits)
            self._clients[endpoint.url] = client
        return client

    def _pick(self, route: Route, exclude: set[str]) -> Endpoint | None:
        candidates = [e for e in route.endpoints if e.replica_id not in exclude]
        if not candidates:
            return None
        return min(candidates, key=lambda e: self._outstanding[e.replica_id])

    async def infer(self, route: Route, body: bytes, headers: dict[str, str]) -> Forwarded:
        """Forward an inference to a ready replica; retry once elsewhere if a replica cannot be
        reached before it answered."""
        path = f"/v2/models/{route.name}/versions/{route.version}/infer"
        send = {k: v for k, v in headers.items() if k in FORWARD_HEADERS}
        send[TOKEN_HEADER] = self._token
        tried: set[str] = set()
        for _attempt in range(2):
            endpoint = self._pick(route, tried)
            if endpoint is None:
                break
            tried.add(endpoint.replica_id)
            self._outstanding[endpoint.replica_id] += 1
            try:
                response = await self._client(endpoint).post(
                    path, content=body, headers=send, timeout=self._timeout
                )
            except (httpx.ConnectError, httpx.RemoteProtocolError):
                continue
            except httpx.TimeoutException:
                raise DeadlineExceeded(
                    f"model {route.name!r} did not answer within {self._timeout:g}s"
                ) from None
            finally:
                self._outstanding[endpoint.replica_id] -= 1
            out = {k: v for k, v in response.headers.items() if k in FORWARD_HEADERS}
            return Forwarded(response.status_code, response.content, out)
        ready = len(route.endpoints)
        raise Unavailable(
            f"model {route.name!r} has no ready replica ({ready} of {route.desired} ready); "
            "retry shortly or check `modelplane deployments status "
            f"{route.name}`"
        )

    async def close(self) -> None:
        clients, self._clients = self._clients, {}
        await asyncio.gather(*(c.aclose() for c in clients.values()))
