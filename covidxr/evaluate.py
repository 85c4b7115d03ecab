"""Labelled films (a folder, a zip, a list of uploads) -> streamed scores -> an evaluation report.

Layout: one subfolder per class; the subfolder named as the model card's positive class (`covid`, any
case) holds the positives, every other subfolder negatives; the label is the subfolder's name, lower-cased. `<source>/<class>/<file>`
(the layout of ../shared/data/cxr) is recognised too, the first level then naming the source; an
optional MANIFEST.csv with `path,source` columns gives sources as well.

Scoring streams: films are read and scored a small batch at a time, so memory stays flat however
many there are; a film that cannot be read becomes a row with its reason, and the rest are scored.

The gate (covidxr.gate) judges every film as predict() does: a film it refuses (not a frontal chest
radiograph) keeps its row, with `chest_xray` false and its reasons, but gets no probability or
prediction and stays out of the metrics, counted as `n_not_chest` and listed as `not_chest`. With
`include_non_chest=True` such films are scored and counted in the metrics like the others (their rows
still say `chest_xray: false`).
"""
from __future__ import annotations

import csv
import io
import os
import time
import zipfile
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Callable, Iterable, Iterator, Sequence

from .films import DICOM_MAGIC, DICOM_MAGIC_AT, FILM_SUFFIXES, Film, FilmError, is_dicom, read_film
from .report import CSV_COLUMNS, EvaluationReport, Row, build_report, decision, truth  # noqa: F401 - re-exported
from .safety import (MAX_ENTRY_BYTES, MAX_FILE_BYTES, FileRefused, PathRefused, ZipRefused, check_zip, link_escapes,
                     read_entry, read_regular)

MANIFEST = "MANIFEST.csv"
MAX_MANIFEST_BYTES = 64 << 20  # a MANIFEST.csv of a million films is far below this
_SKIPPED_PARTS = ("__MACOSX",)

Progress = Callable[[int, int], None]


@dataclass
class LabelledItem:
    """One film to score: where it is, its class label (None when no class folder names it), its
    source, and an error already known before reading (e.g. a refused link)."""
    path: str
    label: str | None
    source: str | None = None
    error: str | None = None
    read: Callable[[], bytes] | None = field(default=None, repr=False, compare=False)  # default: the file

    def load(self) -> bytes:
        """The film's bytes: from `read`, or from the file through the bounded reader (safety.read_regular:
        a FIFO, a device or an oversized file raises FileRefused, an OSError, before anything is read)."""
        return self.read() if self.read is not None else read_regular(self.path, MAX_FILE_BYTES)


# ---------------------------------------------------------------------------------------------
# finding the films


def _hidden(rel: PurePosixPath) -> bool:
    return any(p.startswith(".") or p in _SKIPPED_PARTS for p in rel.parts)


def _is_film_name(rel: PurePosixPath, head: Callable[[], bytes]) -> bool:
    """A known image extension, or (extension-less DICOM exports are common) DICOM's magic bytes."""
    if rel.suffix.lower() in FILM_SUFFIXES:
        return True
    if rel.name == MANIFEST:
        return False
    try:
        return is_dicom(head())
    except Exception:  # noqa: BLE001 - unreadable here means: not recognised as a film
        return False


def _layout(rels: Sequence[PurePosixPath], positive_class: str | None) -> list[tuple[str | None, str | None]]:
    """(label, source) per relative path. Flat `<class>/<file>` when any file lies directly in a
    top-level folder or a top-level folder is named as the positive class; else `<source>/<class>/<file>`.
    Deeper folders below the class folder keep that class; files above it have no label."""
    positive = (positive_class or "").lower()
    flat = any(len(r.parts) == 2 or (len(r.parts) > 1 and r.parts[0].lower() == positive) for r in rels)
    if flat:
        return [(r.parts[0].lower() if len(r.parts) >= 2 else None, None) for r in rels]
    return [(r.parts[1].lower(), r.parts[0]) if len(r.parts) >= 3 else (None, None) for r in rels]


