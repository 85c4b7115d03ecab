"""A DICOM film -> its score -> the DICOM results a PACS files in the film's study (IHE AI Results).

What a result carries follows MONAI Deploy's DICOM writers and highdicom's docs:
- SR: a Comprehensive 3D SR holding a TID 1500 Measurement Report. One measurement group (TID 1501) for
  the finding COVID-19 (SNOMED CT 840539006): the calibrated probability as a NUM (UCUM "1"), the operating
  point as a NUM (DCM 111071 "CAD Operating Point"), the decision at that point as a qualitative evaluation
  (Present / Absent), the operating point's source (the shipped model, or a site profile with its version)
  as text, and the algorithm's identity (TID 4019: name, model version, parameters: the weights' sha256,
  the operating point, the profile). It references the source image (evidence and the group's source
  image), says VerificationFlag UNVERIFIED, and its series description says research use, not for diagnosis.
  A film the gate refuses gets an SR whose evaluation is "Indeterminate" with the reasons: not assessed, why.
- SC: an RGB secondary capture of the app's report picture (webapp.views.images.report_image: the film with its
  Grad-CAM and labelled colour scale, the film's accession number and study date (never the patient's name), the
  decision, score, operating point and whose it is, model version, date and "not for diagnostic use" printed),
  BurnedInAnnotation YES. None for a refused film.
Both carry the Contributing Equipment Sequence (this software as processing equipment), sit in the film's
patient and study, each in a new series.

Pixels stay in memory: nothing here writes a file except write(), which `dicom score --out` calls.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..films import Film, FilmError, read_film
from . import require

# highdicom and pydicom warn about odd header values by quoting them (a patient's name among them): no such
# value may reach a log, and warnings.catch_warnings is not thread-safe (the node scores on several threads).
warnings.filterwarnings("ignore", module=r"(highdicom|pydicom)(\.|$)")

MANUFACTURER = "covidxr (open source research software)"
SERIES_DESCRIPTION = {"SR": "covidxr COVID-19 result: RESEARCH USE, NOT FOR DIAGNOSIS",   # LO: at most 64
                      "SC": "covidxr Grad-CAM: RESEARCH USE, NOT FOR DIAGNOSIS"}
SERIES_NUMBER = {"SR": 9901, "SC": 9902}  # high, so that the results sort after the acquired series
NOT_FOR_DIAGNOSIS = "NOT FOR DIAGNOSTIC USE - research screening aid"
FILM_MODALITIES = ("CR", "DX")  # what the node scores; `dicom score` scores any film the gate passes


@dataclass
class Scored:
    """One DICOM film, scored: its header (no pixel data), the film as the model read it, the prediction,
    the Grad-CAM map (None when the gate refused the film) and the sha256 of the bytes received."""
    header: object                 # pydicom Dataset, pixel data removed
    film: Film
    prediction: object             # covidxr.Prediction
    heatmap: np.ndarray | None
    sha256: str
    when: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))

    @property
    def assessed(self) -> bool:
        v = self.prediction.ood
        return v is None or bool(v.is_chest)

    @property
    def reasons(self) -> list[str]:
        return [] if self.assessed else list(self.prediction.ood.reasons)

    @property
    def study_uid(self) -> str:
        return str(self.header.StudyInstanceUID)

    @property
    def sop_uid(self) -> str:
        return str(self.header.SOPInstanceUID)


def read_dicom(data: bytes, name: str = "") -> tuple[Film, object]:
    """(film, header) of a DICOM film's bytes, through the app's film reader; FilmError (only) when the bytes
    are not a DICOM image, or lack what a result needs to find its study."""
    import pydicom

    film = read_film(data, name=name)  # its checks first: size, format, pixels
    if film.format != "DICOM":
        raise FilmError(f"not a DICOM file (a {film.format} image): DICOM results need the film's study")
    with warnings.catch_warnings():  # pydicom's warnings quote header values: none may reach a log
        warnings.simplefilter("ignore")
        header = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)
    _tidy_patient(header)
    missing = [k for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID") if not header.get(k)]
    if missing:
        raise FilmError(f"the DICOM file lacks {', '.join(missing)}: its results would have no study to go into")
    return film, header


def score(classifier, data: bytes, name: str = "") -> Scored:
    """Read a DICOM film's bytes and score it with its Grad-CAM map (covidxr.explain); FilmError when unreadable."""
    from ..explain import explain

    film, header = read_dicom(data, name)
    ex = explain(classifier, film)
    pred = ex.prediction
    refused = pred.ood is not None and not pred.ood.is_chest
    return Scored(header, film, pred, None if refused else ex.heatmap, hashlib.sha256(data).hexdigest())


