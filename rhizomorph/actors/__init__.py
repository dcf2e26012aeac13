"""The Ray actors of a router and the links between them: gateway worker shell, registry,
chunking actor, peer links and channels."""
