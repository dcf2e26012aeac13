"""The WebSocket gateway: the hypha-rpc v3 wire protocol (sans-I/O modules) and the socket shell."""
