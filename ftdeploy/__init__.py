"""ftdeploy: train one DNN robust for a whole population of faulty ReRAM PIM chips, export it
with conductance-mapped weights to ONNX, and sign it off on simulated chips."""

__version__ = "0.1.0"
