"""`dicom serve`: a DICOM node (pynetdicom) that scores the chest films a PACS sends it and sends the results back.

- Associations: C-ECHO, and Storage for every storage SOP class in any transfer syntax pydicom can decode.
  Only calling AE titles in `allow` are accepted (default: the AE title of the PACS results go to); others
  are rejected at association (A-ASSOCIATE-RJ, calling AE title not recognised), logged and given to the
  events hook.
- A CR or DX image (by SOP class, or a secondary capture whose Modality is CR/DX) is scored in memory: the
  received bytes go to the film reader and the model, never to a file. Anything else is acknowledged
  (status 0x0000) and ignored, with a log line, an event and no worklist row.
- The results (results.py: SR, and SC for a film the gate passes) go back by C-STORE to `send_to`, or by
  STOW-RS to `stow_url`. While the PACS does not take them the node retries, the wait doubling from
  `retry_base_s` to `retry_max_s`, says so on stderr, and marks the film `undelivered` in the worklist with
  the error; it keeps the results in memory and keeps retrying until they are delivered or the node stops
  (then the worklist and the audit still say undelivered). Nothing is dropped silently.
- Scoring runs on a small pool of threads and delivery on another, so that several associations and
  multi-image studies are taken at once and a PACS that is down never blocks reception.
"""
from __future__ import annotations

import concurrent.futures as cf
import sys
import threading
import time
from dataclasses import dataclass
from typing import Callable

from .events import AuditFailed, Hook, emit, event, no_op
from .worklist import Worklist

CR_DX_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1",      # Computed Radiography Image Storage
    "1.2.840.10008.5.1.4.1.1.1.1",    # Digital X-Ray Image Storage - For Presentation
    "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray Image Storage - For Processing
}
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
FILM_MODALITIES = {"CR", "DX"}
REJECT_PERMANENT, REJECT_BY_USER, CALLING_AE_NOT_RECOGNISED = 0x01, 0x01, 0x03


class DeliveryError(RuntimeError):
    """The PACS did not take the results (unreachable, association refused, a failed C-STORE or STOW-RS)."""


@dataclass(frozen=True)
class Destination:
    """Where results go: a DICOM AE (C-STORE) or a DICOMweb root (STOW-RS)."""
    ae_title: str = ""
    host: str = ""
    port: int = 0
    stow_url: str = ""

    @classmethod
    def parse(cls, send_to: str | None, stow_url: str | None = None) -> "Destination":
        """From `AET@HOST:PORT` and/or a STOW-RS URL (which wins for delivery); ValueError when neither is usable."""
        if not send_to and not stow_url:
            raise ValueError("say where results go: --send-to AET@HOST:PORT or --stow-url URL")
        aet = host = ""
        port = 0
        if send_to:
            try:
                aet, rest = send_to.split("@", 1)
                host, port_text = rest.rsplit(":", 1)
                port = int(port_text)
            except ValueError:
                raise ValueError(f"--send-to {send_to!r} is not AET@HOST:PORT") from None
            if not (0 < len(aet) <= 16) or not host or not 0 < port < 65536:
                raise ValueError(f"--send-to {send_to!r} is not AET@HOST:PORT (AE title 1-16 characters)")
        if stow_url and not stow_url.startswith(("http://", "https://")):
            raise ValueError(f"--stow-url {stow_url!r} is not an http(s) URL")
        return cls(aet, host, port, stow_url or "")

    def __str__(self) -> str:
        return self.stow_url if self.stow_url else f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class NodeConfig:
    ae_title: str
    port: int
    destination: Destination
    host: str = "0.0.0.0"
    allow: tuple[str, ...] = ()
    retries: int = 8                 # doubling waits before the wait stays at retry_max_s
    retry_base_s: float = 1.0
    retry_max_s: float = 30.0
    scoring_threads: int = 2
    network_timeout_s: float = 30.0

    @property
    def allowed(self) -> tuple[str, ...]:
        """The calling AE titles accepted: --allow, else only the PACS results go to."""
        return self.allow or ((self.destination.ae_title,) if self.destination.ae_title else ())


def log(message: str) -> None:
    print(f"covidxr node: {message}", file=sys.stderr, flush=True)


