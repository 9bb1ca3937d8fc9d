"""Mesh construction and the single table of logical-axis rules."""

from lwm.sharding.mesh import MESH_AXES, make_mesh, single_device_mesh
from lwm.sharding.rules import (
    LOGICAL_RULES,
    logical_to_sharding,
    logical_to_spec,
    with_logical_constraint,
)

__all__ = [
    "LOGICAL_RULES",
    "MESH_AXES",
    "logical_to_sharding",
    "logical_to_spec",
    "make_mesh",
    "single_device_mesh",
    "with_logical_constraint",
]
