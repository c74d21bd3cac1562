"""Symbolic dimension names of an ONNX graph's intermediate values, and why the exported graphs carry none."""
from __future__ import annotations

import onnx


def unname_derived_dims(model: onnx.ModelProto) -> onnx.ModelProto:
    """Clear the symbolic names of the intermediate values' dimensions, in place; ranks, fixed sizes and element
    types stay, and the graph inputs and outputs keep their names (batch, height, width).

    ONNX Runtime's allocation planner lets a tensor take over a freed buffer only when the two shapes match dim by
    dim, symbolic names included, and a buffer taken over stays allocated until the last tensor using it is gone.
    torch's exporter names every derived dim (an expression in width and height), so each of the Swin blocks'
    freed buffers were taken over by the next block's same-shaped tensors and all of them stayed allocated through
    the whole Swin stage: clearly more peak memory on large images, same speed (benchmarks/onnx_lookup.py; README,
    "ONNX graph", has the figures). Without names, a freed buffer goes back to the allocator.
    """
    for value in model.graph.value_info:
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_param"):
                dim.ClearField("dim_param")
    return model
