"""From a trained run to probabilities and labels (predictor.py is the door)."""

# What runs a run's model: the torch model, or ONNX Runtime on its `protloc export` file. Here, in a module
# without imports, so that the command line can offer the choice without loading torch.
ENGINES = ("torch", "onnx")