def _manifest_sources(text: str) -> dict[str, str]:
    """path -> source from a MANIFEST.csv (columns path, source); {} when it has no such columns."""
    reader = csv.DictReader(io.StringIO(text))
    if not reader.fieldnames or not {"path", "source"} <= set(reader.fieldnames):
        return {}
    return {str(PurePosixPath(row["path"])): row["source"] for row in reader if row.get("path") and row.get("source")}


def _items(rels: Sequence[PurePosixPath], paths: Sequence[str], readers: Sequence[Callable[[], bytes] | None],
           errors: Sequence[str | None], manifest: dict[str, str], positive_class: str | None) -> list[LabelledItem]:
    layout = _layout(rels, positive_class)
    items = [LabelledItem(path, label, manifest.get(str(rel), source), err, read)
             for rel, path, read, err, (label, source) in zip(rels, paths, readers, errors, layout)]
    return sorted(items, key=lambda i: i.path)


def _head(path: Path) -> bytes:
    return read_regular(path, first=DICOM_MAGIC_AT + len(DICOM_MAGIC))


def scan_folder(root: str | os.PathLike, positive_class: str | None = None) -> list[LabelledItem]:
    """Every film below `root`, labelled by its class folder, in sorted order. Hidden files are
    skipped. Symbolic links are not followed into folders; a link (to a file or a folder) that
    leads outside `root` becomes an item with an error, so the report lists it as refused.
    Raises PathRefused when `root` is not a folder or holds no film."""
    root = Path(root)
    if not root.is_dir():
        raise PathRefused(f"{root}: not a folder")
    rels: list[PurePosixPath] = []
    errors: list[str | None] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames.sort()
        for d in [d for d in dirnames if (here / d).is_symlink()]:
            dirnames.remove(d)  # os.walk would not descend anyway; this keeps the intent explicit
            rel = PurePosixPath((here / d).relative_to(root).as_posix())
            if not _hidden(rel) and link_escapes(here / d, root):
                rels.append(rel)
                errors.append("refused: a symbolic link to a folder outside the evaluated folder")
        for name in sorted(filenames):
            path = here / name
            rel = PurePosixPath(path.relative_to(root).as_posix())
            if _hidden(rel):
                continue
            if path.is_symlink() and link_escapes(path, root):
                rels.append(rel)
                errors.append("refused: a symbolic link to a file outside the evaluated folder")
            elif _is_film_name(rel, partial(_head, path)):
                rels.append(rel)
                errors.append(None)
    manifest_file = root / MANIFEST
    manifest = {}
    if manifest_file.is_file() and not link_escapes(manifest_file, root):
        try:
            manifest = _manifest_sources(read_regular(manifest_file, MAX_MANIFEST_BYTES).decode("utf-8", "replace"))
        except OSError as e:
            raise PathRefused(f"{MANIFEST}: {e.strerror or e}") from None
    if not rels:
        raise PathRefused(f"{root}: no films found (expected one subfolder per class, e.g. covid/ and normal/)")
    return _items(rels, [str(root / r) for r in rels], [None] * len(rels), errors, manifest, positive_class)


def _strip_wrapper(rels: Sequence[PurePosixPath]) -> tuple[list[PurePosixPath], str]:
    """Zipping a folder usually adds the folder itself on top: drop one shared top level when the
    films lie at least two levels below it."""
    tops = {r.parts[0] for r in rels}
    if len(tops) == 1 and all(len(r.parts) >= 3 for r in rels):
        top = tops.pop()
        return [PurePosixPath(*r.parts[1:]) for r in rels], top + "/"
    return list(rels), ""


def scan_zip(zf: zipfile.ZipFile, infos: Sequence[zipfile.ZipInfo], prefix: str = "",
             max_entry_bytes: int = MAX_ENTRY_BYTES, positive_class: str | None = None) -> list[LabelledItem]:
    """Films in an already checked archive (see safety.check_zip); each is read, in memory, when scored."""
    def head(info: zipfile.ZipInfo) -> bytes:
        with zf.open(info) as f:
            return f.read(DICOM_MAGIC_AT + len(DICOM_MAGIC))

    by_name = {PurePosixPath(i.filename): i for i in infos if not _hidden(PurePosixPath(i.filename))}
    films = [r for r, i in by_name.items() if _is_film_name(r, partial(head, i))]
    rels, top = _strip_wrapper(films) if films else ([], "")
    manifest = {}
    if (m := by_name.get(PurePosixPath(top + MANIFEST))) is not None:
        manifest = _manifest_sources(read_entry(zf, m, max_entry_bytes).decode("utf-8", "replace"))
    readers = [partial(read_entry, zf, by_name[f], max_entry_bytes) for f in films]
    return _items(rels, [prefix + str(f) for f in films], readers, [None] * len(films), manifest, positive_class)


