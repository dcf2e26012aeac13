"""The client-facing side of a gateway worker: sockets, connections, delivery queues, the
workspace manager and the HTTP pages."""
