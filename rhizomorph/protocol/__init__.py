"""The sans-I/O protocol core: pure functions and small classes that turn bytes into events
and back. Nothing here imports asyncio, Ray or socket (tests/unit/test_layout.py checks)."""