# ---------------------------------------------------------------------------------------------
# scoring


def _read(item: LabelledItem) -> tuple[Film | None, str | None]:
    """(film, None) or (None, reason)."""
    if item.error is not None:
        return None, item.error
    try:
        return read_film(item.load(), name=PurePosixPath(item.path).name), None
    except (FilmError, FileRefused) as e:
        return None, str(e)
    except OSError as e:
        return None, f"could not be read: {e.strerror or e}"
    except Exception as e:  # noqa: BLE001 - an I/O or decoder failure is this file's problem only
        return None, f"could not be read: {e}"


def _predict(classifier, films: list) -> list[tuple[object | None, str | None]]:
    """(prediction, error) per film; if a batch fails, each film is tried alone to isolate the culprit."""
    if not films:
        return []
    try:
        return [(p, None) for p in classifier.predict(films, batch_size=len(films))]
    except Exception as e:  # noqa: BLE001 - one film the network cannot take must not sink the batch
        if len(films) == 1:
            return [(None, f"could not be scored: {e}")]
    return [_predict(classifier, [f])[0] for f in films]


def scored_row(item: LabelledItem, pred, error: str | None, threshold: float, positive_class: str,
               include_non_chest: bool = False) -> Row:
    """The row of one item from its prediction (covidxr.classifier.Prediction) or its error. A film the
    gate refuses gets no probability unless `include_non_chest`."""
    truth_ = truth(item.label, positive_class)
    if pred is None:
        return Row(item.path, item.label, item.source, None, None, error, truth_)
    verdict = getattr(pred, "ood", None)
    chest = None if verdict is None else bool(verdict.is_chest)
    p = pred.probability if chest is not False or include_non_chest else None
    return Row(item.path, item.label, item.source, p, None if p is None else decision(p, threshold, positive_class),
               None, truth_, chest, tuple(getattr(verdict, "reasons", ()) or ()),
               getattr(verdict, "details", None) or None, tuple(getattr(verdict, "warnings", ()) or ()),
               None if p is None else dict(pred.class_probabilities))


def iter_scores(classifier, items: Sequence[LabelledItem], batch_size: int = 16, progress: Progress | None = None,
                threshold: float | None = None, include_non_chest: bool = False) -> Iterator[Row]:
    """One Row per item, in order, reading and scoring `batch_size` films at a time (only one
    batch of decoded films is ever held). `progress(done, total)` is called before the first
    batch and after each one. `threshold` None: the classifier's. A film the gate refuses gets no
    probability unless `include_non_chest`."""
    threshold = classifier.threshold if threshold is None else threshold
    total = len(items)
    if progress:
        progress(0, total)
    for start in range(0, total, batch_size):
        batch = items[start:start + batch_size]
        yield from score_batch(classifier, batch, threshold, include_non_chest)
        if progress:
            progress(start + len(batch), total)


def score_batch(classifier, items: Sequence[LabelledItem], threshold: float | None = None,
                include_non_chest: bool = False) -> list[Row]:
    """One batch of items -> their Rows, in order: read, score together, judge by the gate. The one
    per-batch step of every engine (iter_scores here, covidxr.engines' Ray actors), so rows agree."""
    threshold = classifier.threshold if threshold is None else threshold
    positive_class = classifier.card.positive_class
    read = [_read(it) for it in items]
    results: list[tuple[object | None, str | None]] = [(None, err) for _, err in read]
    ok = [i for i, (film, _) in enumerate(read) if film is not None]
    for i, r in zip(ok, _predict(classifier, [read[i][0] for i in ok])):
        results[i] = r
    del read  # the decoded films go before the rows are handed out
    return [scored_row(it, pred, err, threshold, positive_class, include_non_chest)
            for it, (pred, err) in zip(items, results)]


