"""Pure data of modelplane: no I/O, imports nothing else of ours."""

from modelplane.domain.auth import ApiKey, Principal, Role
from modelplane.domain.deployment import Deployment, Replica, ReplicaState, ServingConfig
from modelplane.domain.model import Artifact, Conversion, Model, ModelRef, ModelVersion
from modelplane.domain.signature import DATATYPES, Signature, TensorSpec

__all__ = [
    "DATATYPES",
    "ApiKey",
    "Artifact",
    "Conversion",
    "Deployment",
    "Model",
    "ModelRef",
    "ModelVersion",
    "Principal",
    "Replica",
    "ReplicaState",
    "Role",
    "ServingConfig",
    "Signature",
    "TensorSpec",
]
