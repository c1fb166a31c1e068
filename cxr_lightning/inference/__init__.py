"""Using a trained checkpoint: predicting on image files (PNG, JPEG, DICOM) and exporting to ONNX or TorchScript.

``from cxr_lightning.inference import Predictor``: the Python entry point (``Predictor.from_checkpoint``,
``predict_array``, ``predict_file``, ``predict_files``).
"""

from cxr_lightning.inference.predictor import Predictor

__all__ = ["Predictor"]
