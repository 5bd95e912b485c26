"""Benchmarks of function_calling_agent against the seed tutorial's client-side loop (see bench/README.md)."""
