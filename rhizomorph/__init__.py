"""rhizomorph: a Hypha-compatible RPC message router built on Ray.

Public surface: ``Config``, ``Deployment`` and ``ensure_ray``; everything under ``gateway``
and ``actors`` is internal.
"""

from rhizomorph.config import Config
from rhizomorph.launcher import Deployment, ensure_ray

__all__ = ["Config", "Deployment", "ensure_ray"]
