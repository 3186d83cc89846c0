"""Patient identifiers: the one list of what must not leave the reviewer's screen, and the policy that keeps it there.

An image's metadata (DICOM attributes, read by the DICOM reader under their keywords, e.g.
``PatientName``) may be shown to the reviewer, but nothing LVLM Studio writes (reports, exports,
sessions, logs, the audit trail) carries it unless the user opts in. Everything that writes metadata
passes it through ``redact`` first; free text that may quote an identifier (a model's answer read off
a burned-in label, a reviewer's comment) goes through ``scrub_text`` with the values of this image.

The list follows the attributes that DICOM's basic de-identification profile (PS3.15, Annex E)
removes or replaces: names, numbers and dates that point at a person, the people who treated them,
the institution and the device, and the instance UIDs that a hospital's archive can map back to a
patient. It errs on the side of leaving things out: a report that lacks a study date is better than
one that names a patient. Private attributes (odd group numbers) are unknown, so they count as
identifiers too.

The DICOM reader keeps these attributes apart (``identifiers_of``: shown to the reviewer, never
written), and ``deidentify`` takes them out of a pydicom dataset for a de-identified copy (``lvlm-studio
dicom deidentify``).

No Qt; pydicom only inside ``deidentify``: plain keywords and values, so any reader and writer can use it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

#: DICOM keywords of attributes that identify a patient, directly or by linkage. One place only:
#: the DICOM reader, reports, exports, sessions and the audit trail all import it from here.
IDENTIFIER_KEYWORDS: frozenset[str] = frozenset({
    # the patient
    "PatientName", "PatientID", "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence",
    "OtherPatientIDs", "OtherPatientIDsSequence", "OtherPatientNames", "PatientBirthName",
    "PatientMotherBirthName", "PatientBirthDate", "PatientBirthTime", "PatientAge", "PatientSex",
    "PatientSize", "PatientWeight", "PatientAddress", "PatientTelephoneNumbers", "PatientTelecomInformation",
    "CountryOfResidence", "RegionOfResidence", "MedicalRecordLocator", "MilitaryRank", "BranchOfService",
    "EthnicGroup", "Occupation", "PatientReligiousPreference", "PatientInsurancePlanCodeSequence",
    "PatientComments", "AdditionalPatientHistory", "PatientState", "PregnancyStatus",
    "LastMenstrualDate", "SmokingStatus", "ResponsiblePerson", "ResponsibleOrganization",
    "ReferencedPatientSequence", "ReferencedPatientPhotoSequence", "PersonName",
    # the visit, the order, the study
    "AccessionNumber", "StudyID", "AdmissionID", "IssuerOfAdmissionIDSequence", "AdmittingDiagnosesDescription",
    "CurrentPatientLocation", "AssignedLocation", "RequestAttributesSequence", "RequestedProcedureID",
    "ScheduledProcedureStepID", "PerformedProcedureStepID", "FillerOrderNumberImagingServiceRequest",
    "PlacerOrderNumberImagingServiceRequest", "OrderEntererLocation", "StudyDescription", "SeriesDescription",
    "ImageComments", "RequestedProcedureDescription", "PerformedProcedureStepDescription",
    "ReasonForStudy", "ReasonForTheRequestedProcedure", "InterpretationText", "TextValue",
    "StudyDate", "StudyTime", "SeriesDate", "SeriesTime", "AcquisitionDate", "AcquisitionTime",
    "AcquisitionDateTime", "ContentDate", "ContentTime", "InstanceCreationDate", "InstanceCreationTime",
    "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
    # the people and the place
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "InstitutionCodeSequence",
    "ReferringPhysicianName", "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers",
    "ReferringPhysicianIdentificationSequence", "PerformingPhysicianName", "PerformingPhysicianIdentificationSequence",
    "NameOfPhysiciansReadingStudy", "PhysiciansReadingStudyIdentificationSequence", "PhysiciansOfRecord",
    "PhysiciansOfRecordIdentificationSequence", "RequestingPhysician", "OperatorsName",
    "OperatorIdentificationSequence", "ScheduledPerformingPhysicianName", "VerifyingObserverName",
    "ContentCreatorName", "ReviewerName", "StationName", "DeviceSerialNumber", "DetectorID",
    # identifiers an archive maps back to the patient
    "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "MediaStorageSOPInstanceUID",
    "FrameOfReferenceUID", "SynchronizationFrameOfReferenceUID", "IrradiationEventUID",
    "ReferencedSOPInstanceUID", "UID",
})

#: A private attribute named by its tag, "(0009,1010)" or "00091010": its group number is odd.
_PRIVATE_TAG = re.compile(r"^\(?([0-9A-Fa-f]{3}[13579BDFbdf]),?\s*([0-9A-Fa-f]{4})\)?$")
#: Shorter values ("M", "12") match ordinary text by chance; they are not searched for in free text.
MIN_SCRUBBED_LENGTH = 3
WITHHELD = "[withheld]"


def is_identifier(keyword: str) -> bool:
    """Whether the attribute ``keyword`` (a DICOM keyword, or a tag for private attributes) identifies a patient."""
    return keyword in IDENTIFIER_KEYWORDS or bool(_PRIVATE_TAG.match(keyword.strip()))


def redact(metadata: Mapping[str, Any], *, keep_identifiers: bool = False) -> dict[str, Any]:
    """A copy of ``metadata`` (keyword -> value; sequences as lists of such mappings) without the
    attributes that identify a patient, at every depth. ``keep_identifiers``: the user opted in, and
    the copy keeps everything. The input is never changed."""
    if keep_identifiers:
        return {key: _copy(value, keep_identifiers) for key, value in metadata.items()}
    return {key: _copy(value, keep_identifiers) for key, value in metadata.items() if not is_identifier(str(key))}


def _copy(value: Any, keep_identifiers: bool) -> Any:
    if isinstance(value, Mapping):
        return redact(value, keep_identifiers=keep_identifiers)
    if isinstance(value, (list, tuple)):
        return [_copy(item, keep_identifiers) for item in value]
    return value


def identifier_values(metadata: Mapping[str, Any]) -> list[str]:
    """The texts of ``metadata``'s identifying attributes, at every depth, for ``scrub_text``: each value,
    and each part of a person's name ("Doe^John" gives "Doe^John", "Doe" and "John")."""
    found: list[str] = []

    def collect(value: Any) -> None:
        if isinstance(value, Mapping):
            for inner in value.values():
                collect(inner)
        elif isinstance(value, (list, tuple)):
            for item in value:
                collect(item)
        elif value is not None and not isinstance(value, bytes):
            text = str(value).strip()
            found.append(text)
            found.extend(part.strip() for part in re.split(r"[\^=\\]", text))

    def walk(mapping: Mapping[str, Any]) -> None:
        for key, value in mapping.items():
            if is_identifier(str(key)):
                collect(value)
            elif isinstance(value, Mapping):
                walk(value)
            elif isinstance(value, (list, tuple)):
                for item in value:
                    if isinstance(item, Mapping):
                        walk(item)

    walk(metadata)
    unique = {text for text in found if len(text) >= MIN_SCRUBBED_LENGTH}
    return sorted(unique, key=lambda text: (-len(text), text))  # longest first: "Doe^John" before "Doe"


