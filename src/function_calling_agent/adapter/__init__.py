"""The Triton side of function_calling_agent: config.pbtxt parameters, the client tensor contract, the engine over BLS,
and metrics. `triton_python_backend_utils` is only ever imported by the model's `model.py` and passed in."""
