"""Reading DICOM files (with pydicom): one frame's modality values, how the file says to show them,
and its pixel spacing, with the patient's identifiers kept apart for display.

Handled: single- and multi-frame files; 8, 12 and 16 bits stored, signed or not; MONOCHROME1 (shown
inverted), MONOCHROME2, RGB, YBR (converted to RGB) and PALETTE COLOR; rescale slope and intercept;
the file's VOI LUT or window centre and width (the first when there are several; enhanced
multi-frame files' per-frame and shared functional groups too); pixel spacing or imager pixel
spacing. Compressed transfer syntaxes are decoded when a decoder is installed (pydicom reads RLE
itself, Pillow reads JPEG baseline and JPEG 2000); otherwise the file is refused with a message
naming the syntax and the package to install. Every other failure on a damaged or foreign file is an
``InputError``: a DICOM reader meets many broken files, and none of them is a bug of ours.

pydicom's warnings and log records below ERROR are kept quiet: they can quote element values, such as
a name; a decoder's message that goes into an error has the file's identifiers taken out.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from lvlm_studio.core.errors import InputError
from lvlm_studio.core.io.files import atomic_path
from lvlm_studio.core.io.identifiers import deidentify, identifiers_of
from lvlm_studio.core.io.windowing import (
    WINDOW_FUNCTIONS,
    MedicalImage,
    VoiLut,
    Window,
    percentile_window,
    range_window,
)

DICOM_SUFFIXES = (".dcm", ".dicom", ".dic")
PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
INSTALL_PYDICOM = "Install pydicom: pip install pydicom"
CONVERT = "convert the file to uncompressed DICOM (e.g. gdcmconv --raw IN OUT, or dcmdjpeg IN OUT)"


def looks_like_dicom(path: str | Path) -> bool:
    """Whether ``path`` is named like a DICOM file or carries the 'DICM' marker after its 128-byte preamble."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as file:
            head = file.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def read_dataset(path: str | Path) -> Any:
    """The pydicom dataset of ``path`` (its preamble checked; a file without one is read when it holds
    an image). ``InputError`` when it is not a DICOM file or cannot be read."""
    pydicom = _pydicom()
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                return pydicom.dcmread(path)
            except InvalidDicomError:
                # Old files have no preamble; a forced read of anything else has no image in it.
                dataset = pydicom.dcmread(path, force=True)
                if not any(k in dataset for k in PIXEL_KEYWORDS) or "Rows" not in dataset:
                    raise _not_dicom(path) from None
                return dataset
    except InputError:
        raise
    except PermissionError:
        raise InputError(f"{path} cannot be read: permission denied.", "Check the file's permissions.") from None
    except Exception as exc:  # noqa: BLE001 - any parser failure means "not a readable DICOM file"
        raise InputError(f"{path} could not be read as DICOM ({_first_line(exc)}).",
                         "The file may be cut short or damaged: copy it again from its source.") from None