class Node:
    """The DICOM node. start() listens in the background, serve_forever() in the foreground; stop() ends both."""

    def __init__(self, classifier, config: NodeConfig, worklist: Worklist, events: Hook = no_op,
                 say: Callable[[str], None] = log):
        from . import require

        require("pynetdicom", "highdicom", "sqlalchemy")
        self.classifier, self.config, self.worklist, self.events, self.say = classifier, config, worklist, events, say
        self.scoring = cf.ThreadPoolExecutor(config.scoring_threads, thread_name_prefix="covidxr-score")
        self.delivery = cf.ThreadPoolExecutor(8, thread_name_prefix="covidxr-deliver")
        self.stopping = threading.Event()
        self.server = None
        self.pending: dict[int, list] = {}   # worklist row id -> results not yet delivered (in memory only)
        self.lock = threading.Lock()
        self.in_flight = 0                   # films received and not yet delivered, failed or given up

    # ------------------------------------------------------------ life cycle

    def warm_up(self) -> None:
        """One Grad-CAM on a synthetic image, so that the first real film is not the one paying for imports."""
        import numpy as np

        from ..explain import explain
        from ..films import Film

        rng = np.random.default_rng(0)
        explain(self.classifier, Film(pixels=rng.random((256, 256), dtype=np.float32), width=256, height=256,
                                      format="DICOM"))

    def start(self, warm: bool = True) -> "Node":
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        if warm:
            self.warm_up()
        purged = self.worklist.purge()
        if purged:
            self.say(f"retention: {purged} worklist rows past the retention period deleted")
        ae = AE(ae_title=self.config.ae_title)
        for cx in StoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        ae.require_calling_aet = list(self.config.allowed)
        ae.network_timeout = ae.acse_timeout = ae.dimse_timeout = self.config.network_timeout_s
        ae.maximum_associations = 16
        handlers = [(evt.EVT_C_STORE, self.on_store), (evt.EVT_C_ECHO, lambda e: 0x0000),
                    (evt.EVT_REJECTED, self.on_rejected)]
        self.server = ae.start_server((self.config.host, self.config.port), block=False, evt_handlers=handlers)
        threading.Thread(target=self._purge_hourly, daemon=True, name="covidxr-retention").start()
        self.say(f"listening as {self.config.ae_title} on port {self.config.port}; accepting calling AE titles "
                 f"{', '.join(self.config.allowed) or '(none)'}; results to {self.config.destination}")
        return self

    def serve_forever(self) -> None:
        import signal

        self.start()
        done = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: done.set())
        done.wait()
        self.stop()

    def stop(self, wait: bool = True) -> None:
        self.stopping.set()
        if self.server is not None:
            self.server.shutdown()
        self.scoring.shutdown(wait=wait, cancel_futures=not wait)
        self.delivery.shutdown(wait=wait, cancel_futures=not wait)
        with self.lock:
            left = len(self.pending)
        if left:
            self.say(f"stopped with {left} films' results undelivered (the worklist says so)")

    def _purge_hourly(self) -> None:
        while not self.stopping.wait(3600):
            try:
                self.worklist.purge()
            except Exception as e:  # noqa: BLE001 - retention must never stop the node
                self.say(f"retention: could not purge the worklist ({e})")

    # ------------------------------------------------------------ associations

    def on_rejected(self, ev) -> None:
        calling = str(ev.assoc.requestor.ae_title).strip()
        self.say(f"refused an association from AE title {calling!r} at {ev.assoc.requestor.address} "
                 "(not an allowed calling AE title)")
        self._record(event("dicom.node.association", calling, "refused",
                          detail={"address": str(ev.assoc.requestor.address), "called": self.config.ae_title}))

    def on_store(self, ev) -> int:
        """Acknowledge at once; a CR/DX film goes to the scoring pool with its bytes, anything else is recorded."""
        calling = str(ev.assoc.requestor.ae_title).strip()
        sop_class = str(ev.request.AffectedSOPClassUID)
        ds = ev.dataset
        modality = str(ds.get("Modality", "") or "")
        if not (sop_class in CR_DX_CLASSES or (sop_class == SECONDARY_CAPTURE and modality in FILM_MODALITIES)):
            self.say(f"ignored an instance of SOP class {sop_class} (modality {modality or '?'}) from {calling!r}: "
                     "only CR and DX films are scored")
            self._record(event("dicom.node.ignored", calling, "ignored", study_uid=str(ds.get("StudyInstanceUID", "")),
                              sop_uid=str(ds.get("SOPInstanceUID", "")), detail={"sop_class": sop_class,
                                                                                 "modality": modality}))
            return 0x0000
        data = bytes(ev.encoded_dataset())  # Part 10 bytes, in memory
        row = self.worklist.received(str(ds.get("StudyInstanceUID", "")), str(ds.get("SeriesInstanceUID", "")),
                                     str(ds.get("SOPInstanceUID", "")), str(ds.get("AccessionNumber", "") or ""),
                                     calling)
        with self.lock:
            self.in_flight += 1
        self.scoring.submit(self._score, row, data, calling)
        return 0x0000

    # ------------------------------------------------------------ scoring and delivery

    def _score(self, row: int, data: bytes, calling: str) -> None:
        from . import results
        from .worklist import _now

        try:
            scored = results.score(self.classifier, data)
            made = results.results(scored, self.classifier)
        except Exception as e:  # noqa: BLE001 - unreadable, or a header highdicom cannot carry: this film only
            msg = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
            self.worklist.update(row, state="error", reason=msg, delivery="undelivered", scored_at=_now())
            self.say(f"could not score a film from {calling!r}: {msg}")
            self._record(event("dicom.node.score", calling, "error", self.classifier, detail={"error": msg}))
            self._done()
            return
        finally:
            del data
        pred = scored.prediction
        try:  # recorded before the results leave: an audit that cannot be written keeps them here (fail closed)
            emit(self.events, event("dicom.node.score", calling, "scored" if scored.assessed else "refused",
                                    self.classifier, scored, detail={"results": [str(d.SOPInstanceUID) for d in made]}))
        except AuditFailed as e:
            self.worklist.update(row, state="error", reason=f"not sent: {e}", delivery="undelivered", scored_at=_now())
            self.say(f"results for study {scored.study_uid} not sent: {e}")
            self._done()
            return
        self.worklist.update(
            row, state="scored" if scored.assessed else "refused", scored_at=_now(),
            probability=float(pred.probability) if scored.assessed else None, threshold=float(pred.threshold),
            decision=pred.label if scored.assessed else "not assessed", reason="; ".join(scored.reasons),
            result_uids=[str(d.SOPInstanceUID) for d in made])
        with self.lock:
            self.pending[row] = made
        self.delivery.submit(self._deliver, row, scored.study_uid, scored.sop_uid, calling)

    def _deliver(self, row: int, study_uid: str, sop_uid: str, calling: str) -> None:
        from .worklist import _now

        with self.lock:
            made = self.pending[row]
        attempt, wait = 0, self.config.retry_base_s
        while True:
            attempt += 1
            try:
                self.send(made)
            except DeliveryError as e:
                self.worklist.update(row, delivery="undelivered", attempts=attempt, error=str(e))
                if attempt == 1:
                    self._record(event("dicom.node.deliver", calling, "undelivered", self.classifier,
                                      study_uid=study_uid, sop_uid=sop_uid, detail={"error": str(e)}))
                if self.stopping.is_set():
                    self.say(f"node stopping: results for study {study_uid} left undelivered ({e})")
                    self._done()
                    return
                self.say(f"the PACS at {self.config.destination} did not take the results for study {study_uid} "
                         f"({e}); retrying in {wait:.0f} s (attempt {attempt})")
                if self.stopping.wait(wait):
                    self.say(f"node stopping: results for study {study_uid} left undelivered")
                    self._done()
                    return
                wait = min(wait * 2, self.config.retry_max_s) if attempt < self.config.retries else self.config.retry_max_s
                continue
            with self.lock:
                self.pending.pop(row, None)
            self.worklist.update(row, delivery="delivered", attempts=attempt, delivered_at=_now(), error="")
            if attempt > 1:
                self.say(f"delivered the results for study {study_uid} after {attempt} attempts")
            self._record(event("dicom.node.deliver", calling, "delivered", self.classifier, study_uid=study_uid,
                              sop_uid=sop_uid, detail={"attempts": attempt, "to": str(self.config.destination)}))
            self._done()
            return

    def _record(self, ev: dict) -> None:
        """An event that holds nothing back (a refusal, an ignored instance, a delivery): a failed audit is said."""
        try:
            emit(self.events, ev)
        except AuditFailed as e:
            self.say(f"{e} (event {ev['action']} {ev['outcome']})")

    def _done(self) -> None:
        with self.lock:
            self.in_flight -= 1

    def send(self, datasets: list) -> None:
        """Deliver results to the destination, or raise DeliveryError."""
        dest = self.config.destination
        if dest.stow_url:
            return self._stow(datasets)
        from pynetdicom import AE

        ae = AE(ae_title=self.config.ae_title)
        for sop_class in {str(d.SOPClassUID) for d in datasets}:
            ae.add_requested_context(sop_class, [str(d.file_meta.TransferSyntaxUID) for d in datasets
                                                 if str(d.SOPClassUID) == sop_class][:1])
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.config.network_timeout_s
        ae.connection_timeout = 5
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
        if not assoc.is_established:
            raise DeliveryError("association not established (PACS down or refusing this node)")
        try:
            for ds in datasets:
                status = assoc.send_c_store(ds)
                code = getattr(status, "Status", None)
                if code is None:
                    raise DeliveryError("no C-STORE response (connection lost)")
                if code not in (0x0000, 0xB000, 0xB007, 0xB006):
                    raise DeliveryError(f"C-STORE status 0x{code:04X}")
        finally:
            if assoc.is_established:
                assoc.release()

    def _stow(self, datasets: list) -> None:
        from dicomweb_client.api import DICOMwebClient

        try:
            DICOMwebClient(url=self.config.destination.stow_url).store_instances(datasets)
        except Exception as e:  # noqa: BLE001 - requests' and the client's errors alike: retry
            raise DeliveryError(f"STOW-RS failed ({type(e).__name__}: {str(e)[:200]})") from None

    def idle(self) -> bool:
        """Whether nothing is waiting to be scored or delivered (tests and the benchmark poll it)."""
        with self.lock:
            return self.in_flight == 0


def wait_until(check: Callable[[], bool], timeout_s: float, every_s: float = 0.1) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(every_s)
    return check()
