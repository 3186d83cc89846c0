"""``lvlm-studio dicom info|deidentify``: what a DICOM file holds, and a copy without the patient's identifiers."""

from __future__ import annotations

import argparse

from lvlm_studio.core.io.files import check_output_file


def add_parsers(sub: argparse._SubParsersAction) -> None:
    dicom = sub.add_parser("dicom", help="DICOM files: their image information, and de-identified copies")
    dicom_sub = dicom.add_subparsers(dest="dicom_command", metavar="WHAT", required=True)
    info = dicom_sub.add_parser("info", help="frames, depth, interpretation, pixel spacing and window of a DICOM file")
    info.add_argument("file", help="a DICOM file")
    info.add_argument("--frame", type=int, default=1, help="the frame to describe, from 1 (default 1)")
    info.add_argument("--identifiers", action="store_true",
                      help="also print the patient's identifiers (left out unless asked for)")
    info.set_defaults(func=cmd_info)
    clean = dicom_sub.add_parser(
        "deidentify", help="write a copy without the patient's identifiers and private elements",
        description="Write a copy of IN to OUT with the patient's identifiers removed or blanked, private "
                    "elements removed, the study, series and instance UIDs replaced and PatientIdentityRemoved "
                    "YES. Text burned into the pixels is not removed.")
    clean.add_argument("source", metavar="IN", help="the DICOM file to de-identify (left unchanged)")
    clean.add_argument("target", metavar="OUT", help="the de-identified copy to write")
    clean.set_defaults(func=cmd_deidentify)


def cmd_info(args: argparse.Namespace) -> int:
    from lvlm_studio.core.io.dicom import read_dicom
    from lvlm_studio.core.io.identifiers import shown_identifiers

    medical = read_dicom(args.file, args.frame - 1)
    window = medical.window
    print(medical.describe())
    print(f"{medical.size[0]} x {medical.size[1]} px, {medical.transfer_syntax}")
    lut = f"; drawn with the file's VOI LUT {medical.lut.explanation}".rstrip() if medical.lut is not None else ""
    print(f"window: centre {window.centre:g}, width {window.width:g} ({window.function}, from {window.source}){lut}")
    if args.identifiers:
        print(shown_identifiers(medical.identifiers) or "no patient identifiers")
    return 0


def cmd_deidentify(args: argparse.Namespace) -> int:
    from lvlm_studio.core.io.dicom import write_deidentified

    target = check_output_file(args.target)
    for note in write_deidentified(args.source, target):
        print(f"note: {note}")
    print(f"wrote {target.name} (de-identified)")
    return 0