def read_dicom(path: str | Path, frame: int = 0) -> MedicalImage:
    """Frame ``frame`` (from 0) of the DICOM file ``path``, as modality values with the file's window."""
    path = Path(path)
    dataset = read_dataset(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return _medical_image(path, dataset, frame)
        except InputError:
            raise
        except MemoryError:
            raise InputError(f"{path} is too large to open in the memory available.",
                             "Close other programs, or open a smaller image.") from None
        except Exception as exc:  # noqa: BLE001 - decoders raise many kinds of exception on bad bytes
            reason = _first_line(exc)
            for value in identifiers_of(dataset).values():
                reason = reason.replace(value, "\u2026")
            raise InputError(f"{path}: its image could not be decoded ({reason}).",
                             "The file may be cut short or damaged: copy it again from its source.") from None


def _medical_image(path: Path, dataset: Any, frame: int) -> MedicalImage:
    from pydicom.pixels import pixel_array

    if not any(k in dataset for k in PIXEL_KEYWORDS):
        kind = _sop_class(dataset)
        raise InputError(f"{path} is a DICOM file without an image (no Pixel Data{kind}).",
                         "Open an image of the study (CT, MR, X-ray, ...), not a report or a structured document.")
    syntax = _transfer_syntax(dataset)
    _check_decoder(path, syntax)
    frames = _int(dataset.get("NumberOfFrames"), 1) or 1
    if not 0 <= frame < frames:
        raise InputError(f"{path} has {frames} frame{'s' * (frames != 1)}; there is no frame {frame + 1}.",
                         f"Choose a frame from 1 to {frames}.")
    rows, columns = _int(dataset.get("Rows"), 0), _int(dataset.get("Columns"), 0)
    if rows * columns > 2 * Image.MAX_IMAGE_PIXELS:
        raise InputError(f"{path} is {columns}x{rows} pixels, too large to open safely.",
                         "Export a downscaled copy (e.g. at most 4096 pixels a side) and open that.")
    pixels = pixel_array(dataset, index=frame if frames > 1 else None)
    if not (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] == 3)) or min(pixels.shape[:2]) < 1:
        raise ValueError(f"decoded pixels of shape {pixels.shape}, not one grey or colour image")

    photometric = str(dataset.get("PhotometricInterpretation", "MONOCHROME2") or "MONOCHROME2").strip().upper()
    bits = _int(dataset.get("BitsStored"), 0) or _int(dataset.get("BitsAllocated"), 16) or 16
    signed = _int(dataset.get("PixelRepresentation"), 0) == 1
    common: dict[str, Any] = {
        "kind": "DICOM", "photometric": photometric, "bits_stored": bits, "signed": signed, "frame": frame,
        "frames": frames, "transfer_syntax": syntax.name, "modality": str(dataset.get("Modality", "") or ""),
        "identifiers": identifiers_of(dataset),
    }
    common["pixel_spacing"], common["spacing_source"] = _pixel_spacing(dataset, frame)

    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        colour = apply_color_lut(pixels, dataset)
        depth = _int((dataset.get("RedPaletteColorLookupTableDescriptor") or [0, 0, 16])[2], 16)
        top = max(2 ** depth - 1, float(colour.max(initial=0)))
        return MedicalImage(colour.astype(np.float32), range_window(0, top, source=f"{depth}-bit palette"), **common)
    if pixels.ndim == 3:  # RGB; YBR was converted to RGB while decoding
        window = range_window(0, 2 ** min(bits, 16) - 1, source=f"{bits}-bit range")
        return MedicalImage(pixels.astype(np.float32), window, **common)

    rescale = _frame_item(dataset, frame, "PixelValueTransformationSequence") or dataset
    slope = _number(rescale.get("RescaleSlope"), 1.0) or 1.0
    intercept = _number(rescale.get("RescaleIntercept"), 0.0)
    values = (pixels.astype(np.float64) * slope + intercept).astype(np.float32)

    voi = _frame_item(dataset, frame, "FrameVOILUTSequence") or dataset
    lut = _voi_lut(dataset)
    window = _file_window(voi)
    if window is None and lut is not None:
        low, high = lut.bounds()
        window = range_window(low, high, source="the file's VOI LUT (its range)")
    if window is None:
        finite = values[np.isfinite(values)]
        window = percentile_window(values, exact=not bool(np.all(finite == np.round(finite))))
    return MedicalImage(values, window, lut=lut, invert=photometric == "MONOCHROME1", **common)


