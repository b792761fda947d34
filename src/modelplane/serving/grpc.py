"""The V2 gRPC surface (``inference.GRPCInferenceService``): a thin adapter over ``Gateway``.

ModelInfer turns the protobuf envelope into the V2 binary REST form that replicas read (tensor
bytes are passed through untouched, never decoded here) and turns the replica's binary answer
back into ``raw_output_contents``.
"""

from __future__ import annotations

import logging
import struct
from typing import Any

import grpc
import orjson

from modelplane.domain import Principal
from modelplane.errors import (
    InvalidInput,
    ModelplaneError,
    NotFound,
    Overloaded,
    Unauthenticated,
    error_for_status,
)
from modelplane.protocol.grpc import grpc_predict_v2_pb2 as pb
from modelplane.protocol.grpc import grpc_predict_v2_pb2_grpc as pb_grpc
from modelplane.protocol.v2 import EXTENSIONS
from modelplane.security.auditing import DENIED_STATUSES, claimed_key_id
from modelplane.security.detection import (
    MALFORMED_STATUSES,
    AttackDetector,
    Blocked,
    detected_principal,
)
from modelplane.security.limiter import Quotas
from modelplane.security.middleware import Authenticator
from modelplane.security.policy import Action, authorize
from modelplane.serving.access import visible_route
from modelplane.serving.gateway import Gateway
from modelplane.serving.routing import Route
from modelplane.telemetry.audit import DENIED, AuditTrail

log = logging.getLogger("modelplane.grpc")
STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ALREADY_EXISTS,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
CONTENT_FIELDS = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def _parameter(value: pb.InferParameter) -> Any:
    choice = value.WhichOneof("parameter_choice")
    return getattr(value, choice) if choice else None


def _parameters(params: Any) -> dict[str, Any]:
    return {key: _parameter(value) for key, value in params.items()}


