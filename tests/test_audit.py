"""The audit trail (covidxr.audit) on SQLite and on a real PostgreSQL the tests start: the hash chain, tamper
detection in every field, several writer processes at once, a writer killed mid-write, fail closed, the CLI."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa

from covidxr.audit import (EVENT_FIELDS, GENESIS, AuditEvent, AuditStore, AuditUnavailable, default_url,
                           open_store, store_from_env)
from tests.postgres import available, running_postgres

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


@pytest.fixture(scope="module")
def pg_server():
    if not available():
        pytest.fail("Debian's postgresql is not installed (scripts/setup.sh --browser installs it)")
    with running_postgres() as url:
        yield url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])  # a server start: slow tier
def url(request, tmp_path):
    """A fresh, empty store URL of each kind (one database per test on the module's PostgreSQL)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'audit.db'}"
    server = request.getfixturevalue("pg_server")
    name = "t" + uuid.uuid4().hex[:12]
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
    with admin.connect() as c:
        c.exec_driver_sql(f"CREATE DATABASE {name}")
    admin.dispose()
    return server.rsplit("/", 1)[0] + "/" + name


def event(i: int, **kw) -> AuditEvent:
    return AuditEvent(**{"action": "screen", "user": "sub-1", "user_name": "Dr A", "role": "clinician",
                         "object": f"{i:064x}", "model_version": "1.0.0", "weights_sha256": "ab" * 32,
                         "profile": "General", "profile_version": "0123456789ab", "decision": "non-covid",
                         "probability": 0.25 + i / 1000, "detail": {"i": i}, **kw})


def test_records_chain_and_read_back(url):
    store = AuditStore(url)
    got = [store.record(event(i)) for i in range(5)]
    assert [r.seq for r in got] == [1, 2, 3, 4, 5]
    assert got[0].prev_hash == GENESIS and all(b.prev_hash == a.hash for a, b in zip(got, got[1:]))
    assert store.verify().ok and store.verify().records == 5
    back = store.records()
    assert [r.hash for r in back] == [r.hash for r in got]
    assert back[2].detail == {"i": 2} and back[2].probability == pytest.approx(0.252)
    assert back[0].time.endswith("+00:00")  # UTC
    store.record(event(9, action="batch", user="sub-2"))
    assert [r.seq for r in store.records(user="sub-2")] == [6]
    assert len(store.records(action="screen")) == 5
    assert store.records(since="2999-01-01") == []
    assert len(store.records(since=back[0].time[:10])) == 6
    store.dispose()


TAMPER = {**{k: "x" for k in EVENT_FIELDS if k not in ("probability", "detail")},
          "probability": 0.99, "detail": '{"i":7}', "time": "2020-01-01T00:00:00+00:00", "prev_hash": "1" * 64}


@pytest.mark.parametrize("column", sorted(TAMPER))
def test_an_edit_of_any_field_breaks_the_chain_at_that_record(tmp_path, column):
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    store = AuditStore(url)
    for i in range(4):
        store.record(event(i))
    with sa.create_engine(url).begin() as c:
        c.execute(sa.text(f'UPDATE audit_events SET "{column}" = :v WHERE seq = 3'), {"v": TAMPER[column]})
    got = store.verify()
    assert not got.ok and got.broken == 3 and got.records == 2, got


def test_an_edit_or_a_removed_record_is_found_on_postgresql_too(url):
    store = AuditStore(url)
    for i in range(4):
        store.record(event(i))
    with sa.create_engine(url, poolclass=sa.pool.NullPool).begin() as c:
        c.execute(sa.text("UPDATE audit_events SET object = 'ff' WHERE seq = 2"))
    assert store.verify().broken == 2
    with sa.create_engine(url, poolclass=sa.pool.NullPool).begin() as c:
        c.execute(sa.text("DELETE FROM audit_events WHERE seq = 2"))
    got = store.verify()
    assert got.broken == 3 and "missing" in got.reason
    store.dispose()


# The writer processes load covidxr/audit.py alone: the package's __init__ imports torch (seconds per process).
LOAD = f"""
import importlib.util, sys
spec = importlib.util.spec_from_file_location("covidxr_audit", {str(REPO / "covidxr" / "audit.py")!r})
audit = importlib.util.module_from_spec(spec)
sys.modules["covidxr_audit"] = audit
spec.loader.exec_module(audit)
AuditStore, AuditEvent = audit.AuditStore, audit.AuditEvent
"""
WRITER = LOAD + """
store = AuditStore(sys.argv[1])
for i in range(int(sys.argv[3])):
    store.record(AuditEvent(action="screen", user=sys.argv[2], object=f"{i:064x}", detail={"i": i}))
"""


@pytest.mark.slow
def test_several_writer_processes_keep_one_chain(url):
    AuditStore(url).check_writable()  # the schema exists before the race (the race on creating it is tested below)
    n_proc, n_each = 6, 15
    procs = [subprocess.Popen([PY, "-c", WRITER, url, f"w{p}", str(n_each)], cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)}) for p in range(n_proc)]
    assert [p.wait(timeout=300) for p in procs] == [0] * n_proc
    store = AuditStore(url)
    got = store.verify()
    assert got.ok and got.records == n_proc * n_each
    assert {r.user for r in store.records()} == {f"w{p}" for p in range(n_proc)}
    store.dispose()


