"""The map store engine: per-item results in append-only shard files, knowing nothing of infras or
configs. ``mapping`` drives it; the CLI and catalog inspect it."""

from .claims import Claim
from .encoding import CacheType
from .format import Durability
from .mapstore import MapStore
from .writer import MapWriter, release_all_parked

__all__ = ["CacheType", "Claim", "Durability", "MapStore", "MapWriter", "release_all_parked"]
