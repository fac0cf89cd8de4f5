"""channels: the client <-> session bridge and the carriers that reach it.

One bridge (:mod:`kallichore.channels.bridge`) serves every client
connection, whichever carrier brought it: a WebSocket upgrade on the TCP
server (:mod:`kallichore.channels.tcp_channels`) or a per-session Unix
socket (:mod:`kallichore.channels.channel_socket`), both speaking WebSocket
over a byte stream (:mod:`kallichore.channels.stream_websocket`). trio only:
no Quart, and nothing from the server root.
"""
