"""covidxr.lru under its former name, for webapp/sites.py (#23 moves that module: then this file goes)."""
from covidxr.lru import LRU, file_key

__all__ = ["LRU", "file_key"]
