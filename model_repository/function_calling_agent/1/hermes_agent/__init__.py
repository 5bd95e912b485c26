"""The function-calling agent loop in plain Python (no Triton imports).

`model.py` beside this package is the Triton adapter; everything here is unit-testable without a server.
"""
