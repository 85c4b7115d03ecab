"""The DICOM node keeps films in memory: `python -m covidxr dicom serve` runs under `strace -f` (tests/test_privacy.py's
approach and rules), with a fresh HOME and TMPDIR, a real Orthanc sends it a film whose patient name is a canary,
and the results must arrive in Orthanc while the node's process tree writes nothing but the worklist database,
Python's bytecode and, before the first film, the model's start-up caches; no file it wrote, nor its log, holds
the film's bytes or the patient's name.
"""
from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
import uuid

import pydicom
import pytest

from tests.conftest import REPO, shared_data
from tests.orthanc import available, free_port, running_orthanc, wait_for
from tests.test_privacy import allowed, leaks, server_env, slices, strace, strace_prefix, traced_writes, weights_dir

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.model]

FILM = shared_data("dicom", "cxr", "siim-acr_CR_PA_jpeg-baseline.dcm")
CANARY = f"Canary^Privacy{uuid.uuid4().hex[:12]}"
START_TIMEOUT_S = 600      # model load and the ONNX export into a fresh HOME, under strace, on a busy machine
RESULT_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def node_run(tmp_path_factory):
    if strace() is None:
        pytest.fail("strace is not installed or may not trace here (apt-get install strace)")
    why = available()
    if why:
        pytest.fail(why)
    outside = tmp_path_factory.mktemp("pacs-privacy")
    home, tmp, dbdir = (outside / d for d in ("home", "tmp", "db"))
    for d in (home, tmp, dbdir):
        d.mkdir()
    ds = pydicom.dcmread(FILM)
    ds.PatientName = CANARY
    buf = io.BytesIO()
    ds.save_as(buf)
    film = buf.getvalue()
    (outside / "film.dcm").write_bytes(film)
    db = dbdir / "worklist.db"
    port = free_port()
    with running_orthanc(outside / "orthanc", {"covidxr": ("COVIDXR", "127.0.0.1", port)}) as pacs:
        trace, log = outside / "strace.txt", outside / "node.log"
        env = {**server_env(home, tmp, weights_dir()), "COVIDXR_DB": f"sqlite:///{db}"}
        cmd = [*strace_prefix(trace), sys.executable, "-m", "covidxr", "dicom", "serve", "--ae-title", "COVIDXR",
               "--port", str(port), "--host", "127.0.0.1", "--send-to", pacs.send_to, "--allow", "ORTHANC"]
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            listening = wait_for(lambda: "listening as" in log.read_text(errors="replace") or proc.poll() is not None,
                                 START_TIMEOUT_S, every_s=1)
            assert listening and proc.poll() is None, f"the node did not start: {log.read_text()[-2000:]}"
            first_film = time.time()
            study = pacs.upload(outside / "film.dcm")["ParentStudy"]
            pacs.send_study("covidxr", study)
            got = wait_for(lambda: [i for i in pacs.instances(study) if i["modality"] in ("SR", "OT")]
                           if len(pacs.instances(study)) >= 3 else None, RESULT_TIMEOUT_S)
            assert got, f"no results in Orthanc: {log.read_text()[-2000:]}"
        finally:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=60)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
    yield {"writes": traced_writes(trace, REPO), "first_film": first_film, "home": str(home), "tmp": str(tmp),
           "db": str(db), "log": log.read_text(errors="replace"), "film": film}


def test_the_node_writes_only_its_worklist_once_films_arrive(node_run):
    writes = node_run["writes"]
    assert writes, "the trace recorded nothing: is strace tracing the node at all?"
    db = re.escape(node_run["db"])
    bad = [w for w in writes
           if not re.match(f"^{db}(-journal|-wal|-shm)?$", w.path)
           and not allowed(w.path, node_run["home"], node_run["tmp"], at_start=w.time < node_run["first_film"])]
    assert not bad, "the node wrote:\n" + "\n".join(f"{w.path}   [{w.line}]" for w in bad[:30])
    assert any(re.match(f"^{db}", w.path) for w in writes if w.time >= node_run["first_film"])  # the worklist row


def test_nothing_the_node_wrote_holds_the_film_or_the_patient_name(node_run):
    needles = {"patient name": CANARY.encode(), **slices(node_run["film"], "film")}
    found = leaks({w.path for w in node_run["writes"]}, needles)
    assert not found, f"film data found in files the node wrote: {found}"
    assert CANARY not in node_run["log"] and CANARY.split("^")[1] not in node_run["log"]
    assert "listening as COVIDXR" in node_run["log"]
