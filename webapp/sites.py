"""Site profiles in the app (covidxr.site): the server's profile folder, safe names, loading with reasons,
saving, the "in use" line, the rows of the shipped-against-adapted table and the advice beside it.

The profile folder is `$COVIDXR_SITES_DIR`, default `sites/` beside app.py (a relative value is taken from there
too); each profile is a sub-folder holding site.json + site.npz, as `python -m covidxr site fit --out` writes it.
Which profile a browser session uses is kept in its session state (webapp.state.SITE_ACTIVE, the folder name;
None: the shipped model). The module itself imports no Streamlit: the few functions that read the session
import it when called.
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from covidxr.site import ARRAYS_FILE, MIN_PER_CLASS, ROUGH_PER_CLASS, SITE_FILE, SiteError, SiteProfile

from .lru import LRU
from .tables import RATES, estimate_cells
from .wording import class_title, fmt_threshold, is_refused

SITES_ENV = "COVIDXR_SITES_DIR"
APP_DIR = Path(__file__).resolve().parent.parent
DEFAULT_DIR = "sites"
SHIPPED = "Shipped model"
ADAPTED = "Adapted to your films"
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
    """One sub-folder of the profile folder: its profile, or why it cannot be used."""
    folder: str
    path: Path
    profile: SiteProfile | None = None
    error: str | None = None


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


def list_profiles(directory: Path, card: Any) -> list[Listed]:
    """Every profile in the folder (sub-folders holding site.json or site.npz; hidden ones, such as a save in
    progress, are skipped), by folder name, each loaded or with the reason it cannot be used."""
    directory = Path(directory)
    try:
        subs = sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []
    out = []
    for p in subs:
        if not ((p / SITE_FILE).exists() or (p / ARRAYS_FILE).exists()):
            continue
        try:
            out.append(Listed(p.name, p, load(p, card)))
        except SiteError as e:
            out.append(Listed(p.name, p, error=str(e)))
    return out


def find(directory: Path, folder: str, card: Any) -> Listed:
    """The profile of one sub-folder by name (a name that is not a plain sub-folder is refused)."""
    directory = Path(directory)
    if not folder or Path(folder).name != folder or folder.startswith("."):
        return Listed(str(folder), directory, error="not a profile folder name")
    path = directory / folder
    try:
        return Listed(folder, path, load(path, card))
    except SiteError as e:
        return Listed(folder, path, error=str(e))


def save(profile: SiteProfile, directory: Path, folder: str, overwrite: bool = False) -> Path:
    """Write the profile (site.json + site.npz, nothing else) to directory/folder: written in a hidden folder
    first and renamed into place, so that a reader never sees half a profile. FileExistsError when the folder
    exists and `overwrite` is not given."""
    folder = check_name(folder)
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    target = root / folder
    if target.exists() and not overwrite:
        raise FileExistsError(f"a profile named {folder!r} already exists")
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder}.", dir=root))
    try:
        profile.save(tmp)
        if target.exists():
            old = root / f".{folder}.old-{uuid.uuid4().hex[:8]}"
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


# ---------------------------------------------------------------- words and rows

def in_use_line(profile: SiteProfile | None) -> str:
    """"Shipped model" or "Site profile: NAME, fitted on N films, DATE"."""
    return SHIPPED if profile is None else profile.describe()


def token(profile: SiteProfile | None) -> tuple | None:
    """What identifies a profile's decisions in a cache (a profile saved again under its name is another one)."""
    return None if profile is None else (profile.name, profile.created, profile.threshold)


def method_title(method: str) -> str:
    if method == "temperature":
        return "temperature (the site's own temperature and threshold)"
    return f"head (a regularised layer on the frozen features, L2 {method.rsplit('_', 1)[-1]})"


def films_text(profile: SiteProfile, positive_class: str) -> str:
    """"16 films: 8 COVID-19, 8 other"."""
    pos = profile.films.get(positive_class, 0)
    return f"{profile.n_films} films: {pos} {class_title(positive_class)}, {profile.n_films - pos} other"


def figure_rows(profile: SiteProfile) -> list[dict[str, str]]:
    """Shipped against adapted on the site's films, both cross-validated, each "value (95% CI)"."""
    f = profile.figures or {}
    rows = []
    for what, title in (("shipped", SHIPPED), ("adapted", ADAPTED)):
        r = f.get(what) or {}
        rows.append({"scored by": title,
                     "operating point": fmt_threshold(r["threshold"]) if r.get("threshold") is not None else "—",
                     **estimate_cells(r)})
    return rows


