"""One cached result per config: ``TaskInfra`` (``infra.py``), its method and bound object, the
job protocol and the RAM copies (``method.py``). The cache folder's files are ``taskcache.py``'s.

Only ``TaskInfra`` is imported here: ``method.py`` needs numpy, which ``import exca_lite`` avoids.
"""

from .infra import TaskInfra

__all__ = ["TaskInfra"]
