"""A real PACS for the tests and the benchmark: Debian's Orthanc with its DICOMweb plugin, on free loopback ports,
with its own configuration and storage folder, started and stopped by PID (its own process group).

    with running_orthanc(folder, modalities={"covidxr": ("COVIDXR", "127.0.0.1", 11112)}) as pacs:
        study = pacs.upload(path)["ParentStudy"]
        pacs.send_study("covidxr", study)
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

ORTHANC = "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
AE_TITLE = "ORTHANC"
START_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def available() -> str | None:
    """Why Orthanc cannot run here, or None."""
    if not Path(ORTHANC).exists():
        return f"{ORTHANC} is missing (Debian's orthanc: scripts/setup.sh --browser installs it)"
    if not Path(DICOMWEB_PLUGIN).exists():
        return f"{DICOMWEB_PLUGIN} is missing (Debian's orthanc-dicomweb)"
    return None


class OrthancError(OSError):
    """Orthanc answered an HTTP error; the message carries its explanation."""


@dataclass
class Orthanc:
    folder: Path
    modalities: dict[str, tuple[str, str, int]]
    http_port: int = field(default_factory=free_port)
    dicom_port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    @property
    def send_to(self) -> str:
        return f"{AE_TITLE}@127.0.0.1:{self.dicom_port}"

    def config(self) -> Path:
        storage = self.folder / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        conf = {
            "Name": "covidxr-test-pacs", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
            "HttpPort": self.http_port, "DicomPort": self.dicom_port, "DicomAet": AE_TITLE,
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "HttpServerEnabled": True,
            "DicomServerEnabled": True, "DicomAlwaysAllowStore": True, "DicomCheckCalledAet": False,
            "DicomModalities": {k: list(v) for k, v in self.modalities.items()},
            "Plugins": [DICOMWEB_PLUGIN], "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
            "StableAge": 2, "HttpTimeout": 30, "DicomScuTimeout": 30, "StorageCompression": False,
        }
        path = self.folder / "orthanc.json"
        path.write_text(json.dumps(conf, indent=1))
        return path

    def start(self) -> "Orthanc":
        self.folder.mkdir(parents=True, exist_ok=True)
        log = open(self.folder / "orthanc.log", "ab")
        self.proc = subprocess.Popen([ORTHANC, str(self.config())], cwd=self.folder, stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        end = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited ({self.proc.returncode}): {self.log_tail()}")
            try:
                self.get("/system")
                return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer in {START_TIMEOUT_S} s: {self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM to Orthanc's process group, SIGKILL if it lingers; waits for it."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        except ProcessLookupError:
            pass

    def log_tail(self, n: int = 2000) -> str:
        try:
            return (self.folder / "orthanc.log").read_text(errors="replace")[-n:]
        except OSError:
            return ""

    # ---------------------------------------------------------------- REST

    def request(self, method: str, path: str, body: bytes | None = None, content_type: str = "application/json"):
        req = urllib.request.Request(self.url + path, data=body, method=method,
                                     headers={"Content-Type": content_type} if body is not None else {})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                data = r.read()
        except urllib.error.HTTPError as e:
            raise OrthancError(f"{method} {path}: HTTP {e.code}: {e.read()[:500]!r}") from None
        return json.loads(data) if data[:1] in (b"{", b"[") else data

    def get(self, path: str):
        return self.request("GET", path)

    def upload(self, path: str | Path) -> dict:
        """POST /instances: the file's bytes; Orthanc's answer (ID, ParentStudy, Status...)."""
        return self.request("POST", "/instances", Path(path).read_bytes(), "application/dicom")

    def send_study(self, modality: str, study_id: str | list[str], synchronous: bool = True) -> dict:
        """POST /modalities/<modality>/store: Orthanc sends the studies to the node by C-STORE."""
        ids = [study_id] if isinstance(study_id, str) else list(study_id)
        body = {"Resources": ids, "Synchronous": synchronous}
        return self.request("POST", f"/modalities/{modality}/store", json.dumps(body).encode())

    def study_id(self, study_uid: str) -> str | None:
        found = self.request("POST", "/tools/lookup", study_uid.encode(), "text/plain")
        return next((f["ID"] for f in found if f["Type"] == "Study"), None)

    def instances(self, study_id: str) -> list[dict]:
        """Every instance of a study with its main tags (Modality from its series)."""
        out = []
        for series in self.get(f"/studies/{study_id}/series"):
            for inst in series["Instances"]:
                tags = self.get(f"/instances/{inst}/simplified-tags")
                out.append({"id": inst, "modality": series["MainDicomTags"].get("Modality", ""),
                            "sop_uid": tags.get("SOPInstanceUID"), "sop_class": tags.get("SOPClassUID"),
                            "series_description": tags.get("SeriesDescription", "")})
        return out


@contextmanager
def running_orthanc(folder: Path, modalities: dict[str, tuple[str, str, int]]) -> Iterator[Orthanc]:
    """An Orthanc for the duration of the block, stopped by PID whatever happens (Ctrl-C and SIGTERM included:
    tests/conftest.py turns SIGTERM into KeyboardInterrupt)."""
    pacs = Orthanc(Path(folder), modalities)
    try:
        yield pacs.start()
    finally:
        pacs.stop()
        shutil.rmtree(Path(folder) / "storage", ignore_errors=True)


def wait_for(check, timeout_s: float, every_s: float = 0.2):
    """Poll until check() is truthy (its value), or the timeout (check()'s last value)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        try:
            got = check()
        except (OSError, urllib.error.URLError):
            got = None
        if got:
            return got
        time.sleep(every_s)
    return check()
