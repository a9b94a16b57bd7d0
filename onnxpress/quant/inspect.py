"""What onnxruntime really runs: the int8 kernels of its optimized graph.

A QDQ model only pays off when onnxruntime's QDQ transformers fuse each
``DequantizeLinear -> op -> QuantizeLinear`` group into an integer kernel
(``QLinearConv``, ``QLinearMatMul``, ``MatMulIntegerToFloat``, ``QGemm``,
``QLinearAdd``...). A misplaced Q/DQ (a float op inside a group, a Q with a second
reader) silently leaves the op in float between a DQ and a Q, slower than fp32.
:func:`count_int8_kernels` saves the graph onnxruntime optimized
(``SessionOptions.optimized_model_filepath``) and counts its integer kernels.
"""
from __future__ import annotations

import collections
import os
import tempfile

import onnx

__all__ = ["INT8_KERNELS", "FLOAT_COMPUTE", "count_int8_kernels", "optimized_op_counts"]

#: Integer kernels of onnxruntime's CPU EP (default and com.microsoft domains).
INT8_KERNELS = frozenset(
    {
        "QLinearConv",
        "QLinearMatMul",
        "MatMulInteger",
        "MatMulIntegerToFloat",
        "ConvInteger",
        "QGemm",
        "QLinearAdd",
        "QLinearMul",
        "QLinearConcat",
        "QLinearAveragePool",
        "QLinearGlobalAveragePool",
        "QLinearConvTranspose",
        "QLinearSigmoid",
        "QLinearLeakyRelu",
        "QLinearSoftmax",
        "QLinearReduceMean",
        "QLinearWhere",
        "QLinearPool",
        "DynamicQuantizeLSTM",
        "DynamicQuantizeMatMul",
        "QAttention",
    }
)

#: Float ops that should have become integer kernels in a quantized model.
FLOAT_COMPUTE = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "FusedConv", "FusedGemm", "FusedMatMul"})


def optimized_op_counts(model: onnx.ModelProto | str | os.PathLike, level: str = "extended") -> dict[str, int]:
    """Op counts (subgraphs included) of the graph onnxruntime runs for ``model``.

    Args:
        model: a ModelProto or a path.
        level: ``basic``, ``extended`` (portable) or ``all`` (adds x86/ARM layout ops).

    Returns:
        ``{op_type: count}``.
    """
    import onnxruntime as ort

    levels = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else open(model, "rb").read()
    with tempfile.TemporaryDirectory(prefix="onnxpress-ort-") as tmp:
        out = os.path.join(tmp, "optimized.onnx")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = levels[level]
        opts.optimized_model_filepath = out
        opts.log_severity_level = 3
        opts.intra_op_num_threads = 1
        ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        optimized = onnx.load(out, load_external_data=False)
    counts: collections.Counter[str] = collections.Counter()
    stack = [optimized.graph]
    while stack:
        g = stack.pop()
        for node in g.node:
            counts[node.op_type] += 1
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    stack.append(attr.g)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    stack.extend(attr.graphs)
    return dict(sorted(counts.items()))


def count_int8_kernels(model: onnx.ModelProto | str | os.PathLike, level: str = "extended") -> dict[str, int]:
    """Integer kernels in onnxruntime's optimized graph of ``model``.

    Args:
        model: a ModelProto or a path.
        level: ``extended`` (default) or ``all``.

    Returns:
        ``{op_type: count}`` of the ops of :data:`INT8_KERNELS` only.
    """
    return {k: v for k, v in optimized_op_counts(model, level).items() if k in INT8_KERNELS}
