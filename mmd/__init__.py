"""MMD models: PMX/PMD reading, PMX writing, the Model type, textures and posing."""

from .errors import MMDFormatError
from .model import (
    IK,
    Bone,
    BoneFlag,
    DeformType,
    DisplayFrame,
    IKLink,
    Joint,
    Material,
    MaterialFlag,
    Model,
    Morph,
    MorphKind,
    MorphPanel,
    RigidBody,
    SoftBody,
    SphereMode,
)

__all__ = [
    "IK",
    "Bone",
    "BoneFlag",
    "DeformType",
    "DisplayFrame",
    "IKLink",
    "Joint",
    "MMDFormatError",
    "Material",
    "MaterialFlag",
    "Model",
    "Morph",
    "MorphKind",
    "MorphPanel",
    "RigidBody",
    "SoftBody",
    "SphereMode",
]
