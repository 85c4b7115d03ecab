"""Site profiles as immutable versions: what decides a clinician's result never changes behind their back.

Why: a decision threshold is safety-relevant configuration. A profile saved again under the same name
used to rewrite the files every session read, so a clinician's next film was decided at another operating
point with the same "in use" line. Here a profile's version is the hash of its content (`version_of`); each
version lives in its own folder and is never rewritten. "Replacing" a profile adds a version and retires the
one before; a session keeps the version it chose until its user switches.

On disk, under the server's profile folder (webapp.services.sites.sites_dir, or any folder):
    NAME/                   the profile's name (a safe folder name)
      versions/VERSION/     site.json + site.npz as covidxr.site.SiteProfile.save writes them
      history.jsonl         one JSON line per event: {"time", "version", "event": adopted|retired, "user"}
A version is adopted (choosable by clinicians) from its adoption until it is retired. The profile's folder
of the older layout (site.json directly in NAME/) is read as one adopted version.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .atomic import fsync_dir
from .site import ARRAYS_FILE, SITE_FILE, SiteError, SiteProfile

VERSIONS = "versions"
HISTORY = "history.jsonl"
ADOPTED, RETIRED = "adopted", "retired"
VERSION_CHARS = 12  # hex digits shown and used as the folder name (48 bits: collisions are not a concern here)


def version_of(profile: SiteProfile) -> str:
    """The profile's content hash (first VERSION_CHARS hex digits of a sha256 over everything that decides a
    result and describes it: name, base model, method, operating-point rule, target sensitivity, threshold,
    adapter arrays, whether it is offered for adoption and the override that adopts it anyway (reason, time,
    who), films, time of fitting). Two profiles that decide any film differently, or that were adopted on
    different grounds, never share a version."""
    h = hashlib.sha256()
    a = profile.adapter
    meta = {"name": profile.name, "base": profile.base_sha256, "method": profile.method, "rule": profile.rule,
            "target": None if profile.target is None else round(float(profile.target), 9),
            "threshold": round(float(profile.threshold), 9), "scale": float(a.scale), "bias": float(a.bias),
            "offered": bool(profile.offered), "override": profile.override or None,
            "films": profile.films, "created": profile.created}
    h.update(json.dumps(meta, sort_keys=True).encode())
    for arr in (a.w, a.mean, a.std):
        if arr is not None:
            h.update(np.ascontiguousarray(arr, np.float64).tobytes())
    return h.hexdigest()[:VERSION_CHARS]


@dataclass(frozen=True)
class Version:
    """One stored version of a named profile and its state."""
    name: str
    version: str
    path: Path
    state: str            # ADOPTED or RETIRED
    adopted: str = ""     # UTC time of adoption
    retired: str = ""
    by: str = ""          # who adopted it


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _history(folder: Path) -> list[dict]:
    try:
        lines = (folder / HISTORY).read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def _append(folder: Path, entries: list[dict]) -> None:
    with open(folder / HISTORY, "a") as f:
        f.write("".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))
        f.flush()
        os.fsync(f.fileno())


class _Lock:
    """An exclusive lock on one profile's folder (several server processes may adopt at once)."""

    def __init__(self, folder: Path):
        self.path = folder / ".lock"

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(self.path, "a")
        fcntl.flock(self.f, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.f, fcntl.LOCK_UN)
        self.f.close()


def versions(folder: Path) -> list[Version]:
    """Every version of the profile in `folder`, oldest adoption first, with its state."""
    folder = Path(folder)
    if (folder / SITE_FILE).exists() and not (folder / VERSIONS).exists():  # older layout: one version in place
        return [Version(folder.name, "", folder, ADOPTED)]
    state: dict[str, dict] = {}
    for e in _history(folder):
        v = str(e.get("version", ""))
        if not (folder / VERSIONS / v / SITE_FILE).exists():
            continue
        s = state.setdefault(v, {"state": ADOPTED, "adopted": "", "retired": "", "by": ""})
        if e.get("event") == ADOPTED:
            s.update(state=ADOPTED, adopted=e.get("time", ""), retired="", by=e.get("user", ""))
        elif e.get("event") == RETIRED:
            s.update(state=RETIRED, retired=e.get("time", ""))
    return [Version(folder.name, v, folder / VERSIONS / v, s["state"], s["adopted"], s["retired"], s["by"])
            for v, s in state.items()]


def current(folder: Path) -> Version | None:
    """The profile's adopted version (the newest one adopted), or None when every version is retired."""
    adopted = [v for v in versions(folder) if v.state == ADOPTED]
    return adopted[-1] if adopted else None


def add_version(profile: SiteProfile, root: Path, folder: str, user: str = "", replace: bool = False) -> Version:
    """Store the profile as a new version under root/folder and adopt it. With `replace`, the versions adopted
    before are retired in the same step; without, FileExistsError when the name already has an adopted version.
    A version's files are written in a hidden folder and renamed into place, never rewritten."""
    target = Path(root) / folder
    ver = version_of(profile)
    with _Lock(target):
        before = [v for v in versions(target) if v.state == ADOPTED]
        if before and not replace:
            raise FileExistsError(f"a profile named {folder!r} already exists")
        if before and not before[0].version:  # older layout: move it into versions/ first, as it is
            _migrate(target)
            before = [v for v in versions(target) if v.state == ADOPTED]
        vdir = target / VERSIONS / ver
        if not vdir.exists():
            (target / VERSIONS).mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{ver}.", dir=target / VERSIONS))
            try:
                profile.save(tmp)  # each file flushed to the disk (covidxr.atomic)
                tmp.rename(vdir)
                fsync_dir(vdir.parent)  # and the rename that makes the version exist
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        now = _now()
        _append(target, [{"time": now, "version": v.version, "event": RETIRED, "user": user}
                         for v in before if v.version != ver]
                + [{"time": now, "version": ver, "event": ADOPTED, "user": user}])
    return next(v for v in versions(target) if v.version == ver)


def set_state(root: Path, folder: str, version: str, event: str, user: str = "") -> Version:
    """Adopt or retire one stored version (site admins only; the caller checks the role and records it)."""
    if event not in (ADOPTED, RETIRED):
        raise ValueError(event)
    target = Path(root) / folder
    with _Lock(target):
        if not any(v.version == version for v in versions(target)):
            raise SiteError(f"profile {folder!r} has no version {version!r}")
        _append(target, [{"time": _now(), "version": version, "event": event, "user": user}])
    return next(v for v in versions(target) if v.version == version)


def _migrate(target: Path) -> None:
    """The older layout (site.json in the profile's folder) becomes its first version, unchanged."""
    try:
        profile = SiteProfile.load(target)
    except SiteError:
        return
    ver = version_of(profile)
    vdir = target / VERSIONS / ver
    vdir.mkdir(parents=True, exist_ok=True)
    for f in (SITE_FILE, ARRAYS_FILE):
        if (target / f).exists():
            os.replace(target / f, vdir / f)
    _append(target, [{"time": profile.created or _now(), "version": ver, "event": ADOPTED, "user": ""}])
