"""DICOM and more-than-8-bit images: decoding, windowing, identifiers kept out of what is written.

Every DICOM file here is made with pydicom in the test's folder (``write_dicom``); none is downloaded.
Window levels are checked against numbers worked out by hand from the DICOM formula (PS3.3 C.11.2.1.2):
a value x in window (c, w) shows at ((x - (c - 0.5)) / (w - 1) + 0.5) * 255, clipped to 0..255.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from hostile_helpers import assert_refused, assert_rgb_or_input_error, run_cli
from PIL import Image

from lvlm_studio.core.errors import InputError
from lvlm_studio.core.io.dicom import looks_like_dicom, read_dicom
from lvlm_studio.core.io.images import open_image, open_with_levels
from lvlm_studio.core.io.windowing import Window, apply_window

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset  # noqa: E402
from pydicom.uid import (  # noqa: E402
    UID,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

#: The patient of every test file: none of these strings may reach anything the program writes.
PATIENT = {"PatientName": "Doe^Jane", "PatientID": "PID-4711", "PatientBirthDate": "19700101",
           "AccessionNumber": "ACC-0099", "InstitutionName": "St Elsewhere Hospital",
           "ReferringPhysicianName": "House^Gregory", "OtherPatientIDs": "OTHER-815"}
SECRETS = [*PATIENT.values(), "Doe", "Jane"]
SIDE = 64


def ramp(low: float, high: float, dtype, side: int = SIDE) -> np.ndarray:
    """A left-to-right gradient from ``low`` to ``high``, the same in every row."""
    return np.broadcast_to(np.linspace(low, high, side), (side, side)).round().astype(dtype)


def write_dicom(path: Path, pixels: np.ndarray, *, bits: int | None = None, photometric: str = "MONOCHROME2",
                frames: int | None = None, syntax: str = ExplicitVRLittleEndian, encapsulated: bytes | None = None,
                **elements) -> Path:
    """A DICOM file of ``pixels`` (grey: (rows, cols) or (frames, rows, cols); colour: (..., 3)) with the
    test patient, a private element and ``elements``; ``bits`` stored (default: the dtype's)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "OT"
    for keyword, value in PATIENT.items():
        setattr(ds, keyword, value)
    block = ds.private_block(0x0011, "ACME hospital", create=True)
    block.add_new(0x01, "LO", "Doe^Jane private copy")
    colour = photometric not in ("MONOCHROME1", "MONOCHROME2")
    ds.SamplesPerPixel = 3 if colour else 1
    if colour:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    shape = pixels.shape[:-1] if colour else pixels.shape
    ds.Rows, ds.Columns = shape[-2], shape[-1]
    if frames:
        ds.NumberOfFrames = frames
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = int(pixels.dtype.kind == "i")
    ds.PixelData = encapsulated if encapsulated is not None else pixels.tobytes()
    if encapsulated is not None:
        ds["PixelData"].VR = "OB"
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    ds.save_as(path, enforce_file_format=True)
    return path


def levels(image: Image.Image) -> np.ndarray:
    pixels = np.asarray(image)
    assert image.mode == "RGB"
    return pixels[..., 0].astype(int)


# -- windowing ------------------------------------------------------------------------------------
def test_the_linear_window_follows_the_dicom_formula():
    values = np.array([-160.0, -159.0, 40.0, 239.0, 240.0, np.nan, np.inf])
    window = Window(40, 400)  # CT soft tissue: -160 and below black, above 239.5 white
    assert apply_window(values, window).tolist() == [0, 1, 128, 255, 255, 0, 255]
    assert apply_window(np.array([9.0, 10.0, 11.0]), Window(10.5, 1)).tolist() == [0, 0, 255]  # width 1: threshold
    exact = apply_window(np.array([0.0, 50.0, 100.0]), Window(50, 100, "LINEAR_EXACT"))
    sigmoid = apply_window(np.array([-1e6, 50.0, 1e6]), Window(50, 100, "SIGMOID"))
    assert exact.tolist() == [0, 128, 255] and sigmoid.tolist() == [0, 128, 255]


# -- DICOM files ------------------------------------------------------------------------------------
def test_an_8_bit_file_without_a_window_uses_the_data_percentiles(tmp_path):
    values = ramp(0, 255, np.uint8)
    medical = read_dicom(write_dicom(tmp_path / "eight.dcm", values))
    assert medical.bits_stored == 8 and not medical.signed and medical.frames == 1
    assert "percentiles" in medical.window.source and medical.lut is None
    low, high = np.percentile(values, [0.5, 99.5])
    assert medical.window.bounds() == pytest.approx((low, high))
    row = levels(medical.render())[0]
    assert row[0] == 0 and row[-1] == 255 and (np.diff(row) >= 0).all()


def test_percentiles_ignore_a_few_outliers(tmp_path):
    values = np.full((SIDE, SIDE), 150, np.uint16)
    values[:, : SIDE // 2] = 100
    values[0, :5], values[1, :5] = 0, 4095  # dead and hot pixels (10 of 4096)
    medical = read_dicom(write_dicom(tmp_path / "outliers.dcm", values, bits=12))
    shown = levels(medical.render())
    assert shown[5, 0] == 0 and shown[5, -1] == 255  # the body's values span black to white


def test_a_12_bit_file_is_windowed_with_its_centre_and_width(tmp_path):
    values = ramp(0, 4095, np.uint16)
    values[0, 0] = 1024
    path = write_dicom(tmp_path / "twelve.dcm", values | 0xF000, bits=12,  # bits above 12 are not the image's
                       WindowCenter=["2048", "300"], WindowWidth=["4096", "600"])  # the first of several
    medical = read_dicom(path)
    assert medical.values.max() == 4095 and medical.values[0, 0] == 1024
    assert (medical.window.centre, medical.window.width, medical.window.source) == (2048, 4096, "the file")
    shown = levels(open_image(path))
    assert shown[0, 0] == 64  # 1024 * 255 / 4095 = 63.8
    assert shown[1, 0] == 0 and shown[1, -1] == 255
    assert (shown == 255).mean() < 0.05  # not clipped white


def test_a_ct_like_signed_file_is_rescaled_to_hounsfield_units(tmp_path):
    raw = np.full((SIDE, SIDE), -2000, np.int16)  # padding outside the scan
    raw[0, :5] = [864, 865, 1064, 1263, 1264]  # -160, -159, 40, 239, 240 HU
    medical = read_dicom(write_dicom(tmp_path / "ct.dcm", raw, RescaleIntercept="-1024", RescaleSlope="1",
                                     WindowCenter="40", WindowWidth="400", Modality="CT"))
    assert medical.signed and medical.values.dtype == np.float32
    assert medical.values[0, :5].tolist() == [-160, -159, 40, 239, 240] and medical.values[5, 5] == -3024
    assert levels(medical.render())[0, :5].tolist() == [0, 1, 128, 255, 255]
    assert medical.describe().startswith("DICOM CT")


def test_rescale_slope_scales_the_values(tmp_path):
    medical = read_dicom(write_dicom(tmp_path / "slope.dcm", ramp(0, 1000, np.uint16), RescaleSlope="0.5",
                                     RescaleIntercept="10"))
    assert medical.values.min() == 10 and medical.values.max() == 510


def test_monochrome1_shows_low_values_white(tmp_path):
    values = ramp(0, 1000, np.uint16)
    medical = read_dicom(write_dicom(tmp_path / "mono1.dcm", values, photometric="MONOCHROME1",
                                     WindowCenter="500.5", WindowWidth="1001"))
    assert medical.invert and medical.values[0, 0] == 0  # the values stay as stored; only the view inverts
    row = levels(medical.render())[0]
    assert row[0] == 255 and row[-1] == 0 and (np.diff(row) <= 0).all()


def test_an_rgb_file_keeps_its_colours(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
    image, medical = open_with_levels(write_dicom(tmp_path / "rgb.dcm", pixels, bits=8, photometric="RGB"))
    assert medical is not None and medical.colour
    assert (np.asarray(image) == pixels).all()


def test_a_ybr_file_is_converted_to_rgb(tmp_path):
    from pydicom.pixels import convert_color_space

    pixels = np.zeros((SIDE, SIDE, 3), np.uint8)
    pixels[..., 0], pixels[:, SIDE // 2:, 2] = 200, 120
    ybr = convert_color_space(pixels, "RGB", "YBR_FULL")
    image = open_image(write_dicom(tmp_path / "ybr.dcm", ybr, bits=8, photometric="YBR_FULL"))
    assert np.abs(np.asarray(image).astype(int) - pixels).max() <= 2


def test_a_multi_frame_file_opens_at_the_chosen_frame(tmp_path):
    stack = np.stack([np.full((SIDE, SIDE), 100 * (k + 1), np.uint16) for k in range(3)])
    stack[:, 0, 0] = 0
    path = write_dicom(tmp_path / "cine.dcm", stack, bits=12, frames=3)
    first = read_dicom(path)
    assert (first.frame, first.frames) == (0, 3) and first.values[5, 5] == 100
    third = read_dicom(path, frame=2)
    assert third.values[5, 5] == 300 and "frame 3 of 3" in third.describe()
    assert open_image(path, frame=1).size == (SIDE, SIDE)
    with pytest.raises(InputError, match="3 frames; there is no frame 4.*from 1 to 3"):
        read_dicom(path, frame=3)


@pytest.mark.parametrize("vr", ["US", "OW"])
def test_a_voi_lut_sequence_is_the_default_view(tmp_path, vr):
    values = np.full((SIDE, SIDE), 1100, np.uint16)
    values[0, :4] = [500, 1000, 1255, 2000]
    table = np.arange(255, -1, -1, dtype=np.uint16)  # 256 entries from value 1000: reversed
    item = Dataset()
    item.add_new(0x00283002, "US", [256, 1000, 8])  # LUTDescriptor: entries, first value, bits
    item.add_new(0x00283006, vr, table.tolist() if vr == "US" else table.astype("<u2").tobytes())  # LUTData
    item.LUTExplanation = "reversed"
    path = write_dicom(tmp_path / "lut.dcm", values, bits=12, VOILUTSequence=[item],
                       WindowCenter="1200", WindowWidth="100")
    medical = read_dicom(path)
    assert medical.lut is not None and medical.lut.explanation == "reversed"
    assert (medical.window.centre, medical.window.width) == (1200, 100)  # where a viewer's controls start
    shown = levels(medical.render())
    assert shown[0, :4].tolist() == [255, 255, 0, 0] and shown[5, 5] == 155  # 1100 -> entry 100 = 155
    assert levels(medical.render(medical.window))[5, 5] == 0  # the file's linear window instead: 1100 < 1150


def test_pixel_spacing_is_read_in_mm(tmp_path):
    values = ramp(0, 100, np.uint16)
    spaced = read_dicom(write_dicom(tmp_path / "spaced.dcm", values, PixelSpacing=["0.5", "0.25"]))
    assert spaced.pixel_spacing == (0.5, 0.25) and "pixel 0.25 \u00d7 0.5 mm" in spaced.describe()
    imager = read_dicom(write_dicom(tmp_path / "imager.dcm", values, ImagerPixelSpacing=["0.139", "0.139"]))
    assert imager.spacing_source == "ImagerPixelSpacing" and "at the detector" in imager.describe()
    assert read_dicom(write_dicom(tmp_path / "none.dcm", values)).pixel_spacing is None


def test_a_file_without_extension_is_found_by_its_marker(tmp_path):
    path = write_dicom(tmp_path / "IM000001", ramp(0, 4095, np.uint16), bits=12)
    assert looks_like_dicom(path)
    assert levels(open_image(path))[0, -1] == 255


# -- compressed transfer syntaxes ------------------------------------------------------------------
def test_rle_lossless_is_decoded(tmp_path):
    path = write_dicom(tmp_path / "rle.dcm", ramp(0, 4095, np.uint16), bits=12)
    ds = pydicom.dcmread(path)
    ds.compress(RLELossless)
    ds.save_as(path)
    medical = read_dicom(path)
    assert medical.transfer_syntax == "RLE Lossless" and medical.values.max() == 4095


def test_jpeg_2000_is_decoded_when_pillow_reads_it(tmp_path):
    from PIL import features
    from pydicom.encaps import encapsulate

    if not features.check("jpg_2000"):
        pytest.skip("this Pillow has no JPEG 2000")
    values = ramp(0, 4095, np.uint16)
    stream = io.BytesIO()
    Image.fromarray(values).save(stream, "JPEG2000", irreversible=False, no_jp2=True)
    path = write_dicom(tmp_path / "j2k.dcm", values, bits=12, syntax=JPEG2000Lossless,
                       encapsulated=encapsulate([stream.getvalue()]))
    assert (read_dicom(path).values == values).all()


def test_a_syntax_without_a_decoder_is_refused_by_name(tmp_path):
    from pydicom.encaps import encapsulate
    from pydicom.pixels import get_decoder

    if get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS decoder is installed here")
    path = write_dicom(tmp_path / "jls.dcm", ramp(0, 4095, np.uint16), bits=12, syntax=JPEGLSLossless,
                       encapsulated=encapsulate([b"\xff\xd8 not really JPEG-LS \xff\xd9"]))
    with pytest.raises(InputError, match=r"JPEG-LS Lossless Image Compression.*pip install pylibjpeg"):
        open_image(path)


def test_an_unknown_transfer_syntax_is_refused(tmp_path):
    path = write_dicom(tmp_path / "odd.dcm", ramp(0, 255, np.uint8), syntax=UID("1.2.826.0.1.3680043.99.1"),
                       encapsulated=b"\0" * 16)
    with pytest.raises(InputError, match=r"1\.2\.826\.0\.1\.3680043\.99\.1.*onvert the file to uncompressed DICOM"):
        open_image(path)


# -- 12- and 16-bit PNG and TIFF --------------------------------------------------------------------
def test_a_12_bit_png_opens_windowed_not_white(tmp_path):
    values = ramp(0, 4095, np.uint16)
    path = tmp_path / "twelve.png"
    Image.fromarray(values).save(path)
    image, medical = open_with_levels(path)
    shown = levels(image)
    assert (shown == 255).mean() < 0.05 and shown[0, SIDE // 2] == pytest.approx(128, abs=4)
    assert medical is not None and medical.bits_stored == 12 and medical.window.source == "12-bit range"
    assert levels(medical.render(Window(1000, 501)))[0, :].max() == 255  # a viewer's window: narrower
    x = 1000.0  # the same formula as for DICOM: the centre shows mid-grey
    assert apply_window(np.array([x]), Window(1000.5, 501))[0] == 128


def test_a_16_bit_tiff_written_by_tifffile_opens_windowed(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    values = ramp(0, 65535, np.uint16)
    values[0, 0] = 30000
    path = tmp_path / "sixteen.tif"
    tifffile.imwrite(path, values)
    image, medical = open_with_levels(path)
    assert medical is not None and medical.kind == "TIFF" and medical.bits_stored == 16
    shown = levels(image)
    assert shown[1, 0] == 0 and shown[1, -1] == 255 and shown[0, 0] == 117  # 30000 * 255 / 65535 = 116.7
    assert levels(medical.render(Window(30000.5, 1001)))[0, 0] == 128


def test_ordinary_8_bit_images_have_no_levels(tmp_path):
    path = tmp_path / "rgb.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(path)
    assert open_with_levels(path)[1] is None


# -- identifiers ------------------------------------------------------------------------------------
def test_identifiers_are_kept_apart_for_display(tmp_path):
    medical = read_dicom(write_dicom(tmp_path / "id.dcm", ramp(0, 255, np.uint8)))
    assert medical.identifiers["PatientName"] == "Doe^Jane" and medical.identifiers["PatientID"] == "PID-4711"
    assert not any(secret in repr(medical) for secret in SECRETS)
    assert not any(secret in medical.describe() for secret in SECRETS)


def test_deidentify_writes_a_copy_without_identifiers(capsys, tmp_path):
    source = write_dicom(tmp_path / "Doe_Jane.dcm", ramp(0, 4095, np.uint16), bits=12, BurnedInAnnotation="YES",
                         PatientAddress="1 Main St", PatientSex="F")
    ds = pydicom.dcmread(source)
    nested = Dataset()
    nested.PatientName, nested.ReferencedSOPInstanceUID = "Doe^Jane", generate_uid()
    ds.ReferencedImageSequence = [nested]
    ds.save_as(source)
    before = hashlib.sha256(source.read_bytes()).hexdigest()
    target = tmp_path / "clean.dcm"
    outcome = run_cli(capsys, "dicom", "deidentify", source, target)
    assert outcome.code == 0, outcome.err
    assert "burned-in" in outcome.out and "Doe" not in outcome.out
    assert hashlib.sha256(source.read_bytes()).hexdigest() == before  # the original is left as it was
    raw = target.read_bytes()
    assert not [s for s in [*SECRETS, "1 Main St", "ACME"] if s.encode() in raw]
    clean = pydicom.dcmread(target)
    assert clean.PatientIdentityRemoved == "YES" and clean.PatientName == "" and "PatientAddress" not in clean
    assert "InstitutionName" not in clean and not any(element.tag.is_private for element in clean)
    assert clean.StudyInstanceUID != ds.StudyInstanceUID and clean.file_meta.MediaStorageSOPInstanceUID == \
        clean.SOPInstanceUID != ds.SOPInstanceUID
    assert (read_dicom(target).values == read_dicom(source).values).all()  # the image is the same


def test_dicom_info_leaves_identifiers_out_unless_asked(capsys, tmp_path):
    path = write_dicom(tmp_path / "ct.dcm", ramp(0, 4095, np.int16), bits=16, PixelSpacing=["0.7", "0.7"],
                       WindowCenter="40", WindowWidth="400")
    plain = run_cli(capsys, "dicom", "info", path)
    assert plain.code == 0 and "pixel 0.7 \u00d7 0.7 mm" in plain.out and "centre 40, width 400" in plain.out
    assert not any(secret in plain.out + plain.err for secret in SECRETS)
    shown = run_cli(capsys, "dicom", "info", path, "--identifiers")
    assert "Patient Doe^Jane" in shown.out and "ID PID-4711" in shown.out


def test_explain_on_a_dicom_file_records_only_its_base_name(capsys, tmp_path):
    folder = tmp_path / "Doe_Jane_PID-4711"
    folder.mkdir()
    path = write_dicom(folder / "scan.dcm", ramp(0, 4095, np.uint16), bits=12)
    out = tmp_path / "run"
    outcome = run_cli(capsys, "explain", "--method", "raw_attention", "--image", path, "--prompt",
                      "describe the image.", "--max-new-tokens", "3", "--device", "cpu", "--out", out)
    assert outcome.code == 0, outcome.err
    record = json.loads((out / "run.json").read_text())
    assert record["image"]["name"] == "scan.dcm" and "path" not in record["image"]
    written = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())
    assert b"scan.dcm" in written
    assert not [s for s in [*SECRETS, folder.name] if s.encode() in written]


# -- hostile files ----------------------------------------------------------------------------------
@pytest.mark.hostile("images")
def test_a_truncated_dicom_file_is_one_clear_line(capsys, tmp_path):
    path = write_dicom(tmp_path / "cut.dcm", ramp(0, 4095, np.uint16), bits=12)
    path.write_bytes(path.read_bytes()[: -SIDE * SIDE])  # half the pixel data is gone
    with pytest.raises(InputError, match="cut short or damaged"):
        open_image(path)
    assert_refused(run_cli(capsys, "dicom", "info", path), 2, "cut.dcm", "damaged")


@pytest.mark.hostile("images")
def test_a_dicom_file_without_pixel_data_is_one_clear_line(capsys, tmp_path):
    path = write_dicom(tmp_path / "report.dcm", ramp(0, 255, np.uint8))
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    with pytest.raises(InputError, match="without an image"):
        open_image(path)
    line = assert_refused(run_cli(capsys, "dicom", "info", path), 2, "report.dcm", "no pixel data")
    assert not any(secret in line for secret in SECRETS)


@pytest.mark.hostile("images")
def test_a_text_file_named_dcm_is_one_clear_line(capsys, tmp_path):
    path = tmp_path / "notes.dcm"
    path.write_text("Patient Doe^Jane, follow-up in two weeks.\n" * 20)
    with pytest.raises(InputError, match="not a DICOM file"):
        open_image(path)
    assert_refused(run_cli(capsys, "dicom", "deidentify", path, tmp_path / "out.dcm"), 2, "notes.dcm", "not a DICOM")
    assert not (tmp_path / "out.dcm").exists()


@pytest.mark.hostile("images")
def test_deidentify_refuses_to_write_over_its_input(capsys, tmp_path):
    path = write_dicom(tmp_path / "scan.dcm", ramp(0, 255, np.uint8))
    before = path.read_bytes()
    assert_refused(run_cli(capsys, "dicom", "deidentify", path, path), 2, "lose the original")
    assert path.read_bytes() == before


@pytest.mark.hostile("images")
def test_deidentify_refuses_a_file_whose_damaged_length_hides_a_name(capsys, tmp_path):
    """A wrong length makes one element swallow the next ones, the patient's name among them: no list
    of identifiers finds it there, so the file is refused and nothing is written."""
    path = write_dicom(tmp_path / "swallowed.dcm", ramp(0, 255, np.uint8))
    data = bytearray(path.read_bytes())
    header = data.index(b"\x08\x00\x16\x00UI")  # SOP Class UID: tag, VR, 2-byte length
    name = data.index(b"\x10\x00\x10\x00PN")  # Patient Name
    data[header + 6: header + 8] = (name + 16 - (header + 8)).to_bytes(2, "little")
    path.write_bytes(bytes(data))
    target = tmp_path / "out.dcm"
    line = assert_refused(run_cli(capsys, "dicom", "deidentify", path, target), 2, "damaged", "nothing was written")
    assert not target.exists() and "Doe" not in line


# -- the app ----------------------------------------------------------------------------------------
def pdf_text(path: Path) -> bytes:
    """A PDF's raw bytes plus the text of its (inflated) content streams: each text object's strings
    joined, since a PDF writer splits a line into kerned pieces."""
    data = path.read_bytes()
    parts = [data]
    for match in re.finditer(rb"stream\r?\n", data):
        body = data[match.end(): data.find(b"endstream", match.end())]
        try:
            content = zlib.decompress(body)
        except zlib.error:
            continue
        for block in re.findall(rb"BT(.*?)ET", content, re.S):
            parts.append(b"".join(re.findall(rb"\(((?:[^()\\]|\\.)*)\)", block, re.S)))
    return b"\n".join(parts)


def test_the_app_shows_a_dicom_window_and_keeps_identifiers_out_of_what_it_saves(qtbot, make_window, dialogs,
                                                                                tmp_path):
    pytest.importorskip("PySide6")
    from gui_helpers import JOB_TIMEOUT_MS, ask, wait_idle

    from lvlm_studio.core.plugin.registry import create_registry

    raw = ramp(0, 2000, np.int16)
    raw[0, 0] = 1064  # 40 HU
    stack = np.stack([raw, raw + 100])
    path = write_dicom(tmp_path / "scan.dcm", stack, frames=2, RescaleIntercept="-1024", WindowCenter="40",
                       WindowWidth="400", PixelSpacing=["0.5", "0.5"], Modality="CT")
    window = make_window(create_registry())
    window.toggle_panel("overlay", True)
    window.open_image(path)
    wait_idle(qtbot, window)
    assert dialogs == [] and window.state.medical is not None
    box = window.window_level
    assert box.isVisible() and box.frame_box.isVisible() and box.frame_box.suffix() == " of 2"
    assert (box.centre_box.value(), box.width_box.value()) == (40, 400)
    info = box.info_label.text()
    assert "frame 1 of 2" in info and "pixel 0.5 \u00d7 0.5 mm" in info and "window: the file" in info
    assert "Doe^Jane" in box.patient_label.text() and "Doe" not in info + window.image_label.text()
    model_input = window.state.image
    assert np.asarray(window.state.shown_image)[0, 0, 0] == 128

    box.width_box.setValue(4000)  # the viewer's window: 40 HU is no longer mid-grey
    box.centre_box.setValue(1000)
    shown = np.asarray(window.state.shown_image)
    assert shown[0, 0, 0] == round(((40 - 999.5) / 3999 + 0.5) * 255) and "window: yours" in box.info_label.text()
    assert window.state.image is model_input  # the model's image is unchanged
    overlay = window.contexts["overlay"]
    assert overlay.shown_image is window.state.shown_image
    window.grab().save(str(tmp_path / "dicom_window.png"))
    box.reset_button.click()
    assert window.state.window is None and box.centre_box.value() == 40

    ask(qtbot, window)
    session = window.save_session(tmp_path / "review.lvlm")
    window.export_report(tmp_path / "review.pdf")
    wait_idle(qtbot, window)
    qtbot.waitUntil(lambda: (tmp_path / "review.pdf").exists(), timeout=JOB_TIMEOUT_MS)
    with zipfile.ZipFile(session) as archive:
        saved = b"".join(archive.read(name) for name in archive.namelist())
    report = pdf_text(tmp_path / "review.pdf")
    assert b"scan.dcm" in saved and b"scan.dcm" in report  # the search would find a name
    assert not [s for s in SECRETS if s.encode() in saved or s.encode() in report]

    box.frame_box.setValue(2)  # another frame is another image
    wait_idle(qtbot, window)
    assert window.state.medical.frame == 1 and window.state.trace is None
    assert window.state.medical.values[0, 0] == 140


def _dicom_seeds() -> list[bytes]:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        made = [write_dicom(folder / "a.dcm", ramp(0, 4095, np.uint16, 16), bits=12, WindowCenter="2048",
                            WindowWidth="4096", PixelSpacing=["0.5", "0.5"]),
                write_dicom(folder / "b.dcm", np.stack([ramp(0, 200, np.int16, 16)] * 2), frames=2,
                            RescaleIntercept="-1024", photometric="MONOCHROME1"),
                write_dicom(folder / "c.dcm", np.zeros((16, 16, 3), np.uint8), bits=8, photometric="RGB")]
        return [path.read_bytes() for path in made]


@pytest.mark.hostile("images")
def test_damaged_dicom_files_open_or_are_refused():
    """Cut short or with bytes overwritten, a DICOM file opens as RGB or is one InputError; no warning."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    seeds = _dicom_seeds()

    @st.composite
    def damaged(draw) -> bytes:
        data = bytearray(draw(st.sampled_from(seeds)))
        for _ in range(draw(st.integers(0, 8))):
            data[draw(st.integers(128, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data[: draw(st.integers(0, len(data)))])

    @settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(data=damaged())
    def check(data):
        assert_rgb_or_input_error(data, ".dcm")

    check()
