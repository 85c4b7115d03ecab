"""The audit trail: one record per event (who, when, what, on which film or study, with which model and
site profile, with what result and outcome), in the shape of IHE ATNA / DICOM PS3.15 A.5, tamper-evident.

Why a hash chain: a hospital must be able to show that nobody edited the trail afterwards. Each record
stores the hash of the record before it and its own hash over a canonical serialisation of all its
fields (`canonical`), so that changing any field of any record, or removing one from the middle, breaks
the chain at that record (`AuditStore.verify`). Removing the newest records is not detectable from the
chain alone; the operator's backups of the store cover that.

Why one store URL (`COVIDXR_DB`): an embedded SQLite file (WAL) serves one machine; `postgresql://...`
serves several replicas or machines. Appends are serialised so that the chain never forks: SQLite takes
the database's write lock first (`BEGIN IMMEDIATE`), PostgreSQL a transaction-scoped advisory lock; the
last record is read and the new one inserted in that same transaction, so a writer killed mid-write
rolls back and leaves a chain that verifies.

What is never stored: pixels, file names, patient names or patient ids. `object` is the film's sha256
(for DICOM the Study and SOP Instance UIDs); callers put only counts, metrics and identifiers in `detail`.

Callers fail closed: `record` raises `AuditUnavailable` when it cannot write, and nothing is scored then.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import threading
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

DB_ENV = "COVIDXR_DB"
SCHEMA_VERSION = 1
GENESIS = "0" * 64  # the "previous hash" of the first record
DEFAULT_FILE = Path("data") / "audit.db"  # under the working directory (gitignored in a checkout): default_url()
LOCAL_USER = "local"
_ADVISORY_KEY = 0x636F7669647872  # "covidxr": PostgreSQL's advisory lock of the chain's appends

# Outcomes (DICOM PS3.15 A.5's EventOutcomeIndicator, in words)
SUCCESS, DENIED, FAILURE = "success", "denied", "failure"


class AuditUnavailable(RuntimeError):
    """The audit store cannot be opened or written: the caller must not go on with what it was to record."""


@dataclass
class AuditEvent:
    """One event, as a caller gives it. `object`: the film's sha256, or for DICOM "study=UID sop=UID";
    `detail`: counts, metrics and identifiers only (never pixels, file names or patient data)."""
    action: str
    user: str = LOCAL_USER        # the OpenID Connect subject; "local" in local mode
    user_name: str = LOCAL_USER
    role: str = ""
    object: str = ""
    model_version: str = ""
    weights_sha256: str = ""
    profile: str = ""             # the site profile's name ("" for the shipped model)
    profile_version: str = ""     # its version (content hash)
    decision: str = ""
    probability: float | None = None
    outcome: str = SUCCESS
    detail: dict = field(default_factory=dict)


@dataclass
class AuditRecord(AuditEvent):
    """A stored event: its place in the chain, its UTC time and the two hashes."""
    seq: int = 0
    time: str = ""
    prev_hash: str = GENESIS
    hash: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


EVENT_FIELDS = tuple(f.name for f in fields(AuditEvent))
RECORD_FIELDS = ("seq", "time", *EVENT_FIELDS, "prev_hash", "hash")


@dataclass
class Verified:
    """What `verify` found: `broken` is None when the whole chain holds, else the first broken record's seq."""
    records: int
    broken: int | None = None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.broken is None


def _detail_text(detail: dict | str) -> str:
    if isinstance(detail, str):
        return detail
    return json.dumps(detail or {}, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False,
                      default=str)


def _probability(p: float | None) -> float | None:
    return None if p is None else round(float(p), 6)


def canonical(row: dict[str, Any]) -> bytes:
    """The bytes a record's hash covers: every field but the hash itself, as sorted-key JSON (detail as its
    stored text, probability rounded to 6 decimals as stored)."""
    body = {k: row[k] for k in RECORD_FIELDS if k != "hash"}
    body["detail"] = _detail_text(body["detail"])
    body["probability"] = _probability(body["probability"])
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def record_hash(row: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(row)).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds")


def model_fields(card: Any = None, profile: Any = None) -> dict[str, str]:
    """The model and site-profile fields every record names, from the app, the command line and the DICOM node
    alike: the package version and the weights' hash of `card` (a covidxr.card.ModelCard; both "" without one),
    the profile's name and content version (covidxr.profiles.version_of; both "" for the shipped model)."""
    from . import __version__
    from .profiles import version_of

    return {"model_version": "" if card is None else __version__,
            "weights_sha256": "" if card is None else card.weights_sha256,
            "profile": "" if profile is None else profile.name,
            "profile_version": "" if profile is None else version_of(profile)}


def default_url(existing: bool = False) -> str | None:
    """$COVIDXR_DB, else the SQLite file data/audit.db under the working directory: the project's folder when the
    app or the command line runs there (./run.sh does), never inside an installed package. The audit trail and the
    PACS worklist share it. With `existing`, None when that file does not exist yet (a reader never makes one)."""
    url = os.environ.get(DB_ENV, "").strip()
    if url:
        return url
    path = Path.cwd() / DEFAULT_FILE
    return None if existing and not path.exists() else f"sqlite:///{path}"


