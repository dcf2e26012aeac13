"""Side-by-side benchmarks of rhizomorph against a bare WebSocket relay (and real Hypha, if installed).

``python -m benchmarks.run --suite quick`` (``make bench``) or ``--suite full`` (``make bench-full``).
See benchmarks/README.md.
"""
