"""Which parts of a medical image's file identify the patient, and how to take them out.

One list for the whole program: the DICOM reader keeps these elements apart (shown to the reviewer,
never written), and ``deidentify`` blanks or removes them for a de-identified copy. The list follows
the spirit of the DICOM basic confidentiality profile (PS3.15 Annex E): names, numbers, dates,
addresses, the people and places involved, and free text that often carries them. It is not a
guarantee: text burned into the pixels stays (a file says so with BurnedInAnnotation), and a site's
own private elements are removed wholesale.
"""

from __future__ import annotations

from typing import Any

#: DICOM keywords of elements that identify a patient (or lead back to one), wherever they occur.
DICOM_IDENTIFIERS = (
    # the patient
    "PatientName", "PatientID", "IssuerOfPatientID", "OtherPatientIDs", "OtherPatientIDsSequence",
    "OtherPatientNames", "PatientBirthName", "PatientMotherBirthName", "PatientBirthDate", "PatientBirthTime",
    "PatientSex", "PatientAge", "PatientAddress", "PatientTelephoneNumbers", "PatientInsurancePlanCodeSequence",
    "MedicalRecordLocator", "MilitaryRank", "BranchOfService", "Occupation", "EthnicGroup",
    "PatientReligiousPreference", "CountryOfResidence", "RegionOfResidence", "PatientComments",
    "AdditionalPatientHistory", "ResponsiblePerson",
    "ReferencedPatientSequence", "PatientSize", "PatientWeight",
    # the study and the visit
    "AccessionNumber", "StudyID", "StudyDate", "StudyTime", "SeriesDate", "SeriesTime", "AcquisitionDate",
    "AcquisitionTime", "AcquisitionDateTime", "ContentDate", "ContentTime", "InstanceCreationDate",
    "InstanceCreationTime", "AdmissionID", "AdmittingDiagnosesDescription", "RequestAttributesSequence",
    "StudyDescription", "SeriesDescription", "ImageComments", "RequestedProcedureID", "ScheduledProcedureStepID",
    "PerformedProcedureStepID", "PerformedProcedureStepStartDate", "PerformedProcedureStepStartTime",
    # people and places
    "ReferringPhysicianName", "ReferringPhysicianAddress", "ReferringPhysicianTelephoneNumbers",
    "PerformingPhysicianName", "NameOfPhysiciansReadingStudy", "PhysiciansOfRecord", "RequestingPhysician",
    "OperatorsName", "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "StationName",
    "DeviceSerialNumber",
)

#: Of ``DICOM_IDENTIFIERS``, those that image types require to be present (DICOM type 2): they are
#: kept, empty, so that the de-identified copy is still a valid file; the others are removed.
BLANKED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
           "AccessionNumber", "StudyID", "ReferringPhysicianName")

#: Unique identifiers that a hospital's archive can link back to the patient: replaced by new ones
#: derived from them (files of one study or series stay together; the originals cannot be read back).
REPLACED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")

#: What the reviewer sees of the identifiers (in this order), when the file has them.
SHOWN = (("PatientName", "Patient"), ("PatientID", "ID"), ("PatientBirthDate", "born"),
         ("AccessionNumber", "accession"), ("StudyDate", "study"))

METHOD = "LVLM Studio: identifiers and private elements removed, UIDs new"  # LO: at most 64 characters


def identifiers_of(dataset: Any) -> dict[str, str]:
    """The identifiers a dataset holds at its top level, keyword -> text (empty ones left out), for display."""
    found = {}
    for keyword in DICOM_IDENTIFIERS:
        try:
            value = None if keyword.endswith("Sequence") else dataset.get(keyword)
            text = "" if value is None else str(value).strip()
        except Exception:  # noqa: BLE001 - a damaged element (read lazily) is not shown, and not an error here
            continue
        if text:
            found[keyword] = text
    return found


def shown_identifiers(identifiers: dict[str, str]) -> str:
    """The identifiers as one line for the reviewer ("Patient Doe^John · ID 12345 · ..."), or ""."""
    return " \u00b7 ".join(f"{label} {identifiers[key]}" for key, label in SHOWN if identifiers.get(key))


def deidentify(dataset: Any) -> Any:
    """Take the identifiers out of a pydicom ``dataset`` (changed in place and returned).

    Every element of ``DICOM_IDENTIFIERS`` is removed, at any depth of nested sequences, except
    those in ``BLANKED``, which stay empty; private elements are removed, and so are public ones
    this version of DICOM does not know (a damaged tag, or a private one in disguise) and any that
    repeats an identifier's value (a name copied into a comment), or cannot be read to check; the
    UIDs of ``REPLACED_UIDS`` are replaced (the file meta's copy of the instance UID too); the
    dataset is marked PatientIdentityRemoved YES with a DeidentificationMethod.
    """
    from pydicom.uid import generate_uid

    values = [value for value in identifiers_of(dataset).values() if len(value) >= 3]
    dataset.remove_private_tags()
    _strip(dataset, values)
    for keyword in REPLACED_UIDS:
        if keyword in dataset:
            setattr(dataset, keyword, generate_uid(entropy_srcs=[str(dataset.data_element(keyword).value)]))
    meta = getattr(dataset, "file_meta", None)
    if meta is not None and "SOPInstanceUID" in dataset and "MediaStorageSOPInstanceUID" in meta:
        meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    dataset.PatientIdentityRemoved = "YES"
    dataset.DeidentificationMethod = METHOD
    return dataset


def _strip(dataset: Any, values: list[str]) -> None:
    """Remove or blank the identifiers of ``dataset`` and of every dataset nested in its sequences,
    and the elements that are unknown, unreadable or repeat one of ``values``."""
    from pydicom.datadict import dictionary_has_tag, repeater_has_tag

    for keyword in DICOM_IDENTIFIERS:
        if keyword not in dataset:
            continue
        if keyword in BLANKED:
            dataset.data_element(keyword).value = None
        else:
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
                for item in element.value or []:
                    _strip(item, values)
                continue
            value = element.value
            text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        except Exception:  # noqa: BLE001 - an element that cannot be read cannot be checked: it goes
            del dataset[tag]
            continue
        if any(found in text for found in values):
            del dataset[tag]


#: Pixel Data, Float Pixel Data, Double Float Pixel Data: never searched for names (bytes of an image).
PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)
