"""Pure data of modelplane: no I/O, imports nothing else of ours."""

from modelplane.domain.auth import ApiKey, Limits, Principal, Role
from modelplane.domain.deployment import Deployment, Replica, ReplicaState, ServingConfig
from modelplane.domain.model import (
    Artifact,
    Conversion,
    Model,
    ModelRef,
    ModelVersion,
    parse_pairs,
)
from modelplane.domain.resources import (
    DEFAULT_REQUEST,
    Autoscaling,
    Node,
    NodeState,
    PlacementPolicy,
    Resources,
)
from modelplane.domain.signature import DATATYPES, Signature, TensorSpec
from modelplane.domain.traffic import RolloutPolicy, Split, SplitMode

__all__ = [
    "DATATYPES",
    "DEFAULT_REQUEST",
    "ApiKey",
    "Artifact",
    "Autoscaling",
    "Conversion",
    "Deployment",
    "Limits",
    "Model",
    "ModelRef",
    "ModelVersion",
    "Node",
    "NodeState",
    "PlacementPolicy",
    "Principal",
    "Replica",
    "ReplicaState",
    "Resources",
    "Role",
    "RolloutPolicy",
    "ServingConfig",
    "Signature",
    "Split",
    "SplitMode",
    "TensorSpec",
    "parse_pairs",
]
