"""The ONNX backend: export, ONNX Runtime, int8 quantisation and its gates."""