def _tidy_patient(header) -> None:
    """Patient values the results copy that their own VR refuses are made valid or left out, so that no result
    fails validation for the film's fault: a bare PatientAge ("62", which some exporters write) becomes
    "062Y", as films.dicom_age_years reads it; any other invalid age is dropped (type 3 in the results). Patient
    and study values the film lacks (type 2 in the results) are added empty, and invalid dates emptied."""
    from pydicom.valuerep import DA

    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                    "ReferringPhysicianName", "AccessionNumber", "StudyID"):
        if keyword not in header:
            setattr(header, keyword, "")  # type 2 in the results: empty when the film does not say
    for keyword in ("PatientBirthDate", "StudyDate"):
        try:
            DA(header.get(keyword) or None)
        except ValueError:  # e.g. "00000000"
            setattr(header, keyword, "")
    age = str(header.get("PatientAge") or "")
    if age and not (len(age) == 4 and age[:3].isdigit() and age[3] in "DWMY"):
        if age.isdigit() and int(age) < 1000:
            header.PatientAge = f"{int(age):03d}Y"
        else:
            del header.PatientAge


# ---------------------------------------------------------------- who made the result


def _model(classifier) -> tuple[str, str, str]:
    """(name, version, site text) of the classifier: the card's name, the package version with the weights'
    sha256[:12], and the operating point's source (the shipped one, or the site profile with its version)."""
    import covidxr

    card = classifier.card
    version = f"{covidxr.__version__}+weights.{card.weights_sha256[:12]}"
    site = getattr(classifier, "site", None)
    if site is None:
        where = "the shipped model's operating point"
    else:
        ver = getattr(site, "version", None) or site.created or "unversioned"
        where = f"site profile {site.name} (version {ver})"
    return card.name, version, where


def _decided_by(classifier) -> str:
    """Whose operating point decided, in the words of the app's decision banner (webapp.views.wording.decided_by)."""
    from webapp.views.wording import decided_by

    site = getattr(classifier, "site", None)
    if site is None:
        return decided_by()
    return decided_by(site.name, getattr(site, "version", None) or site.created or "unversioned")


def _equipment(classifier, when: dt.datetime):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    import covidxr

    return hd.ContributingEquipment(
        manufacturer=MANUFACTURER, purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=classifier.card.name[:64], software_versions=f"covidxr {covidxr.__version__}",
        contribution_datetime=when.strftime("%Y%m%d%H%M%S"),
        contribution_description="COVID-19 screening score and Grad-CAM (research use, not for diagnosis)")


def device_uid(classifier) -> str:
    """A stable UID for this software and model (the SR's device observer)."""
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["covidxr", classifier.card.weights_sha256])


# ---------------------------------------------------------------- the structured report


def make_sr(scored: Scored, classifier):
    """The Comprehensive 3D SR (TID 1500) of one scored film."""
    require("highdicom")
    import highdicom as hd
    from highdicom.sr import CodedConcept
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    pred, name = scored.prediction, classifier.card.positive_class
    model, version, where = _model(classifier)
    covid = CodedConcept("840539006", "SCT", "COVID-19")
    unit = CodedConcept("1", "UCUM", "no units")
    algorithm = hd.sr.AlgorithmIdentification(
        name=model[:64], version=version[:64], manufacturer=MANUFACTURER[:64],
        parameters=[f"weights sha256 {classifier.card.weights_sha256}", f"operating point {pred.threshold:.6f}",
                    f"decided at {where}"[:1024]])
    image_ref = hd.sr.SourceImageForMeasurementGroup(str(scored.header.SOPClassUID), scored.sop_uid)
    measurements, text = [], []
    if scored.assessed:
        measurements = [hd.sr.Measurement(name=codes.DCM.Probability, value=round(float(pred.probability), 6),
                                          unit=unit, algorithm_id=algorithm),
                        hd.sr.Measurement(name=codes.DCM.CADOperatingPoint, value=round(float(pred.threshold), 6),
                                          unit=unit, algorithm_id=algorithm)]
        evaluation = codes.DCM.Present if pred.positive else codes.DCM.Absent
        text.append(f"{'At or above' if pred.positive else 'Below'} the operating point ({where}): "
                    f"{'positive' if pred.positive else 'no'} {name} pattern. Research screening aid, not a diagnosis.")
    else:
        evaluation = codes.SCT.Indeterminate
        text.append("Not assessed: " + ("; ".join(scored.reasons) or "not a frontal chest radiograph"))
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="covidxr COVID-19 screening"),
        finding_type=covid, algorithm_id=algorithm, measurements=measurements or None,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(covid, evaluation)], source_images=[image_ref])
    for t in text:
        group[0].ContentSequence.append(hd.sr.TextContentItem(
            name=codes.DCM.Comment, value=t[:1024], relationship_type=hd.sr.RelationshipTypeValues.CONTAINS))
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_uid(classifier), name="covidxr", manufacturer_name=MANUFACTURER[:64], model_name=model[:64]))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=CodedConcept("399208008", "SCT", "Plain chest X-ray"),
        imaging_measurements=[group])
    sr = hd.sr.Comprehensive3DSR(
        evidence=[scored.header], content=report[0], series_instance_uid=generate_uid(),
        series_number=SERIES_NUMBER["SR"], sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer=MANUFACTURER, is_complete=True, is_final=False, is_verified=False,
        contributing_equipment=[_equipment(classifier, scored.when)])
    sr.SeriesDescription = SERIES_DESCRIPTION["SR"]
    _dates(sr, scored.when)
    return sr


