"""A film back from the PACS by DICOMweb WADO-RS (dicomweb-client), as Part 10 bytes in memory, for the Worklist page."""
from __future__ import annotations

import io
import os

DICOMWEB_ENV = "COVIDXR_DICOMWEB_URL"


class WadoError(RuntimeError):
    """The PACS did not give the film (unreachable, unknown instance, no DICOMweb URL configured)."""


def dicomweb_url() -> str | None:
    """The PACS's DICOMweb root ($COVIDXR_DICOMWEB_URL, e.g. http://pacs:8042/dicom-web), or None."""
    return os.environ.get(DICOMWEB_ENV) or None


def fetch_film(study_uid: str, series_uid: str, sop_uid: str, url: str | None = None) -> bytes:
    """The instance's DICOM bytes, retrieved by WADO-RS and encoded in memory (never a file)."""
    from . import require

    require("dicomweb_client")
    from dicomweb_client.api import DICOMwebClient

    url = url or dicomweb_url()
    if not url:
        raise WadoError(f"no DICOMweb address: set {DICOMWEB_ENV} to the PACS's DICOMweb root")
    try:
        ds = DICOMwebClient(url=url).retrieve_instance(study_uid, series_uid, sop_uid)
    except Exception as e:  # noqa: BLE001 - requests' and the client's errors alike
        raise WadoError(f"the PACS did not give the film ({type(e).__name__}: {str(e)[:200]})") from None
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()
