"""protocol: what travels between clients and the server, sans-io.

REST models and their converter, the channel envelope in both directions,
WebSocket frames, execution results and bearer-token checks. Nothing here
imports trio, zmq or the web stack (a test enforces it).
"""
