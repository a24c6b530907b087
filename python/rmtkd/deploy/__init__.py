"""Deploying a compressed model: standard-module copies, int8 (PyTorch and ONNX Runtime), ONNX export.

    from rmtkd.deploy import export_onnx, quantize_int8
    export_onnx("runs/sst2/model", "runs/sst2/onnx", int8=True)   # model.onnx, model.int8.onnx, deploy.json
    small = quantize_int8(compressed_model)                         # int8 Linears, ProjectedLinear factors too
"""
from rmtkd.deploy.int8 import int8_linears, quantize_int8, quantize_onnx_int8
from rmtkd.deploy.onnx_export import export_onnx
from rmtkd.deploy.plain import plain_copy, rewritten_layers
from rmtkd.deploy.runtime import ExportedModel, is_export_folder

__all__ = ["ExportedModel", "export_onnx", "int8_linears", "is_export_folder", "plain_copy", "quantize_int8",
           "quantize_onnx_int8", "rewritten_layers"]
