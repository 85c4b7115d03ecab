"""Debian's PostgreSQL, started by a test in a folder of its own on a free port, stopped by PID.

PostgreSQL refuses to run as root, so when the tests run as root the server runs as the `postgres` user
(setpriv, which execs in place: the PID we hold is the server's). scripts/setup.sh --browser installs it.
"""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tests.browser import free_port, stop_group

PG_BIN = Path("/usr/lib/postgresql/15/bin")
USER = "covidxr"


def available() -> bool:
    return (PG_BIN / "postgres").exists()


def _as_server_user(folder: Path) -> list[str]:
    if os.geteuid() != 0:
        return []
    pw = pwd.getpwnam("postgres")
    for p in (folder, *folder.rglob("*")):
        os.chown(p, pw.pw_uid, pw.pw_gid)
    return ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--init-groups"]


@contextmanager
def running_postgres(start_timeout_s: float = 60) -> Iterator[str]:
    """A fresh cluster in a temporary folder of its own (not pytest's: the server user must reach it), trust
    authentication on 127.0.0.1 only; yields its SQLAlchemy URL, then stops the server and removes the folder."""
    if not available():
        raise FileNotFoundError(f"{PG_BIN / 'postgres'} is missing: install Debian's postgresql "
                                "(scripts/setup.sh --browser does)")
    folder = Path(tempfile.mkdtemp(prefix="covidxr-pg-"))
    data, sock = folder / "data", folder / "sock"
    sock.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)
    prefix = _as_server_user(folder)
    subprocess.run([*prefix, str(PG_BIN / "initdb"), "-D", str(data), "-U", USER, "--auth=trust", "-E", "UTF8",
                    "--no-sync"], check=True, capture_output=True)
    port = free_port()
    log = open(folder / "postgres.log", "wb")
    proc = subprocess.Popen([*prefix, str(PG_BIN / "postgres"), "-D", str(data), "-p", str(port), "-k", str(sock),
                             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off", "-c", "max_connections=100"],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {proc.returncode}: "
                                   f"{(folder / 'postgres.log').read_text(errors='replace')[-2000:]}")
            ok = subprocess.run([str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-U", USER],
                                capture_output=True).returncode == 0
            if ok:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("postgres did not start in time")
            time.sleep(0.2)
        yield f"postgresql+psycopg://{USER}@127.0.0.1:{port}/postgres"
    finally:
        stop_group(proc, grace_s=20, sig=2)  # SIGINT: PostgreSQL's fast shutdown
        log.close()
        shutil.rmtree(folder, ignore_errors=True)