def _pattern(values: Iterable[str]) -> re.Pattern[str] | None:
    """One case-insensitive pattern for whole-word occurrences of ``values`` (long values first)."""
    parts = []
    for value in sorted({v.strip() for v in values if len(v.strip()) >= MIN_SCRUBBED_LENGTH}, key=lambda v: -len(v)):
        escaped = re.escape(value)
        start = r"(?<!\w)" if re.match(r"\w", value) else ""
        end = r"(?!\w)" if re.search(r"\w$", value) else ""
        parts.append(start + escaped + end)
    return re.compile("|".join(parts), re.IGNORECASE) if parts else None


def mentions(text: str, values: Iterable[str]) -> bool:
    """Whether ``text`` contains one of ``values`` as a whole word (case ignored; short values are not searched)."""
    pattern = _pattern(values)
    return bool(pattern and pattern.search(text))


def scrub_text(text: str, values: Iterable[str]) -> str:
    """``text`` with every whole-word occurrence of ``values`` (e.g. ``identifier_values(metadata)``)
    replaced by "[withheld]"; case is ignored, and values shorter than 3 characters are not searched."""
    pattern = _pattern(values)
    return pattern.sub(WITHHELD, text) if pattern else text


# -- DICOM datasets: what the reviewer sees, and a de-identified copy --------------------------------
#: Of ``IDENTIFIER_KEYWORDS``, those that image types require to be present (DICOM type 2): a
#: de-identified copy keeps them, empty, so that it is still a valid file; the others are removed,
#: and unique identifiers (VR UI) are replaced.
BLANKED = frozenset({"PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                     "AccessionNumber", "StudyID", "ReferringPhysicianName"})
#: What the reviewer sees of the identifiers (in this order), when the file has them.
SHOWN = (("PatientName", "Patient"), ("PatientID", "ID"), ("PatientBirthDate", "born"),
         ("AccessionNumber", "accession"), ("StudyDate", "study"))
DEIDENTIFICATION_METHOD = "LVLM Studio: identifiers and private elements removed, UIDs new"  # LO: <= 64 characters
#: Pixel Data, Float Pixel Data, Double Float Pixel Data: never searched for names (bytes of an image).
PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)


def identifiers_of(dataset: Any) -> dict[str, str]:
    """The identifying attributes at a pydicom dataset's top level, keyword -> text (empty and
    unreadable ones left out, sequences too), for display only."""
    found = {}
    for keyword in sorted(IDENTIFIER_KEYWORDS):
        try:
            value = None if keyword.endswith("Sequence") else dataset.get(keyword)
            text = "" if value is None else str(value).strip()
        except Exception:  # noqa: BLE001 - a damaged element (read lazily) is not shown, and not an error here
            continue
        if text:
            found[keyword] = text
    return found


def shown_identifiers(identifiers: Mapping[str, str]) -> str:
    """The identifiers as one line for the reviewer ("Patient Doe^Jane · ID 12345 · ..."), or ""."""
    return " \u00b7 ".join(f"{label} {identifiers[key]}" for key, label in SHOWN if identifiers.get(key))


def deidentify(dataset: Any) -> Any:
    """Take the identifiers out of a pydicom ``dataset`` (changed in place and returned).

    At every depth of nested sequences: the attributes of ``IDENTIFIER_KEYWORDS`` are removed, except
    those in ``BLANKED`` (kept empty) and unique identifiers, which are replaced by new ones derived
    from them (files of one study stay together; the originals cannot be read back; the file meta's
    copy of the instance UID follows); private attributes are removed, and so are public ones this
    version of DICOM does not know (a damaged tag, or a private one in disguise), those that cannot
    be read to be checked, and any that repeats an identifying value (a name copied into a comment).
    The dataset is marked PatientIdentityRemoved YES with a DeidentificationMethod.
    """
    values = identifier_values(identifiers_of(dataset))
    dataset.remove_private_tags()
    _strip(dataset, values)
    meta = getattr(dataset, "file_meta", None)
    if meta is not None and "SOPInstanceUID" in dataset and "MediaStorageSOPInstanceUID" in meta:
        meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.PatientIdentityRemoved = "YES"
    dataset.DeidentificationMethod = DEIDENTIFICATION_METHOD
    return dataset


def _strip(dataset: Any, values: list[str]) -> None:
    """``deidentify`` for one dataset and the datasets nested in its sequences."""
    from pydicom.datadict import dictionary_has_tag, dictionary_VR, repeater_has_tag
    from pydicom.uid import generate_uid

    for keyword in IDENTIFIER_KEYWORDS:
        if keyword not in dataset:
            continue
        element = dataset.data_element(keyword)
        if keyword in BLANKED:
            element.value = None
        elif dictionary_VR(keyword) == "UI" and element.value:
            element.value = generate_uid(entropy_srcs=[str(element.value)])
        elif element.VR != "SQ":
            delattr(dataset, keyword)
    for tag in list(dataset.keys()):
        if tag in PIXEL_TAGS or tag.element == 0:  # the image itself; group lengths
            continue
        if not (dictionary_has_tag(tag) or repeater_has_tag(tag)):
            del dataset[tag]
            continue
        try:
            element = dataset[tag]
            if element.VR == "SQ":
                if element.keyword in IDENTIFIER_KEYWORDS:
                    del dataset[tag]
                else:
                    for item in element.value or []:
                        _strip(item, values)
                continue
            value = element.value
            text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        except Exception:  # noqa: BLE001 - an element that cannot be read cannot be checked: it goes
            del dataset[tag]
            continue
        if element.VR == "UI":
            if text in values:  # another attribute repeating an identifying UID: the same new one
                element.value = generate_uid(entropy_srcs=[text])
        elif any(found in text for found in values):
            del dataset[tag]