@pytest.mark.slow
def test_writers_racing_to_create_the_schema(url):
    procs = [subprocess.Popen([PY, "-c", WRITER, url, f"w{p}", "3"], cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)}) for p in range(4)]
    assert [p.wait(timeout=300) for p in procs] == [0] * 4
    assert AuditStore(url).verify().records == 12


STUCK = LOAD + """
import time
from sqlalchemy import event
store = AuditStore(sys.argv[1])
store.record(AuditEvent(action="screen", object="a" * 64))
@event.listens_for(store.engine, "commit")
def hang(conn):  # the row is inserted, the transaction not yet committed
    print("inserted", flush=True)
    time.sleep(600)
store.record(AuditEvent(action="screen", object="b" * 64))
"""


def test_a_writer_killed_mid_write_leaves_a_chain_that_verifies(url):
    proc = subprocess.Popen([PY, "-c", STUCK, url], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "inserted"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    store = AuditStore(url)
    assert store.verify().records == 1  # the half-written record rolled back
    store.record(AuditEvent(action="screen", object="c" * 64))  # and the lock went with the writer
    got = store.verify()
    assert got.ok and got.records == 2
    store.dispose()


def test_an_unwritable_store_is_refused(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(AuditUnavailable, match="cannot be"):
        AuditStore(f"sqlite:///{tmp_path / 'file' / 'audit.db'}").record(event(1))
    with pytest.raises(AuditUnavailable, match="cannot be written"):
        AuditStore("postgresql://nobody@127.0.0.1:1/none").check_writable()


def test_another_schema_version_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    AuditStore(url).record(event(1))
    with sa.create_engine(url).begin() as c:
        c.execute(sa.text("UPDATE audit_schema SET version = 99"))
    with pytest.raises(AuditUnavailable, match="schema version"):
        AuditStore(url).record(event(2))


def test_store_from_env(tmp_path, monkeypatch):
    monkeypatch.delenv("COVIDXR_DB", raising=False)
    assert store_from_env() is None
    monkeypatch.setenv("COVIDXR_DB", f"sqlite:///{tmp_path / 'a.db'}")
    assert store_from_env() is open_store(f"sqlite:///{tmp_path / 'a.db'}")


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([PY, "-m", "covidxr", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})}, timeout=300)


@pytest.mark.slow
def test_the_default_store_is_under_the_working_directory_and_the_worklist_shares_it(tmp_path, monkeypatch):
    """Not inside the package (an installed wheel would write into site-packages): data/audit.db where the app
    or the command runs; the PACS worklist's table goes into the same database, and a reader creates none."""
    from covidxr.pacs.worklist import Worklist

    monkeypatch.delenv("COVIDXR_DB", raising=False)
    monkeypatch.chdir(tmp_path)
    file = tmp_path / "data" / "audit.db"
    assert default_url() == f"sqlite:///{file}"
    assert default_url(existing=True) is None and not file.parent.exists()  # asking creates nothing
    Worklist.open().studies()
    assert file.is_file() and default_url(existing=True) == default_url()
    store = open_store()
    store.record(event(1))
    assert {"audit_events", "pacs_worklist"} <= set(sa.inspect(sa.create_engine(default_url())).get_table_names())
    store.dispose()
    monkeypatch.setenv("COVIDXR_DB", "postgresql://covidxr@db-host/covidxr")
    assert default_url() == default_url(existing=True) == "postgresql://covidxr@db-host/covidxr"


def test_cli_verify_and_export(tmp_path):
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    store = AuditStore(url)
    for i in range(3):
        store.record(event(i, user=f"u{i % 2}"))
    ok = cli("audit", "verify", "--db", url)
    assert ok.returncode == 0 and "3 records" in ok.stdout
    rows = json.loads(cli("audit", "export", "--db", url, "--json", "--user", "u0").stdout)
    assert [r["seq"] for r in rows] == [1, 3]
    csv_text = cli("audit", "export", "--db", url, "--csv", "--action", "screen").stdout
    assert csv_text.splitlines()[0].startswith("seq,time,action,user") and len(csv_text.splitlines()) == 4
    with sa.create_engine(url).begin() as c:
        c.execute(sa.text("UPDATE audit_events SET decision = 'covid' WHERE seq = 2"))
    bad = cli("audit", "verify", "--db", url)
    assert bad.returncode == 1 and "record 2" in bad.stderr and "Traceback" not in bad.stderr
    assert cli("audit", "export", "--db", url, "--json", "--since", "yesterday").returncode == 2


@pytest.mark.slow
def test_predict_records_each_film_by_hash_and_fails_closed(tmp_path):
    import hashlib

    film = sorted((REPO.parent / "shared/data/cxr/hannover-mhh/covid").iterdir())[0]
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    out = cli("predict", str(film), "--json", env={"COVIDXR_DB": url})
    assert out.returncode == 0, out.stderr
    rows = AuditStore(url).records()
    assert len(rows) == 1 and rows[0].object == hashlib.sha256(film.read_bytes()).hexdigest()
    assert rows[0].decision == json.loads(out.stdout)[0]["label"] and film.name not in json.dumps(rows[0].as_dict())
    (tmp_path / "file").write_text("")
    refused = cli("predict", str(film), "--json", env={"COVIDXR_DB": f"sqlite:///{tmp_path / 'file' / 'a.db'}"})
    assert refused.returncode == 1 and refused.stdout == "" and len(refused.stderr.strip().splitlines()) == 1
