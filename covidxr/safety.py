"""Guards for input that names server files or arrives as an archive.

Files: every file named by a path (a server folder's films, the CLI's arguments, a zip given to
`site fit`) is read by `read_regular`, which refuses anything but a regular file and anything larger
than its limit before reading a byte, and never reads more than the limit: a FIFO, a character device
(`/dev/zero` named `zero.png`) or a 5 GB sparse file cannot stall a batch or fill the memory.

Server folders: only below roots the operator allows (env COVIDXR_DATA_ROOTS, or roots the app reads
from st.secrets). Zips: checked from their central directory before any entry is inflated, and
each entry read in memory under a size cap, because declared sizes can lie.
"""
from __future__ import annotations

import io
import os
import re
import stat
import zipfile
from pathlib import Path, PurePosixPath
from typing import Iterable

ROOTS_ENV = "COVIDXR_DATA_ROOTS"

MAX_ENTRIES = 20_000
MAX_TOTAL_BYTES = 4 << 30       # declared uncompressed size of all entries together
MAX_FILE_BYTES = 256 << 20      # one film: far above a 16-bit 4k x 4k DICOM
MAX_ENTRY_BYTES = MAX_FILE_BYTES  # one film inside a zip
MAX_RATIO = 100                 # films hardly compress (JPEG/PNG ~1:1, raw DICOM a few x); bombs do
RATIO_FLOOR = 1 << 20           # below this, an entry's ratio is harmless whatever it is


class PathRefused(ValueError):
    """A server path that may not be read; the message says why."""


class FileRefused(OSError):
    """A path that names no regular file, or one too large to read; the message says why (no path in it)."""


class ZipRefused(ValueError):
    """An archive that will not be opened, or an entry that will not be read; the message says why."""


# ---------------------------------------------------------------------------------------------
# server folders


def allowed_roots(extra: Iterable[str | os.PathLike] = ()) -> list[Path]:
    """Existing folders the operator allows: $COVIDXR_DATA_ROOTS (os.pathsep-separated) plus `extra`
    (e.g. from st.secrets), resolved to their real location. Empty means no server folder is allowed."""
    named = [p for p in os.environ.get(ROOTS_ENV, "").split(os.pathsep) if p.strip()] + [str(p) for p in extra]
    roots: list[Path] = []
    for p in named:
        real = Path(p).expanduser().resolve()
        if real.is_dir() and real not in roots:
            roots.append(real)
    return roots


def is_inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def resolve_inside(path: str | os.PathLike, roots: Iterable[str | os.PathLike], *, want_dir: bool = True) -> Path:
    """See _resolve_inside; a path the system cannot even look up (a name too long, ENAMETOOLONG; no permission)
    is refused with PathRefused and the system's reason too, so that a user's typing never raises anything else."""
    try:
        return _resolve_inside(path, roots, want_dir=want_dir)
    except PathRefused:
        raise
    except (OSError, ValueError) as e:
        text = os.fspath(path)
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise PathRefused(f"{shown}: {getattr(e, 'strerror', None) or e}") from None


def _resolve_inside(path: str | os.PathLike, roots: Iterable[str | os.PathLike], *, want_dir: bool = True) -> Path:
    """The real location of `path` if, and only if, it lies inside one of `roots`.

    A relative path is taken relative to each root in turn. Refused, with PathRefused: no roots
    configured, a `..` component (even one that would stay inside), an absolute path outside every
    root, a path that leaves the roots through a symbolic link, a path that does not exist (or is
    not a folder when `want_dir`).
    """
    named = [Path(os.path.abspath(Path(r).expanduser())) for r in roots]
    real_roots = [r.resolve() for r in named]
    text = os.fspath(path)
    if not named:
        raise PathRefused(f"no server folders are allowed: the operator lists them in ${ROOTS_ENV}")
    if not text.strip() or "\x00" in text:
        raise PathRefused("an empty or malformed path")
    given = Path(text).expanduser()
    if ".." in given.parts:
        raise PathRefused(f"{text}: '..' is not allowed in a server path")
    if given.is_absolute():
        if not any(is_inside(Path(os.path.abspath(given)), r) for r in named + real_roots):
            raise PathRefused(f"{text}: outside the allowed folders ({', '.join(map(str, named))})")
        candidates = [given]
    else:
        candidates = [r / given for r in named]
    for cand in candidates:
        if not cand.exists():
            continue
        real = cand.resolve()
        if not any(is_inside(real, r) for r in real_roots):
            raise PathRefused(f"{text}: a symbolic link leads outside the allowed folders")
        if want_dir and not real.is_dir():
            raise PathRefused(f"{text}: not a folder")
        return real
    raise PathRefused(f"{text}: no such file or folder inside the allowed folders")


