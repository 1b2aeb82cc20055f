"""The files a run writes in its output folder (torch-free: the API serves them by name)."""

CHECKPOINT = "checkpoint.pt"  # everything needed to resume, written after every epoch
METRICS = "metrics.json"  # {"epochs": [...], "result": {...}}
MODEL = "model.pt"  # the final float state dict: another job's model.init
MODEL_INT = "model-int.pt"  # the integer export of a quantized job
CURVE = "accuracy.png"  # accuracy per epoch
