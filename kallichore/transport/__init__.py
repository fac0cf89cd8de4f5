"""transport: moving Jupyter frames between us and a kernel (ZeroMQ, in-memory)."""
