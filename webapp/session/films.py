"""Films as the pages get them: uploads and samples decoded in memory, once per session, keyed by content.

Nothing here writes to disk or logs: uploaded bytes are decoded in memory and the decoded film is
kept in this session's state only.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from covidxr.evaluate import LabelledItem
from covidxr.films import FILM_SUFFIXES, Film, FilmError, read_film
from covidxr.safety import ZipRefused

from webapp.views.images import shrink, to_uint8
from covidxr.lru import LRU, file_key
from webapp.session.state import FILMS, THUMBNAILS, user_state
from webapp.views.wording import class_title

SAMPLES = Path(__file__).resolve().parents[2] / "samples"
UPLOAD_TYPES = [s.lstrip(".") for s in FILM_SUFFIXES]
# Sample films of children (samples/README.md): the model is not validated on them, and the picker says so.
PAEDIATRIC_SAMPLES = {"pneumonia/person1000_virus_1681.jpg"}
CHILD_LABEL = "(child: the model is not validated on children)"  # st.file_uploader's `type`: suffixes without the dot


@dataclass
class Loaded:
    key: str                 # content hash of the file
    name: str
    film: Film | None
    error: str | None = None  # why the file could not be read, when film is None


def load_film(name: str, data: bytes) -> Loaded:
    """Bytes -> film, in memory; an unreadable file becomes a message, never an exception.
    Decoded films are kept per session by content, so that a rerun (a slider moved) does not decode again."""
    key = file_key(data)
    films: LRU[tuple[str, str], Loaded] = user_state(FILMS, lambda: LRU(12))
    found = films.get((key, name))
    if found is None:
        try:
            found = Loaded(key, name, read_film(data, name=name))
        except FilmError as e:
            found = Loaded(key, name, None, str(e))
        films.put((key, name), found)
    return found


def load_item(item: LabelledItem) -> Loaded:
    """A batch film again (from the server folder, or the upload kept in this session)."""
    try:
        data = item.load()
    except (OSError, ZipRefused) as e:
        return Loaded("", item.path, None, f"could not be read: {e}")
    return load_film(Path(item.path).name, data)


def thumbnail(item: LabelledItem, side: int = 256) -> np.ndarray | None:
    """A small 8-bit picture of a batch film for the gallery (None if unreadable), cached per session."""
    thumbs: LRU[str, np.ndarray | None] = user_state(THUMBNAILS, lambda: LRU(256))
    if item.path not in thumbs:
        try:
            film = read_film(item.load(), name=item.path)
            thumbs.put(item.path, to_uint8(shrink(film.pixels, side)))
        except (FilmError, OSError, ZipRefused):
            thumbs.put(item.path, None)
    return thumbs.get(item.path)


def sample_films() -> list[Path]:
    """The small real films shipped in samples/ (one subfolder per class)."""
    return sorted(p for p in SAMPLES.glob("*/*") if p.suffix.lower() in FILM_SUFFIXES)


def is_paediatric_sample(path: Path) -> bool:
    return f"{path.parent.name}/{path.name}" in PAEDIATRIC_SAMPLES


def sample_title(path: Path) -> str:
    title = f"{class_title(path.parent.name)} · {path.name}"
    return f"{title} {CHILD_LABEL}" if is_paediatric_sample(path) else title
