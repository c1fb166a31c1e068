"""Using a trained checkpoint: predicting on image files (PNG, JPEG, DICOM) and exporting to ONNX or TorchScript."""
