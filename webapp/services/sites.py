"""Site profiles on the server, for every session (covidxr.site, covidxr.profiles): the profile folder, safe names,
loading with reasons (cached), listing the adopted versions, adding a version, fitting from a batch. Which
version a session decides with is webapp.session.site_session's; the words and rows shown about a profile,
webapp.views.site_view's.

The profile folder is `$COVIDXR_SITES_DIR`, default `sites/` beside app.py (a relative value is taken from there
too); each profile is a sub-folder named after it, holding its immutable versions (covidxr.profiles). The module
imports no Streamlit.
"""
from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from covidxr import profiles
from covidxr.site import ARRAYS_FILE, MIN_PER_CLASS, SITE_FILE, SiteError, SiteProfile

from covidxr.lru import LRU
from webapp.views.wording import class_title, is_refused

SITES_ENV = "COVIDXR_SITES_DIR"
APP_DIR = Path(__file__).resolve().parents[2]
DEFAULT_DIR = "sites"
SHIPPED = "Shipped model"
MAX_NAME = 64
N_BOOT = 1000            # bootstrap resamples of the fitted figures' CIs (covidxr.site.fit_profile)
FIT_METHODS = None       # None: every method of covidxr.site (tests narrow it to keep their runtime short)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]*")
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}


def server_folder(env: str, default: str) -> Path:
    """A folder the operator names in the environment variable `env` (relative: from the app's folder), else
    `default` there: the app's folders on the server's disk (site profiles, cluster runs)."""
    path = Path(os.environ.get(env, "").strip() or default).expanduser()
    return path if path.is_absolute() else APP_DIR / path


def sites_dir() -> Path:
    """The server's profile folder: $COVIDXR_SITES_DIR (relative: from the app's folder), else sites/ there."""
    return server_folder(SITES_ENV, DEFAULT_DIR)


def check_name(name: str) -> str:
    """The name, stripped, when it is a safe folder name (it is the profile's folder and its name); ValueError
    saying why not otherwise."""
    name = (name or "").strip()
    if not name:
        raise ValueError("give the profile a name")
    if len(name) > MAX_NAME:
        raise ValueError(f"the name is longer than {MAX_NAME} characters")
    if not _NAME.fullmatch(name):
        raise ValueError("use letters, digits, spaces, '-', '_' and '.' only, starting with a letter or digit "
                         "(the name is also the profile's folder on the server)")
    if name.endswith("."):
        raise ValueError("the name must not end with '.'")
    if name.split(".")[0].strip().lower() in _RESERVED:
        raise ValueError(f"{name!r} is reserved as a file name on some systems")
    return name


# ---------------------------------------------------------------- loading, cached by the files' state

@dataclass
class Listed:
    """One version of a profile (by default its adopted one): the profile, or why it cannot be used.
    `path` is the version's own folder; `version` its content hash (covidxr.profiles.version_of)."""
    folder: str
    path: Path
    profile: SiteProfile | None = None
    error: str | None = None
    version: str = ""
    state: str = profiles.ADOPTED


_CACHE_SIZE = 64
_cache: LRU[tuple, SiteProfile | SiteError] = LRU(_CACHE_SIZE)  # by path, files' state, base model
_cache_lock = threading.Lock()


def _stamp(path: Path) -> tuple:
    out = []
    for f in (SITE_FILE, ARRAYS_FILE):
        try:
            s = (path / f).stat()
            out.append((s.st_mtime_ns, s.st_size))
        except OSError:
            out.append(None)
    return tuple(out)


def load(path: Path, card: Any) -> SiteProfile:
    """The profile in `path`, checked against the base model's card (covidxr.site.SiteProfile.load: another base
    model or arrays that do not match their sha256 raise SiteError). Loaded once per state of its two files
    (mtime and size), for every session of the server."""
    path = Path(path)
    key = (str(path.resolve()), _stamp(path), getattr(card, "weights_sha256", None))
    with _cache_lock:
        found = _cache.get(key)
    if found is None:
        try:
            found = SiteProfile.load(path, card)
            found.check_adoptable()  # clearly worse than the shipped model and no override recorded: not offered
        except SiteError as e:
            found = e
        except OSError as e:
            found = SiteError(f"site profile {path} could not be read: {e}")
        with _cache_lock:
            _cache.put(key, found)
    if isinstance(found, SiteError):
        raise found
    return found


def _listed(folder: str, v: profiles.Version, card: Any) -> Listed:
    try:
        profile = load(v.path, card)
    except SiteError as e:
        return Listed(folder, v.path, error=str(e), version=v.version, state=v.state)
    return Listed(folder, v.path, profile, version=v.version or profiles.version_of(profile), state=v.state)


