"""Runtime code shipped to AWS Lambda: numpy, Pillow and a TFLite interpreter only (never TensorFlow)."""
