"""Keras model -> TFLite (fp32, float16, dynamic, int8) and ONNX (fp32, int8), validated and benchmarked.

Importing this package is cheap: TensorFlow, tf2onnx and onnxruntime are imported only inside the
functions that need them, so the pure parts (metadata, tolerances, variant choice) load without them.
"""
