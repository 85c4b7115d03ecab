"""The node's worklist: one row per film it received, in the database named by COVIDXR_DB (SQLAlchemy Core).

What a row holds: the study, series and SOP instance UIDs, the accession number, the calling AE title, the
score and decision (or the gate's reason for not assessing), the results' SOP instance UIDs, the delivery
state and its last error, and times. Never pixels, patient names or patient ids, nor any other header value.

`state` says what scoring gave: `scored`, `refused` (the gate said it is no frontal chest film; an SR saying
so still goes to the PACS; `reason` holds why) or `error` (the film could not be read; `reason` says why).
`delivery` says where its results are: `pending`, `delivered` (the PACS acknowledged every result) or
`undelivered` (the PACS has not taken them yet: the node keeps retrying; `error` holds the last failure).
A study's state and delivery on the Worklist page are its films' (studies()).

Retention: rows older than COVIDXR_WORKLIST_DAYS days (default 30) are deleted when the node starts and every
hour while it runs (purge()). Without COVIDXR_DB the table lives in the audit trail's default SQLite file (data/audit.db under the working
directory: covidxr.audit.default_url).
"""
from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass, field

from ..audit import default_url, make_sqlite_folder

RETENTION_ENV = "COVIDXR_WORKLIST_DAYS"
DEFAULT_RETENTION_DAYS = 30
TABLE = "pacs_worklist"
STATES = ("scored", "refused", "error")
DELIVERY = ("pending", "delivered", "undelivered")


def retention_days() -> float:
    try:
        return float(os.environ.get(RETENTION_ENV) or DEFAULT_RETENTION_DAYS)
    except ValueError:
        return DEFAULT_RETENTION_DAYS


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)  # stored as naive UTC (SQLite keeps no zone)


@dataclass
class Study:
    """One study as the Worklist page shows it: its films' highest score decides its rank."""
    study_uid: str
    accession: str
    probability: float | None
    decision: str
    state: str
    delivery: str
    reason: str
    received: dt.datetime
    films: list[dict] = field(default_factory=list)  # one dict per film row

    @property
    def sop_uids(self) -> list[str]:
        return [f["sop_uid"] for f in self.films]


class Worklist:
    """The table and its queries. Safe to share between the node's threads (each call its own transaction)."""

    def __init__(self, engine):
        import sqlalchemy as sa

        self.engine = engine
        meta = sa.MetaData()
        self.table = sa.Table(
            TABLE, meta,
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("study_uid", sa.String(64), nullable=False, index=True),
            sa.Column("series_uid", sa.String(64), nullable=False),
            sa.Column("sop_uid", sa.String(64), nullable=False),
            sa.Column("accession", sa.String(16), nullable=False, default=""),
            sa.Column("calling_ae", sa.String(16), nullable=False, default=""),
            sa.Column("probability", sa.Float, nullable=True),
            sa.Column("threshold", sa.Float, nullable=True),
            sa.Column("decision", sa.String(32), nullable=False, default=""),
            sa.Column("state", sa.String(16), nullable=False),
            sa.Column("reason", sa.Text, nullable=False, default=""),   # the gate's reasons, or why unreadable
            sa.Column("delivery", sa.String(16), nullable=False, default="pending"),
            sa.Column("error", sa.Text, nullable=False, default=""),    # the last delivery failure
            sa.Column("result_uids", sa.Text, nullable=False, default="[]"),
            sa.Column("attempts", sa.Integer, nullable=False, default=0),
            sa.Column("received_at", sa.DateTime, nullable=False),
            sa.Column("scored_at", sa.DateTime, nullable=True),
            sa.Column("delivered_at", sa.DateTime, nullable=True),
            sa.Column("updated_at", sa.DateTime, nullable=False),
        )
        meta.create_all(engine)

    @classmethod
    def open(cls, url: str | None = None) -> "Worklist":
        """The worklist behind `url`, default the audit trail's store (covidxr.audit.default_url: one database)."""
        import sqlalchemy as sa

        url = url or default_url()
        make_sqlite_folder(url)
        return cls(sa.create_engine(url))

    def received(self, study_uid: str, series_uid: str, sop_uid: str, accession: str, calling_ae: str) -> int:
        """A film came in: its row (state `scored` until scoring says otherwise); the row's id."""
        now = _now()
        with self.engine.begin() as c:
            return int(c.execute(self.table.insert().values(
                study_uid=study_uid, series_uid=series_uid, sop_uid=sop_uid, accession=accession[:16],
                calling_ae=calling_ae[:16], state="scored", received_at=now, updated_at=now)).inserted_primary_key[0])

    def update(self, row_id: int, **values) -> None:
        if "state" in values and values["state"] not in STATES:
            raise ValueError(f"unknown state {values['state']!r}")
        if "delivery" in values and values["delivery"] not in DELIVERY:
            raise ValueError(f"unknown delivery {values['delivery']!r}")
        if "result_uids" in values and not isinstance(values["result_uids"], str):
            values["result_uids"] = json.dumps(list(values["result_uids"]))
        values["updated_at"] = _now()
        with self.engine.begin() as c:
            c.execute(self.table.update().where(self.table.c.id == row_id).values(**values))

    def rows(self) -> list[dict]:
        with self.engine.connect() as c:
            return [dict(r._mapping) for r in c.execute(self.table.select().order_by(self.table.c.id))]

    def studies(self) -> list[Study]:
        """Studies ranked for triage: highest COVID-19 score first, then those with no score (refused, errors).
        A study is `scored` when any film was, else `error` when any was unreadable, else `refused`; its delivery
        is its worst film's: undelivered, then pending, then delivered."""
        rank = {"scored": 0, "error": 1, "refused": 2}
        worst = {"undelivered": 0, "pending": 1, "delivered": 2}
        by_study: dict[str, list[dict]] = {}
        for r in self.rows():
            by_study.setdefault(r["study_uid"], []).append(r)
        out = []
        for uid, films in by_study.items():
            scores = [f["probability"] for f in films if f["probability"] is not None]
            top = max(scores) if scores else None
            lead = max((f for f in films if f["probability"] is not None), key=lambda f: f["probability"], default=None)
            state = min((f["state"] for f in films), key=lambda s: rank.get(s, 0))
            delivery = min((f["delivery"] for f in films if f["state"] != "error"), key=lambda s: worst.get(s, 0),
                           default="")
            reasons = "; ".join(sorted({f["reason"] for f in films if f["reason"]}))
            out.append(Study(uid, next((f["accession"] for f in films if f["accession"]), ""), top,
                             lead["decision"] if lead else (films[0]["decision"] or ""), state, delivery, reasons,
                             min(f["received_at"] for f in films), films))
        return sorted(out, key=lambda s: (s.probability is None, -(s.probability or 0.0), s.received))

    def purge(self, days: float | None = None) -> int:
        """Delete rows received more than `days` (default: the retention setting) ago; how many."""
        days = retention_days() if days is None else days
        cut = _now() - dt.timedelta(days=days)
        with self.engine.begin() as c:
            return int(c.execute(self.table.delete().where(self.table.c.received_at < cut)).rowcount or 0)
