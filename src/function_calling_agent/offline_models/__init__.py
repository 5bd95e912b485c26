"""Tokenizers and tiny models built offline in seconds: the plumbing check and the demo of `./serve.sh` without a
model hub, and the test suite's stand-ins for real checkpoints."""
