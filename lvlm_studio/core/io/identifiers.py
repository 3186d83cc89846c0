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

No Qt, no pydicom: plain keywords and values, so any reader and writer can use it.
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
