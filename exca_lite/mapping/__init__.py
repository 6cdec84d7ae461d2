"""One cached output per item: ``MapInfra`` (``infra.py``), its method and bound object, chunking
into jobs (``method.py``). The store the outputs live in is ``exca_lite.store``.

Only ``MapInfra`` is imported here: ``method.py`` needs numpy and the store, which
``import exca_lite`` avoids.
"""

from .infra import MapInfra

__all__ = ["MapInfra"]
