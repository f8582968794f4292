"""Using trained weights: load and predict (``classifier``), measure on a test split (``evaluation``), export to
ONNX or TorchScript (``export``), show where a model looks (``explain``), and make photos look like data-set images
(``photo``). It reads the weight file (``resnetlab.weights``) and never imports the training engine."""
