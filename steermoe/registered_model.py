"""The MLflow "model from code" file of a registered steermoe version (not imported by the library).

MLflow copies this file into every logged model and runs it when the model is loaded; it declares the
pyfunc model (base model by reference + expert patch) that :mod:`steermoe.tracking` defines. No pickle:
a version loads with the steermoe code installed where it is loaded.
"""

from steermoe.tracking import serve_patched_model

serve_patched_model()