def to_rest(request: pb.ModelInferRequest) -> tuple[bytes, int]:
    """The V2 binary REST body (JSON header + blobs) for a gRPC request, and the header length."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raw)} entries but there are {len(request.inputs)} inputs"
        )
    inputs = []
    blobs = list(raw)
    for i, tensor in enumerate(request.inputs):
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.shape),
        }
        if raw:
            entry["parameters"] = {"binary_data_size": len(raw[i])}
        elif tensor.datatype == "BYTES":
            # BYTES elements are bytes, not text: passed on in the binary form, as they came
            blob = b"".join(struct.pack("<I", len(v)) + v for v in tensor.contents.bytes_contents)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            field = CONTENT_FIELDS.get(tensor.datatype)
            if field is None:
                raise InvalidInput(
                    f"input {tensor.name!r}: {tensor.datatype} must be sent in raw_input_contents"
                )
            entry["data"] = list(getattr(tensor.contents, field))
        inputs.append(entry)
    doc: dict[str, Any] = {"inputs": inputs, "parameters": _parameters(request.parameters)}
    doc["parameters"]["binary_data_output"] = True
    if request.id:
        doc["id"] = request.id
    if request.outputs:
        doc["outputs"] = [
            {"name": o.name, "parameters": {"binary_data": True}} for o in request.outputs
        ]
    try:
        header = orjson.dumps(doc)
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise InvalidInput(f"the request cannot be encoded: {exc}") from None
    return header + b"".join(blobs), len(header)


def from_rest(body: bytes, header_length: int | None) -> pb.ModelInferResponse:
    end = len(body) if header_length is None else header_length
    doc = orjson.loads(body[:end])
    response = pb.ModelInferResponse(
        model_name=doc["model_name"], model_version=doc.get("model_version", ""),
        id=doc.get("id", ""),
    )  # fmt: skip
    offset = end
    for out in doc["outputs"]:
        tensor = response.outputs.add(name=out["name"], datatype=out["datatype"])
        tensor.shape.extend(out["shape"])
        size = int(out.get("parameters", {}).get("binary_data_size", 0))
        response.raw_output_contents.append(body[offset : offset + size])
        offset += size
    return response


def peer_address(peer: str) -> str:
    """The address in a gRPC peer string (``ipv4:1.2.3.4:567``, ``ipv6:[::1]:567``)."""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return peer
    return rest.rpartition(":")[0].strip("[]")


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self,
        gateway: Gateway,
        auth: Authenticator,
        version: str,
        *,
        quotas: Quotas | None = None,
        detector: AttackDetector | None = None,
        audit: AuditTrail | None = None,
    ) -> None:
        self._detector = detector
        self._audit = audit
        self._gateway = gateway
        self._auth = auth
        self._version = version
        self._quotas = quotas if quotas is not None else Quotas()

    def _principal(self, context: grpc.aio.ServicerContext[Any, Any]) -> Principal:
        if self._detector is None:
            return self._authenticate(context)
        return detected_principal(self._detector, peer_address(context.peer()),
                                  lambda: self._authenticate(context))  # fmt: skip

    def _authenticate(self, context: grpc.aio.ServicerContext[Any, Any]) -> Principal:
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                text = value.decode() if isinstance(value, bytes) else value
                scheme, _, token = text.partition(" ")
                if scheme.lower() == "bearer" and token:
                    principal = self._auth.authenticate(token.strip())
                    if principal is not None:
                        if principal.limits is not None:  # none: nothing more to pay
                            self._admit(principal, context)
                        return principal
                    raise Unauthenticated("invalid or revoked API key")
        raise Unauthenticated(
            "missing API key: send 'authorization: Bearer <key>' metadata (the admin key is in "
            "$MODELPLANE_HOME/admin.key; MODELPLANE_API_KEY holds it for the CLI and SDK)"
        )

    def _admit(self, who: Principal, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """The key's quotas (the same ones as over HTTP): RESOURCE_EXHAUSTED when over one,
        with ``retry-after`` in the trailing metadata."""
        denial = self._quotas.admit(who)
        if denial is None:
            if who.limits is not None and who.limits.max_concurrent is not None:
                context.add_done_callback(lambda _: self._quotas.release(who))
            return
        self._quotas.refuse(who, denial, peer_address(context.peer()), "grpc")
        context.set_trailing_metadata((("retry-after", str(denial.retry_after_s)),))
        raise Overloaded(denial.message)

    def _route(self, context: grpc.aio.ServicerContext[Any, Any], name: str, version: str) -> Route:
        """The route an invoking key may see (else the error a name never deployed gets)."""
        return self._visible(context, self._principal(context), name, version)

    def _visible(
        self, context: grpc.aio.ServicerContext[Any, Any], who: Principal, name: str, version: str
    ) -> Route:
        authorize(who, Action.INFER)
        try:
            return visible_route(self._gateway, who, name, version or None)
        except NotFound:
            if self._detector is not None:
                source = peer_address(context.peer())
                self._detector.unknown_model(who.key_id, who.name, source, name)
            raise

    async def _abort(
        self, context: grpc.aio.ServicerContext[Any, Any], exc: ModelplaneError
    ) -> None:
        if self._audit is not None and exc.status in DENIED_STATUSES:
            self._record_denial(context, exc.status)
        if isinstance(exc, Blocked):
            context.set_trailing_metadata((("retry-after", str(exc.retry_after_s)),))
        await context.abort(STATUS_CODES.get(exc.status, grpc.StatusCode.INTERNAL), exc.message)

    def _record_denial(self, context: grpc.aio.ServicerContext[Any, Any], status: int) -> None:
        """A 401 or 403 in the audit trail: who (never the key itself), from where."""
        token = ""  # nosec B105  # not a password: no key was sent yet
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                token = (value.decode() if isinstance(value, bytes) else value).partition(" ")[2]
        who = self._auth.authenticate(token.strip()) if token.strip() else None
        assert self._audit is not None
        self._audit.record(
            DENIED,
            key_id=who.key_id if who else claimed_key_id(token),
            key_name=who.name if who else None,
            source=peer_address(context.peer()),
            target="gRPC",
            result=str(status),
            detail="infer",
        )

    async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=True)

    async def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:
        try:
            self._principal(context)
        except ModelplaneError as exc:
            await self._abort(context, exc)
        return pb.ServerMetadataResponse(
            name="modelplane", version=self._version, extensions=EXTENSIONS
        )

    async def ModelReady(self, request: Any, context: Any) -> pb.ModelReadyResponse:
        try:
            route = self._route(context, request.name, request.version)
        except ModelplaneError as exc:
            await self._abort(context, exc)
        return pb.ModelReadyResponse(ready=bool(route.endpoints))

    async def ModelMetadata(self, request: Any, context: Any) -> pb.ModelMetadataResponse:
        try:
            route = self._route(context, request.name, request.version)
        except ModelplaneError as exc:
            await self._abort(context, exc)
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=route.name,
            versions=route.versions(),
            platform="onnxruntime_onnx",
            inputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape)
                    for t in route.signature.inputs],
            outputs=[tensor(name=t.name, datatype=t.datatype, shape=t.shape)
                     for t in route.signature.outputs],
        )  # fmt: skip

    async def ModelInfer(self, request: Any, context: Any) -> pb.ModelInferResponse:
        who = None
        try:
            who = self._principal(context)
            route = self._visible(context, who, request.model_name, request.model_version)
            body, header_length = to_rest(request)
            result = await self._gateway.infer(route, body, header_length)
            if result.status != 200:
                message = orjson.loads(result.body).get("error", "inference failed")
                raise error_for_status(result.status, message)
            if result.outlier:
                context.set_trailing_metadata((("modelplane-input-outlier", result.outlier),))
            return from_rest(result.body, result.header_length)
        except ModelplaneError as exc:
            if who is not None and self._detector is not None and exc.status in MALFORMED_STATUSES:
                self._detector.bad_request(who.key_id, who.name, peer_address(context.peer()),
                                           request.model_name, exc.status)  # fmt: skip
            await self._abort(context, exc)
            raise  # unreachable: abort raises
        except Exception:  # a bug: no Python text to the client, the details in the log
            log.exception("ModelInfer of %r failed", request.model_name)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server log")
            raise


def create_grpc_server(
    gateway: Gateway,
    auth: Authenticator,
    version: str,
    max_message_bytes: int,
    *,
    quotas: Quotas | None = None,
    detector: AttackDetector | None = None,
    audit: AuditTrail | None = None,
) -> grpc.aio.Server:
    options = [
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
    ]
    server = grpc.aio.server(options=options)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(  # type: ignore[no-untyped-call]  # generated stub
        InferenceServicer(gateway, auth, version, quotas=quotas, detector=detector, audit=audit),
        server,
    )
    return server
