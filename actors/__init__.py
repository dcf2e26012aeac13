"""Ray actors: gateway workers (sockets, routing, per-target delivery) and the shared registry."""