class AuditStore:
    """The trail behind one URL (SQLAlchemy Core): `record`, `verify`, `records`, `export_json`, `export_csv`."""

    def __init__(self, url: str):
        import sqlalchemy as sa

        self.url = url
        self._sa = sa
        try:
            self.engine = _engine(url)
        except (sa.exc.SQLAlchemyError, ImportError, ValueError, OSError) as e:
            raise AuditUnavailable(f"the audit store {safe_url(url)} cannot be opened: {e}") from e
        self.sqlite = self.engine.dialect.name == "sqlite"
        meta = sa.MetaData()
        self.schema = sa.Table("audit_schema", meta, sa.Column("version", sa.Integer, nullable=False))
        self.events = sa.Table(
            "audit_events", meta,
            sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),  # a fork would reuse a seq: refused
            sa.Column("time", sa.String(40), nullable=False),
            *(sa.Column(k, sa.Float if k == "probability" else sa.Text, nullable=k == "probability")
              for k in EVENT_FIELDS),
            sa.Column("prev_hash", sa.String(64), nullable=False),
            sa.Column("hash", sa.String(64), nullable=False, unique=True),
        )
        self._meta = meta
        self._ready = False
        self._ready_lock = threading.Lock()

    # -------------------------------------------------------------- writing
    def _begin(self, conn) -> None:
        """Start the transaction that holds the chain's write lock until it commits or rolls back."""
        if self.sqlite:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            conn.begin()
            conn.execute(self._sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": _ADVISORY_KEY})

    def _ensure_schema(self) -> None:
        if self._ready:
            return
        with self._ready_lock:
            if self._ready:
                return
            with self.engine.connect() as conn:
                self._begin(conn)
                try:
                    self._meta.create_all(conn, checkfirst=True)
                    got = conn.execute(self._sa.select(self.schema.c.version)).scalars().all()
                    if not got:
                        conn.execute(self.schema.insert().values(version=SCHEMA_VERSION))
                    elif got != [SCHEMA_VERSION]:
                        raise AuditUnavailable(f"the audit store {safe_url(self.url)} has schema version {got}; "
                                               f"this covidxr reads version {SCHEMA_VERSION}")
                    conn.commit()
                except BaseException:
                    conn.rollback()
                    raise
            self._ready = True

    def check_writable(self) -> None:
        """Take the chain's write lock once and let it go: AuditUnavailable when the store cannot be written
        (so that a caller can refuse to start work it could not record)."""
        sa = self._sa
        try:
            self._ensure_schema()
            with self.engine.connect() as conn:
                self._begin(conn)
                conn.rollback()
        except AuditUnavailable:
            raise
        except (sa.exc.SQLAlchemyError, OSError) as e:
            raise AuditUnavailable(f"the audit store {safe_url(self.url)} cannot be written: "
                                   f"{str(e).splitlines()[0]}") from e

    def record(self, event: AuditEvent | dict) -> AuditRecord:
        """Append one event to the chain and return it as stored. AuditUnavailable when it cannot be written
        (the caller must then not do what it was to record)."""
        sa = self._sa
        ev = event if isinstance(event, AuditEvent) else AuditEvent(**event)
        if not ev.action:
            raise ValueError("an audit event needs an action")
        try:
            self._ensure_schema()
            with self.engine.connect() as conn:
                self._begin(conn)
                try:
                    last = conn.execute(sa.select(self.events.c.seq, self.events.c.hash)
                                        .order_by(self.events.c.seq.desc()).limit(1)).first()
                    row = {k: getattr(ev, k) for k in EVENT_FIELDS}
                    row = {**{k: "" if v is None and k != "probability" else v for k, v in row.items()},
                           "seq": 1 if last is None else last.seq + 1, "time": _now(),
                           "prev_hash": GENESIS if last is None else last.hash}
                    row["detail"] = _detail_text(row["detail"])
                    row["probability"] = _probability(row["probability"])
                    row["hash"] = record_hash(row)
                    conn.execute(self.events.insert().values(**row))
                    conn.commit()
                except BaseException:
                    conn.rollback()
                    raise
        except AuditUnavailable:
            raise
        except (sa.exc.SQLAlchemyError, OSError) as e:
            raise AuditUnavailable(f"the audit store {safe_url(self.url)} cannot be written: "
                                   f"{str(e).splitlines()[0]}") from e
        return _as_record(row)

    # -------------------------------------------------------------- reading
    def _rows(self, since: str | None = None, user: str | None = None, action: str | None = None,
              batch: int = 1000) -> Iterator[dict[str, Any]]:
        sa = self._sa
        t = self.events
        try:
            self._ensure_schema()
            with self.engine.connect() as conn:
                after = 0
                while True:
                    q = sa.select(t).where(t.c.seq > after).order_by(t.c.seq).limit(batch)
                    if since:
                        q = q.where(t.c.time >= since)
                    if user:
                        q = q.where(t.c.user == user)
                    if action:
                        q = q.where(t.c.action == action)
                    got = [dict(r._mapping) for r in conn.execute(q)]
                    if not got:
                        return
                    yield from got
                    after = got[-1]["seq"]
        except AuditUnavailable:
            raise
        except (sa.exc.SQLAlchemyError, OSError) as e:
            raise AuditUnavailable(f"the audit store {safe_url(self.url)} cannot be read: "
                                   f"{str(e).splitlines()[0]}") from e

    def records(self, since: str | None = None, user: str | None = None, action: str | None = None
                ) -> list[AuditRecord]:
        """The stored records, oldest first; `since`: an ISO date or time (UTC), `user`, `action`: exact."""
        return [_as_record(r) for r in self._rows(since, user, action)]

    def verify(self) -> Verified:
        """Walk the chain from its first record: each must follow the one before (seq, prev_hash) and hash to
        its stored hash. Returns the count, and the first broken record's seq with the reason."""
        prev_hash, n, expect = GENESIS, 0, 1
        for row in self._rows():
            seq = row["seq"]
            if seq != expect:
                return Verified(n, seq, f"record {seq} follows record {expect - 1}: records {expect}-{seq - 1} "
                                        "are missing")
            if row["prev_hash"] != prev_hash:
                return Verified(n, seq, f"record {seq} does not carry the hash of the record before it")
            if record_hash(row) != row["hash"]:
                return Verified(n, seq, f"record {seq} was changed after it was written (its hash does not match)")
            prev_hash, n, expect = row["hash"], n + 1, seq + 1
        return Verified(n)

    def export_json(self, **filters) -> str:
        return json.dumps([r.as_dict() for r in self.records(**filters)], indent=1)

    def export_csv(self, **filters) -> str:
        return records_csv(self.records(**filters))

    def dispose(self) -> None:
        self.engine.dispose()


def records_csv(records: Iterable[AuditRecord]) -> str:
    """The records as CSV, one row each, detail as its JSON text; texts made safe for spreadsheets
    (safety.spreadsheet_safe: a user name such as `=cmd|...` is not run as a formula), as the batch reports are."""
    from .safety import spreadsheet_safe

    out = io.StringIO()
    w = csv.DictWriter(out, RECORD_FIELDS, lineterminator="\r\n")  # RFC 4180, as covidxr.report's CSV
    w.writeheader()
    for r in records:
        d = r.as_dict()
        d["detail"] = _detail_text(d["detail"])
        w.writerow({k: spreadsheet_safe(v) for k, v in d.items()})
    return out.getvalue()


def _as_record(row: dict[str, Any]) -> AuditRecord:
    d = dict(row)
    try:
        d["detail"] = json.loads(d["detail"]) if isinstance(d["detail"], str) and d["detail"] else {}
    except ValueError:
        d["detail"] = {"unreadable": d["detail"]}
    return AuditRecord(**{k: d[k] for k in RECORD_FIELDS})


def safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - a URL that does not parse is shown as the user gave it, minus nothing secret
        return url.split("@")[-1]


def make_sqlite_folder(url) -> None:
    """An SQLite file's folder, made if missing (SQLite makes the file, not its folder); other URLs: nothing."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    if u.get_backend_name() == "sqlite" and u.database and u.database != ":memory:":
        Path(u.database).parent.mkdir(parents=True, exist_ok=True)


def _engine(url: str):
    import sqlalchemy as sa
    from sqlalchemy import event

    u = sa.engine.make_url(url)
    if u.get_backend_name() == "postgresql" and u.get_driver_name() in ("", "psycopg2", None) \
            and "+" not in url.split("://")[0]:
        u = u.set(drivername="postgresql+psycopg")  # psycopg 3
    if u.get_backend_name() == "sqlite":
        make_sqlite_folder(u)
        engine = sa.create_engine(u, connect_args={"timeout": 30}, poolclass=sa.pool.NullPool)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn, _record):
            dbapi_conn.isolation_level = None  # we issue BEGIN IMMEDIATE ourselves (SQLAlchemy's pysqlite recipe)
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA synchronous=FULL")
            cur.close()
        return engine  # writes: BEGIN IMMEDIATE (AuditStore._begin); reads run in autocommit on a WAL snapshot
    return sa.create_engine(u, pool_pre_ping=True, pool_size=2, max_overflow=4)


_stores: dict[str, AuditStore] = {}
_stores_lock = threading.Lock()


def open_store(url: str | None = None) -> AuditStore:
    """The store behind `url` (default: $COVIDXR_DB, else data/audit.db), one per URL and process.
    AuditUnavailable when it cannot be opened."""
    url = url or default_url()
    with _stores_lock:
        store = _stores.get(url)
        if store is None:
            store = _stores[url] = AuditStore(url)
    return store


def store_from_env() -> AuditStore | None:
    """The store of $COVIDXR_DB when it is set (the command line records only then), else None."""
    url = os.environ.get(DB_ENV, "").strip()
    return open_store(url) if url else None
