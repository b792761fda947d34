"""SSRF by design: no route of the HTTP API takes a URL for the server to fetch (models and
samples arrive as request bodies). A new parameter or body field that looks like one fails here
and must be thought about (an allow-list, no private or metadata addresses) before it ships."""

from __future__ import annotations

import re
from typing import Any

import httpx

URL_LIKE = re.compile(r"(^|_)(url|uri|href|link|source_location|remote|endpoint_address)s?$", re.I)


def _names(node: Any, spec: dict[str, Any], seen: set[str]) -> set[str]:
    """Every property and parameter name reachable from ``node`` in an OpenAPI document."""
    names: set[str] = set()
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref not in seen:
            seen.add(ref)
            target: Any = spec
            for part in ref.removeprefix("#/").split("/"):
                target = target[part]
            names |= _names(target, spec, seen)
        for key, value in node.items():
            if key == "properties" and isinstance(value, dict):
                names |= set(value)
            if key == "parameters" and isinstance(value, list):
                names |= {p["name"] for p in value if isinstance(p, dict) and "name" in p}
            names |= _names(value, spec, seen)
    elif isinstance(node, list):
        for item in node:
            names |= _names(item, spec, seen)
    return names


async def test_no_route_takes_a_url(api: httpx.AsyncClient) -> None:
    spec = (await api.get("/openapi.json")).json()
    inputs = [
        {"parameters": op.get("parameters", []), "body": op.get("requestBody", {})}
        for ops in spec["paths"].values()
        for op in ops.values()
    ]  # what clients send; answers (a conversion's own "url") are not fetched
    names = _names(inputs, spec, set())
    assert len(names) > 20  # the walk found the API's parameters and fields
    assert sorted(n for n in names if URL_LIKE.search(n)) == []