# ---------------------------------------------------------------- the secondary capture


def report_picture(scored: Scored, classifier) -> np.ndarray:
    """The app's report picture of a scored film (uint8 RGB): webapp.views.images.report_image with the lines
    webapp.views.wording.report_lines words, and the "not for diagnostic use" line."""
    from webapp.views.images import DEFAULT_OPACITY, report_image

    pred = scored.prediction
    return report_image(scored.film.pixels, scored.heatmap, pred.positive, DEFAULT_OPACITY,
                        picture_lines(scored, classifier), float(pred.probability), classifier.card.positive_class)


def picture_lines(scored: Scored, classifier) -> list[str]:
    """The text burned into the secondary capture under its picture: the study's accession number and date (which
    film this is: never the patient's name, which the SC's header carries for the PACS, not its pixels), the
    decision with score, operating point and whose it is, what the score is, warnings, model, date, disclaimer."""
    import covidxr
    from webapp.views.wording import film_identifiers, gate_warnings, model_text, report_lines

    pred, card = scored.prediction, classifier.card
    model = model_text(card.name, card.weights_sha256, covidxr.__version__, pred.site)
    film = film_identifiers(None, str(scored.header.get("AccessionNumber") or "") or None,
                            str(scored.header.get("StudyDate") or "") or None)
    return report_lines(pred.probability, pred.positive, pred.threshold, card.positive_class,
                        pred.class_probabilities, model, scored.when.date().isoformat(), gate_warnings(pred.ood),
                        film, _decided_by(classifier)) + [NOT_FOR_DIAGNOSIS]


def make_sc(scored: Scored, classifier):
    """The RGB secondary capture with the result burned in; None for a film the gate refused."""
    if not scored.assessed:
        return None
    require("highdicom")
    import highdicom as hd
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    rgb = np.ascontiguousarray(report_picture(scored, classifier))
    orientation = scored.header.get("PatientOrientation")
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=scored.header, pixel_array=rgb, photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", series_instance_uid=generate_uid(), series_number=SERIES_NUMBER["SC"],
        sop_instance_uid=generate_uid(), instance_number=1, manufacturer=MANUFACTURER,
        patient_orientation=tuple(orientation) if orientation and len(orientation) == 2 else ("L", "F"),
        transfer_syntax_uid=ExplicitVRLittleEndian, contributing_equipment=[_equipment(classifier, scored.when)])
    if not (orientation and len(orientation) == 2):
        sc.PatientOrientation = ""  # type 2: unknown rather than a guess
    if "Laterality" not in sc:
        sc.Laterality = ""  # type 2C, empty: a chest film is not of one side of a paired part
    sc.BurnedInAnnotation = "YES"
    sc.SeriesDescription = SERIES_DESCRIPTION["SC"]
    sc.ImageComments = NOT_FOR_DIAGNOSIS
    _dates(sc, scored.when)
    return sc


def _dates(ds, when: dt.datetime) -> None:
    local = when.astimezone()
    for prefix in ("Series", "Content"):
        setattr(ds, f"{prefix}Date", local.strftime("%Y%m%d"))
        setattr(ds, f"{prefix}Time", local.strftime("%H%M%S"))


def results(scored: Scored, classifier) -> list:
    """The datasets a PACS gets for one scored film: [SR, SC], or [SR] when the gate refused it.

    highdicom and pydicom warn about odd header values by quoting them (a patient's name among them): those
    warnings are silenced here, so that no identifying value reaches a log."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sc = make_sc(scored, classifier)
        return [make_sr(scored, classifier)] + ([sc] if sc is not None else [])


def encode(ds) -> bytes:
    """A result as DICOM Part 10 bytes, in memory."""
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def write(datasets: Sequence, out_dir: str | Path) -> list[Path]:
    """Each result as OUT/<study uid>/<SOP instance uid>.dcm; the paths."""
    paths = []
    for ds in datasets:
        folder = Path(out_dir) / str(ds.StudyInstanceUID)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{ds.SOPInstanceUID}.dcm"
        path.write_bytes(encode(ds))
        paths.append(path)
    return paths
