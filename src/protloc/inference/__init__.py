"""From a trained run to probabilities and labels (predictor.py is the door)."""

# What runs a run's model: the torch model, or ONNX Runtime on its ONNX file; auto is ONNX Runtime for fp32 on
# the CPU and torch elsewhere (predictor.choose_engine). Here, in a module without imports, so that the command
# line can offer the choice without loading torch.
ENGINES = ("auto", "torch", "onnx")
