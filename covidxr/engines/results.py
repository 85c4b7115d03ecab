"""The results file: one CSV line per scored film, appended and flushed as each batch finishes.

A run that is killed loses only the batches in flight; a line cut short by the kill is ignored on
reading (and cut off before the next append). `--resume` keys films by path and the sha256 of the
file's bytes: a film whose path is in the file with the same hash is not scored again; a film that
changed since is scored again and its newer line wins. Reading keeps one row per path.
"""
from __future__ import annotations

import csv
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Iterator

from ..card import sha256_file
from ..safety import MAX_FILE_BYTES, spreadsheet_raw, spreadsheet_safe
from .batch import FIELDS

_SHA = re.compile(r"^[0-9a-f]{64}$")


def _cell(k: str, v) -> str:
    """A record's value as its cell; texts made safe for spreadsheets (read back exactly by _value)."""
    if v is None:
        return ""
    if k == "probability":
        return repr(float(v))  # exact round trip
    if isinstance(v, bool) or k in ("truth", "chest_xray"):
        return "true" if v else "false"
    return spreadsheet_safe(str(v))


def _value(k: str, s: str):
    if s == "":
        return None
    if k == "probability":
        return float(s)
    if k in ("truth", "chest_xray"):
        return s == "true"
    return spreadsheet_raw(s)


class ResultsFile:
    """Append-only CSV of result records (covidxr.engines.batch.FIELDS, plus `None` written as an empty cell)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._f = None

    def read(self) -> dict[str, dict]:
        """path -> its last complete result record; {} when there is no file yet."""
        return self.read_from(0)[0]

    def read_from(self, offset: int) -> tuple[dict[str, dict], int]:
        """(path -> last complete record among the lines from byte `offset` on, the offset after the last whole
        line). A reader that follows a run still being written (the app's progress) passes back the offset it
        got, so each refresh parses only the new lines; offset 0 checks the header. A line cut short is left
        for the next call; an offset past the end (a file started afresh) reads from the start again."""
        try:
            with open(self.path, "rb") as f:
                if offset > os.fstat(f.fileno()).st_size:
                    offset = 0
                f.seek(offset)
                data = f.read()
        except FileNotFoundError:
            return {}, 0
        data = data[:data.rfind(b"\n") + 1]  # a line cut short by a kill, or still being written
        reader = csv.reader(data.decode("utf-8").splitlines(keepends=True))
        if offset == 0:
            header = next(reader, None)
            if header is None:
                return {}, 0
            if header != list(FIELDS):
                raise ValueError(f"{self.path}: not a covidxr results file (columns {header})")
        out: dict[str, dict] = {}
        for cells in reader:
            if len(cells) != len(FIELDS) or (cells[1] and not _SHA.match(cells[1])):
                continue
            rec = {k: _value(k, s) for k, s in zip(FIELDS, cells)}
            out[rec["path"]] = rec
        return out, offset + len(data)

    def open(self, fresh: bool) -> "ResultsFile":
        """Start appending; `fresh` starts a new file (a run without --resume)."""
        if fresh or not self.path.exists() or self.path.stat().st_size == 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(self.path, "w", newline="", encoding="utf-8")
            csv.writer(self._f, lineterminator="\r\n").writerow(FIELDS)
        else:
            with open(self.path, "rb+") as f:  # cut a line a kill left unfinished
                data = f.read()
                if not data.endswith(b"\n"):
                    f.truncate(data.rfind(b"\n") + 1)
            self._f = open(self.path, "a", newline="", encoding="utf-8")
        self._flush()
        return self

    def append(self, results: Iterable[dict]) -> None:
        w = csv.writer(self._f, lineterminator="\r\n")
        w.writerows([_cell(k, r.get(k)) for k in FIELDS] for r in results)
        self._flush()

    def _flush(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def sha256_of(path: str) -> str:
    """The file's sha256 ("" for one that cannot be read or is no regular file, so a FIFO never blocks a resume, or
    is larger than a film may be: it is refused when read, and hashing a 5 GB sparse file took 20 s)."""
    try:
        return sha256_file(path, MAX_FILE_BYTES)
    except OSError:
        return ""


def already_done(records: list[dict], done: dict[str, dict], threads: int = 8) -> Iterator[tuple[dict, dict | None]]:
    """(record, its stored result or None) per record: stored when the results file holds its path with the
    sha256 of the file as it is now (hashes only the files whose path is in `done`, on a few threads)."""
    candidates = [r for r in records if r["path"] in done]
    with ThreadPoolExecutor(threads) as pool:
        shas = dict(zip((r["path"] for r in candidates),
                        pool.map(lambda r: "" if r.get("error") else sha256_of(r["path"]), candidates)))
    for r in records:
        stored = done.get(r["path"])
        if stored is None:
            ok = False
        elif r.get("error"):  # refused before reading (e.g. a link out of the folder): nothing to hash
            ok = stored.get("error") == r["error"]
        else:
            ok = bool(stored["sha256"]) and stored["sha256"] == shas.get(r["path"])
        yield r, stored if ok else None
