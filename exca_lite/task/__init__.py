"""One cached result per config: ``TaskInfra`` (``infra.py``), its method and bound object, the
job protocol and the RAM copies (``method.py``), sweeps submitted as one job array (``array.py``);
``WorkDir`` (code snapshots for jobs) is ``exca_lite/workdir.py``'s, shared with ``MapInfra``.
The cache folder's files are ``taskcache.py``'s.

``method.py`` is not imported here: it needs numpy, which ``import exca_lite`` avoids (``array.py``
imports it when ``job_array`` runs).
"""

from ..workdir import WorkDir
from .array import TaskJob, job_array
from .infra import TaskInfra

__all__ = ["TaskInfra", "TaskJob", "WorkDir", "job_array"]