def evaluate_items(classifier, items: Sequence[LabelledItem], threshold: float | None = None,
                   progress: Progress | None = None, batch_size: int = 16,
                   include_non_chest: bool = False) -> EvaluationReport:
    threshold = classifier.threshold if threshold is None else float(threshold)
    t0 = time.perf_counter()
    rows = list(iter_scores(classifier, items, batch_size, progress, threshold, include_non_chest))
    return build_report(rows, threshold, classifier.card.positive_class, include_non_chest=include_non_chest,
                        seconds=time.perf_counter() - t0)


def evaluate_folder(classifier, root: str | os.PathLike, threshold: float | None = None,
                    progress: Progress | None = None, batch_size: int = 16,
                    include_non_chest: bool = False) -> EvaluationReport:
    """Score every film below a labelled folder (see the module docstring for the layout).
    Raises PathRefused when `root` is not a folder or holds no film."""
    return evaluate_items(classifier, scan_folder(root, classifier.card.positive_class), threshold, progress, batch_size,
                          include_non_chest)


def evaluate_zip(classifier, data: bytes, threshold: float | None = None, progress: Progress | None = None,
                 batch_size: int = 16, include_non_chest: bool = False, **limits) -> EvaluationReport:
    """Score a zip of a labelled folder, read in memory (nothing is written to disk). The archive is
    checked first (safety.check_zip, `limits` passed on); ZipRefused when it is refused or holds no film."""
    infos = check_zip(data, **limits)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        items = scan_zip(zf, infos, max_entry_bytes=limits.get("max_entry_bytes", MAX_ENTRY_BYTES),
                         positive_class=classifier.card.positive_class)
        if not items:
            raise ZipRefused("the archive holds no films")
        return evaluate_items(classifier, items, threshold, progress, batch_size, include_non_chest)


def upload_items(files: Iterable[tuple[str, bytes]], label: str | None = None,
                 positive_class: str | None = None) -> list[LabelledItem]:
    """Items for uploaded (name, bytes), kept in memory, each labelled `label` (None: unlabelled, scored but
    outside the metrics). A loose upload's name is a name, never a path: slashes or backslashes in it (a
    browser sends base names; a crafted request need not) give no folder, label or source. Folders label
    films in a zip only. `positive_class` is accepted for the signature of scan_uploads and not used."""
    default = None if label is None else label.lower()
    return [LabelledItem(name, default, None, read=partial(bytes, data)) for name, data in files]


def _is_zip_name(name: str) -> bool:
    return name.lower().endswith(".zip")


def scan_uploads(files: Iterable[tuple[str, bytes]], label: str | None = None, positive_class: str | None = None,
                 **limits) -> list[LabelledItem]:
    """Items for uploaded (name, bytes), all in memory: loose films as in upload_items; an upload named
    *.zip is checked (safety.check_zip, `limits` passed on) and its films listed as
    `<zip name>/<member>`, labelled by the zip's own folders; a refused zip becomes one item with
    the reason. Raises FilmError when there is nothing to score."""
    files = list(files)
    items = upload_items([(n, d) for n, d in files if not _is_zip_name(n)], label, positive_class)
    for name, data in filter(lambda f: _is_zip_name(f[0]), files):
        try:
            infos = check_zip(data, **limits)
        except ZipRefused as e:
            items.append(LabelledItem(name, None, error=f"refused: {e}"))
            continue
        items += scan_zip(zipfile.ZipFile(io.BytesIO(data)), infos, prefix=name + "/",
                          max_entry_bytes=limits.get("max_entry_bytes", MAX_ENTRY_BYTES), positive_class=positive_class)
    if not items:
        raise FilmError("no films were uploaded")
    return items


def evaluate_uploads(classifier, files: Iterable[tuple[str, bytes]], threshold: float | None = None,
                     progress: Progress | None = None, batch_size: int = 16, label: str | None = None,
                     include_non_chest: bool = False, **limits) -> EvaluationReport:
    """Score uploaded films and zips in memory (see scan_uploads)."""
    items = scan_uploads(files, label, classifier.card.positive_class, **limits)
    return evaluate_items(classifier, items, threshold, progress, batch_size, include_non_chest)
