"""Resources Keel's assets, checks and sensors are handed."""

from resources.keel_state import KeelState

__all__ = ["KeelState"]