def list_profiles(directory: Path, card: Any) -> list[Listed]:
    """The adopted version of every profile in the folder (hidden sub-folders are skipped; a profile whose
    versions are all retired is not listed), by name, each loaded or with the reason it cannot be used."""
    directory = Path(directory)
    try:
        subs = sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []
    out = []
    for p in subs:
        cur = profiles.current(p)
        if cur is not None:
            out.append(_listed(p.name, cur, card))
    return out


def find(directory: Path, folder: str, card: Any, version: str | None = None) -> Listed:
    """One profile by name (a name that is not a plain sub-folder is refused): `version` (kept even when it has
    been retired since: a session decides with the version it chose), else its adopted version."""
    directory = Path(directory)
    if not folder or Path(folder).name != folder or folder.startswith("."):
        return Listed(str(folder), directory, error="not a profile folder name")
    path = directory / folder
    found = profiles.versions(path)
    if version:
        pick = next((v for v in found if v.version == version), None)
        if pick is None and found and not found[0].version:  # older layout: one version in place
            pick = found[0]
    else:
        pick = profiles.current(path)
    if pick is None:
        return Listed(folder, path, error="no adopted version" if not version else f"no version {version}")
    got = _listed(folder, pick, card)
    if version and got.profile is not None and got.version != version:
        return Listed(folder, path, error=f"no version {version}")
    return got


def history(directory: Path, folder: str) -> list[profiles.Version]:
    """Every version of one profile with its state, oldest first."""
    return profiles.versions(Path(directory) / check_name(folder))


def save(profile: SiteProfile, directory: Path, folder: str, overwrite: bool = False, user: str = "") -> Path:
    """Add the profile as a new version under `folder` and adopt it (covidxr.profiles.add_version: written in a
    hidden folder and renamed into place, never rewritten). With `overwrite` the version adopted before is
    retired; without, FileExistsError when the name has an adopted version. Returns the version's folder."""
    folder = check_name(folder)
    return profiles.add_version(profile, Path(directory), folder, user=user, replace=overwrite).path


# ---------------------------------------------------------------- identity

def token(profile: SiteProfile | None) -> tuple | None:
    """What identifies a profile's decisions in a cache: its name and version (content hash)."""
    return None if profile is None else (profile.name, profiles.version_of(profile))


# ---------------------------------------------------------------- fitting from a batch

def labelled_counts(rows: Iterable[Any]) -> tuple[int, int]:
    """(positive, other) labelled chest films scored in a batch: the films a profile can be fitted on."""
    pos = neg = 0
    for r in rows:
        if getattr(r, "error", None) is not None or r.truth is None or is_refused(r):
            continue
        pos += bool(r.truth)
        neg += not r.truth
    return pos, neg


def fit_blocker(batch: Any) -> str | None:
    """Why a profile cannot be fitted from this batch (None: it can): films not kept, an interrupted run, or
    fewer than MIN_PER_CLASS labelled chest films of a class."""
    if batch.items is None:
        return ("The films of this batch were not kept (uploads larger than the session keeps): evaluate a server "
                "folder or a smaller upload to fit a profile.")
    if not batch.done:
        return "The batch did not run to the end: run it again to the end to fit a profile on it."
    pos, neg = labelled_counts(batch.rows)
    if min(pos, neg) < MIN_PER_CLASS:
        name = class_title(batch.positive_class)
        return (f"A site profile needs at least {MIN_PER_CLASS} labelled chest films of each class; this batch has "
                f"{pos} {name} and {neg} other (add {max(0, MIN_PER_CLASS - pos)} {name} and "
                f"{max(0, MIN_PER_CLASS - neg)} other).")
    return None


def fit(classifier: Any, items: list, name: str, progress=None, fitting=None) -> tuple[SiteProfile, list]:
    """(profile, skipped films) fitted on labelled items with `classifier`, the shipped model (not a profile):
    the films are re-read and scored in memory (covidxr.site.collect, `progress(done, total)`), then
    `fitting()` is called and the profile cross-validated and fitted; nothing but the profile is kept.
    TooFewFilms when too few films remain."""
    from covidxr.site import collect, fit_profile

    if getattr(classifier, "site", None) is not None:
        raise SiteError("a site profile is fitted with the shipped model, not with another profile")
    got = collect(classifier, items, batch_size=8, progress=progress)
    if fitting:
        fitting()
    profile = fit_profile(got.data, classifier.card, name, methods=FIT_METHODS, n_boot=N_BOOT)
    return profile, got.skipped