def write_deidentified(source: str | Path, target: str | Path) -> list[str]:
    """Write a de-identified copy of the DICOM image ``source`` to ``target`` (atomically; see
    ``identifiers.deidentify``). Returns notes for the user: the pixels themselves are not changed,
    so a file that declares burned-in text is named.

    A damaged file is refused, not cleaned: a wrong length or tag can hide a name inside another
    element, where no list of identifiers finds it. The copy is checked before it replaces
    ``target``: none of the identifiers the file held may be left anywhere outside its pixels.
    """
    source, target = Path(source), Path(target)
    if target.exists() and target.resolve() == source.resolve():
        raise InputError(f"{target} is the file being de-identified; writing over it would lose the original.",
                         "Give another name for the de-identified copy.")
    dataset = read_dataset(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _check_intact(source, dataset)
            burned = str(dataset.get("BurnedInAnnotation", "") or "").strip().upper() == "YES"
            values = [v.encode("utf-8", "replace") for v in identifiers_of(dataset).values() if len(v) >= 3]
            _transfer_syntax(dataset)
            deidentify(dataset)
            pixels = next((bytes(dataset[k].value) for k in PIXEL_KEYWORDS if k in dataset), b"")
            with atomic_path(target) as temporary:
                dataset.save_as(temporary)
                written = temporary.read_bytes().replace(pixels, b"") if pixels else temporary.read_bytes()
                if any(value in written for value in values):
                    raise InputError(f"{source}: an identifier was still in the de-identified copy, so none was "
                                     "written.", "The file holds it where DICOM does not put it; check the file.")
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged element that pydicom cannot write back
        raise InputError(f"{source} could not be written back de-identified ({type(exc).__name__}).",
                         "The file may be damaged: copy it again from its source.") from None
    notes = []
    if burned:
        notes.append("the file says its pixels carry burned-in text (BurnedInAnnotation YES), which is not "
                     "removed: check the image before sharing it.")
    return notes


#: Value representations whose values are bytes or nested datasets: not checked as text.
_BINARY_VRS = ("OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UN", "OB or OW", "US or OW", "US or SS or OW")


def _check_intact(path: Path, dataset: Any) -> None:
    """Refuse a file that is not an intact DICOM image: no image in it, a file meta group that
    swallowed the dataset, or a text element holding control characters (the mark of a wrong length
    that swallowed the elements after it, a name among them). Values that merely break a length
    limit of the standard, as many real files' do, pass."""
    if not any(k in dataset for k in PIXEL_KEYWORDS) or "Rows" not in dataset:
        raise InputError(f"{path} holds no image (no Pixel Data), so it is not de-identified here.",
                         "De-identify image files (CT, MR, X-ray, ...); reports and structured documents need "
                         "a tool that reads their text.")
    damaged = None
    meta = getattr(dataset, "file_meta", None)
    if meta is not None and (any(tag.group != 2 for tag in meta.keys())
                             or not isinstance(meta.get("FileMetaInformationGroupLength", 0), int)):
        damaged = "its file meta information"
    else:
        damaged = "an element"
        try:
            for element in dataset.iterall():
                damaged = f"element {element.tag}"
                if element.VR not in _BINARY_VRS and not _plain_text(element.VR, element.value):
                    raise ValueError
            damaged = None
        except Exception:  # noqa: BLE001 - the value's text may hold a name: only the tag is reported
            pass
    if damaged is not None:
        raise InputError(f"{path} is damaged ({damaged} does not read as DICOM), so its identifiers cannot be "
                         "found reliably; nothing was written.", "Copy the file again from its source.")


def _plain_text(vr: str, value: Any) -> bool:
    """Whether a value reads as its kind of text: no control characters but tab, line and page breaks
    and the escape of character sets; a UID only digits and dots."""
    items = value if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]
    for item in items:
        if item is None or isinstance(item, (int, float)):
            continue
        text = (item.decode("latin-1") if isinstance(item, bytes) else str(item)).rstrip("\0 ")
        if any(ord(c) < 32 and c not in "\t\n\r\f\x1b" for c in text):
            return False
        if vr == "UI" and text.strip(".0123456789"):
            return False
    return True


# -- what the file says -----------------------------------------------------------------------------
def _transfer_syntax(dataset: Any) -> Any:
    """The dataset's transfer syntax; set from how it was read when the file does not name one."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(dataset, "file_meta", None)
    if meta is None:
        meta = dataset.file_meta = FileMetaDataset()
    if "TransferSyntaxUID" not in meta:
        implicit = bool((getattr(dataset, "original_encoding", None) or (False, True))[0])
        meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    return UID(str(meta.TransferSyntaxUID))


def _check_decoder(path: Path, syntax: Any) -> None:
    """Refuse a transfer syntax no installed decoder reads, naming it and what to install."""
    from pydicom.pixels import get_decoder

    name = f"{syntax.name} ({syntax})" if syntax.name != str(syntax) else str(syntax)
    try:
        decoder = get_decoder(syntax)
    except (NotImplementedError, ValueError):
        raise InputError(f"{path} uses transfer syntax {name}, which LVLM Studio cannot decode.",
                         f"{CONVERT[:1].upper()}{CONVERT[1:]}.") from None
    if not decoder.is_available:
        raise InputError(f"{path} is compressed as {name}, and no installed decoder reads it.",
                         f"Install one (pip install {_decoder_packages(syntax.name)}), or {CONVERT}.")


def _decoder_packages(syntax_name: str) -> str:
    """The PyPI packages that decode a compressed transfer syntax (by its name)."""
    if "2000" in syntax_name or "HTJ2K" in syntax_name:
        return "pylibjpeg pylibjpeg-openjpeg"
    if "RLE" in syntax_name:
        return "pylibjpeg pylibjpeg-rle"
    if "JPEG" in syntax_name:
        return "pylibjpeg pylibjpeg-libjpeg"
    return "python-gdcm"


def _frame_item(dataset: Any, frame: int, sequence: str) -> Any:
    """For enhanced multi-frame files: the first item of ``sequence`` for ``frame`` in the per-frame
    functional groups, else in the shared ones; None when neither has it."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        items = dataset.get(groups)
        if items and index < len(items):
            inner = items[index].get(sequence)
            if inner:
                return inner[0]
    return None