def link_escapes(path: Path, root: Path) -> bool:
    """True when `path`, inside `root` by name, really lies elsewhere (through a symbolic link)."""
    return not is_inside(path.resolve(), root.resolve())


# ---------------------------------------------------------------------------------------------
# files

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _size(n: int) -> str:
    return f"{n / 2**20:,.0f} MB" if n >= 2**20 else f"{n:,} bytes"


def _kind(mode: int) -> str | None:
    """Why a file of this mode is refused, or None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    return next((what for test, what in _KINDS if test(mode)), "not a regular file")


def open_regular(path: str | os.PathLike, limit: int | None = MAX_FILE_BYTES) -> tuple[int, int]:
    """(an open read-only descriptor, the file's size) for a regular file no larger than `limit` (None: any
    size). The type is checked with stat before opening (a FIFO or a device is never opened: opening a FIFO
    blocks, reading a device never ends) and again with fstat on the opened descriptor (the name may have
    been swapped in between; O_NONBLOCK keeps even that open from blocking). Raises FileRefused (an OSError)
    with the reason; other OSErrors (missing, no permission, a name too long) pass as they are."""
    why = _kind(os.stat(path).st_mode)
    if why is None:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            st = os.fstat(fd)
            why = _kind(st.st_mode)
            if why is None and limit is not None and st.st_size > limit:
                raise FileRefused(f"the file is too large ({_size(st.st_size)}; the limit is {_size(limit)}): "
                                  "refused before reading")
            if why is None:
                os.set_blocking(fd, True)
                return fd, st.st_size
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    raise FileRefused(f"not a regular file but {why}: refused without reading it")


def read_regular(path: str | os.PathLike, limit: int = MAX_FILE_BYTES, first: int | None = None) -> bytes:
    """The bytes of a regular file (see open_regular for what is refused), reading at most `limit` bytes:
    a file that grows past its limit while read is refused too. `first`: read only the first `first` bytes
    (a format's magic number), whatever the file's size."""
    fd, size = open_regular(path, None if first is not None else limit)
    cap = limit if first is None else first
    with os.fdopen(fd, "rb", buffering=0) as f:
        data = f.read(min(size, cap) + 1)  # one allocation; the extra byte tells a file that grew
        while len(data) <= cap and (more := f.read(min(1 << 20, cap + 1 - len(data)))):  # short read, or it grew
            data += more
    if first is not None:
        return data[:first]
    if len(data) > limit:
        raise FileRefused(f"the file grew beyond the {_size(limit)} limit while it was read")
    return data


# ---------------------------------------------------------------------------------------------
# CSV cells

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")  # OWASP's list: a spreadsheet may run such a cell as a formula


def spreadsheet_safe(value):
    """A CSV cell that no spreadsheet runs as a formula (OWASP's rule): a text beginning with =, +, -, @, tab
    or carriage return gets a leading single quote. A text already beginning with a quote gets one more, so
    that `spreadsheet_raw` gives every text back exactly. Numbers, booleans and None pass unchanged (a
    number's cell cannot be a formula). Every CSV covidxr writes goes through this; JSON keeps raw values."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS + ("'",)):
        return "'" + value
    return value


def spreadsheet_raw(cell: str) -> str:
    """The text that `spreadsheet_safe` turned into `cell` (for a CSV covidxr reads back, e.g. --results)."""
    if cell.startswith("'") and cell[1:].startswith(FORMULA_STARTS + ("'",)):
        return cell[1:]
    return cell


# ---------------------------------------------------------------------------------------------
# zips

_DRIVE = re.compile(r"^[A-Za-z]:")


def unsafe_name(name: str) -> str | None:
    """Why an archive member name could escape an extraction folder (zip-slip), or None if it is safe."""
    if "\x00" in name:
        return "a NUL character"
    if "\\" in name:
        return "a backslash"
    if name.startswith("/"):
        return "an absolute path"
    if _DRIVE.match(name):
        return "a drive letter"
    if ".." in PurePosixPath(name).parts:
        return "a '..' component"
    return None


def _is_symlink(info: zipfile.ZipInfo) -> bool:
    return info.create_system == 3 and stat.S_ISLNK(info.external_attr >> 16)


def check_zip(data: bytes, max_entries: int = MAX_ENTRIES, max_total_bytes: int = MAX_TOTAL_BYTES,
              max_ratio: float = MAX_RATIO, max_entry_bytes: int = MAX_ENTRY_BYTES) -> list[zipfile.ZipInfo]:
    """The archive's file entries (folders left out), after checking its central directory only:
    nothing is inflated here. Raises ZipRefused for a non-zip or corrupt archive, too many entries,
    an unsafe member name (zip-slip), a symbolic-link or encrypted member, a duplicate name, a member
    or a total larger than allowed, or a compression ratio typical of a zip bomb."""
    if not data:
        raise ZipRefused("the archive is empty")
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
    except zipfile.BadZipFile as e:
        raise ZipRefused(f"not a readable zip archive: {e}") from None
    except (OSError, ValueError, EOFError, NotImplementedError) as e:
        raise ZipRefused(f"a corrupt zip archive: {e}") from None
    if len(infos) > max_entries:
        raise ZipRefused(f"the archive holds {len(infos)} entries, more than the {max_entries} allowed")
    seen: set[str] = set()
    total = 0
    for info in infos:
        why = unsafe_name(info.filename)
        if why:
            raise ZipRefused(f"unsafe entry name {info.filename!r}: {why} (path traversal)")
        if info.filename in seen:
            raise ZipRefused(f"the entry {info.filename!r} appears twice")
        seen.add(info.filename)
        if _is_symlink(info):
            raise ZipRefused(f"the entry {info.filename!r} is a symbolic link")
        if info.flag_bits & 0x1:
            raise ZipRefused(f"the entry {info.filename!r} is encrypted")
        if info.file_size > max_entry_bytes:
            raise ZipRefused(f"the entry {info.filename!r} would inflate to {info.file_size:,} bytes, "
                             f"more than the {max_entry_bytes:,} allowed for one file")
        if info.file_size > RATIO_FLOOR and info.file_size > max_ratio * max(info.compress_size, 1):
            raise ZipRefused(f"the entry {info.filename!r} inflates {info.file_size / max(info.compress_size, 1):,.0f}"
                             f" times (over {max_ratio:g}): a zip bomb")
        total += info.file_size
        if total > max_total_bytes:
            raise ZipRefused(f"the archive would inflate to more than the {max_total_bytes:,} bytes allowed")
    if total > RATIO_FLOOR and total > max_ratio * len(data):
        raise ZipRefused(f"the archive inflates {total / len(data):,.0f} times (over {max_ratio:g}): a zip bomb")
    return [i for i in infos if not i.is_dir()]


def read_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, max_bytes: int = MAX_ENTRY_BYTES) -> bytes:
    """One member's bytes, in memory, stopping as soon as it inflates past its declared size (or
    `max_bytes`): a forged header cannot make it fill the memory."""
    cap = min(info.file_size, max_bytes)
    out = bytearray()
    try:
        with zf.open(info) as f:
            while chunk := f.read(min(1 << 20, cap + 1 - len(out))):
                out += chunk
                if len(out) > cap:
                    raise ZipRefused(f"the entry {info.filename!r} inflates beyond {cap:,} bytes "
                                     f"(it declares {info.file_size:,})")
    except ZipRefused:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError) as e:
        raise ZipRefused(f"the entry {info.filename!r} is corrupt: {e}") from None
    return bytes(out)
