"""api: the REST and WebSocket surface (Quart-Trio on Hypercorn)."""