def _file_window(item: Any) -> Window | None:
    """The file's window: the first centre and width (DICOM allows several), with its VOI LUT function."""
    centre, width = _number(item.get("WindowCenter"), None), _number(item.get("WindowWidth"), None)
    if centre is None or width is None or width <= 0:
        return None
    function = str(item.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    return Window(centre, width, function if function in WINDOW_FUNCTIONS else "LINEAR", "the file")


def _voi_lut(dataset: Any) -> VoiLut | None:
    """The first VOI LUT of the file's VOI LUT Sequence, or None (also when it is malformed)."""
    sequence = dataset.get("VOILUTSequence")
    if not sequence:
        return None
    item = sequence[0]
    descriptor, data = item.get("LUTDescriptor"), item.get("LUTData")
    if descriptor is None or data is None or len(descriptor) != 3:
        return None
    count, first, bits = (int(v) for v in descriptor)
    count = count or 65536  # 0 means 2**16 entries
    if first >= 2 ** 15 and _int(dataset.get("PixelRepresentation"), 0) == 1:
        first -= 2 ** 16  # a negative first value read as unsigned
    if isinstance(data, bytes):  # OW: 16-bit words, or one byte an entry when the length says so
        words = data[: len(data) // 2 * 2]
        table = np.frombuffer(data, np.uint8) if len(data) == count else np.frombuffer(words, "<u2")
    else:
        table = np.atleast_1d(np.asarray(data, dtype=np.float64))
    table = np.asarray(table[:count], dtype=np.float64)
    if table.size == 0:
        return None
    top = max(float(2 ** bits - 1) if 1 <= bits <= 16 else 0.0, float(table.max()))
    return VoiLut(float(first), table, top, str(item.get("LUTExplanation", "") or ""))


def _pixel_spacing(dataset: Any, frame: int) -> tuple[tuple[float, float] | None, str]:
    """(row, column) spacing in mm and the element it came from; (None, "") when the file gives none."""
    measures = _frame_item(dataset, frame, "PixelMeasuresSequence")
    for item, keyword in ((measures, "PixelSpacing"), (dataset, "PixelSpacing"), (dataset, "ImagerPixelSpacing")):
        value = None if item is None else item.get(keyword)
        try:
            row, column = (float(v) for v in value)
        except (TypeError, ValueError):
            continue
        if row > 0 and column > 0 and np.isfinite(row) and np.isfinite(column):
            return (row, column), keyword
    return None, ""


def _sop_class(dataset: Any) -> str:
    uid = dataset.get("SOPClassUID")
    try:
        return f"; it is a {uid.name}" if uid is not None and uid.name != str(uid) else ""
    except Exception:  # noqa: BLE001 - an odd UID only loses the description
        return ""


def _number(value: Any, default: float | None) -> float | None:
    """The first number of a DICOM value (DS values may hold several), or ``default``."""
    if value is None:
        return default
    if not isinstance(value, (str, bytes)) and hasattr(value, "__len__"):
        value = value[0] if len(value) else None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return default
    return number if np.isfinite(number) else default


def _int(value: Any, default: int) -> int:
    number = _number(value, None)
    return default if number is None else int(number)


def _not_dicom(path: Path) -> InputError:
    return InputError(f"{path} is not a DICOM file (no 'DICM' marker, and no image in it).",
                      "Open a DICOM image, or a PNG, JPEG, WebP, BMP or TIFF file.")


def _pydicom() -> Any:
    try:
        import pydicom
    except ImportError:
        raise InputError("reading DICOM files needs pydicom, which is not installed.", INSTALL_PYDICOM) from None
    pydicom_log = logging.getLogger("pydicom")
    if _below_error not in pydicom_log.filters:
        pydicom_log.addFilter(_below_error)
    return pydicom


def _below_error(record: logging.LogRecord) -> bool:
    """pydicom's notes on odd elements can quote their values (a name, a date): only errors pass."""
    return record.levelno >= logging.ERROR


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