def roc_rows(profile: SiteProfile) -> list[dict[str, Any]]:
    """The cross-validated ROC points of both rows, for one chart: {model, fpr, tpr, i}."""
    out = []
    for what, title in (("shipped", SHIPPED), ("adapted", ADAPTED)):
        points = profile.roc.get(what)
        if points is None or len(points) != 2:
            continue
        out += [{"model": title, "fpr": float(x), "tpr": float(y), "i": i} for i, (x, y) in enumerate(zip(*points))]
    return out


def _ci(r: dict, k: str) -> tuple[float, float] | None:
    ci = (r.get("ci") or {}).get(k)
    return None if not ci or ci[0] is None or ci[1] is None else (float(ci[0]), float(ci[1]))


def clearly_better(profile: SiteProfile) -> tuple[list[str], list[str]]:
    """(metrics whose adapted 95% CI lies wholly above the shipped one's, those wholly below)."""
    f = profile.figures or {}
    shipped, adapted = f.get("shipped") or {}, f.get("adapted") or {}
    better, worse = [], []
    for k in RATES:
        a, s = _ci(adapted, k), _ci(shipped, k)
        if a and s:
            if a[0] > s[1]:
                better.append(k)
            elif a[1] < s[0]:
                worse.append(k)
    return better, worse


def advice(profile: SiteProfile) -> tuple[str, str]:
    """("info" | "warning", text): use the adapted row only when it is clearly better (docs/site-profiles.md)."""
    better, worse = clearly_better(profile)
    names = {"auc": "AUC", "sensitivity": "sensitivity", "specificity": "specificity"}
    tail = ("If neither row is good enough for your purpose, do not use covidxr on these films. Re-fit when the "
            "equipment, the protocol or the population changes.")
    if better and not worse:
        return "info", (f"The adapted row is clearly better on your films: its 95% CI for "
                        f"{' and '.join(names[k] for k in better)} lies above the shipped model's. The kind of profile "
                        "was chosen on the same films, so the adapted row is slightly optimistic; check it on a fresh "
                        "labelled batch scored with the profile. " + tail)
    why = (f"it is clearly worse on {' and '.join(names[k] for k in worse)}" if worse
           else "the 95% CIs overlap")
    return "warning", (f"The adapted row is not clearly better than the shipped one on your films ({why}): keep "
                       "the shipped model. The shipped row is the honest estimate of how covidxr does on your "
                       "films. Use a profile only when its row is clearly better, with enough films that its CI "
                       "does not overlap the shipped one's. " + tail)


def rough_text(profile: SiteProfile) -> str | None:
    if not profile.rough:
        return None
    return (f"Fewer than {ROUGH_PER_CLASS} films of a class: these figures are a rough estimate, with wide "
            "intervals. More films give a steadier profile.")


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


# ---------------------------------------------------------------- this session's profile (Streamlit)

@dataclass
class Active:
    """The session's profile: None for the shipped model; `error` when the one chosen can no longer be used."""
    profile: SiteProfile | None = None
    folder: str | None = None
    error: str | None = None


def active() -> Active:
    """This session's site profile (webapp.state.SITE_ACTIVE), loaded (cached); one that no longer loads is
    dropped from the session with its reason, and the shipped model is used."""
    import streamlit as st

    from . import state
    from .model import card

    folder = st.session_state.get(state.SITE_ACTIVE)
    if not folder:
        return Active()
    found = find(sites_dir(), folder, card())
    if found.profile is None:
        st.session_state[state.SITE_ACTIVE] = None
        return Active(folder=folder, error=found.error)
    return Active(found.profile, folder)


def active_profile() -> SiteProfile | None:
    return active().profile


def scoring_classifier(profile: SiteProfile | None = None):
    """The server's model at the operating point of `profile` (None: the shipped one): a shallow copy sharing
    the networks, cached per profile."""
    from .model import classifier

    clf = classifier()
    if profile is None:
        return clf
    key = (id(clf), token(profile))
    with _cache_lock:
        found = _with_site.get(key)
    if found is None:
        found = clf.with_site(profile)
        with _cache_lock:
            _with_site.put(key, found)
    return found


_with_site: LRU[tuple, Any] = LRU(_CACHE_SIZE)  # the model at each profile's operating point
