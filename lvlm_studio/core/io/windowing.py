"""Grey levels for people: a window (centre and width) or a lookup table turns measured values into 8 bits.

A DICOM file or a 12- or 16-bit PNG or TIFF holds more levels than a screen or a model's 8-bit input
shows. A window picks the range of values that is spread over black to white; values below it are
black, above it white. The three window functions are those of DICOM (PS3.3 C.11.2.1.2 and
C.11.2.1.3): LINEAR (the classic formula, with its half-level offsets), LINEAR_EXACT and SIGMOID.
A VOI lookup table maps each value to an output level directly.

``MedicalImage`` keeps an image's values beside its default window, so that a viewer can change the
window and draw again, while the model is given the default rendering. No Qt, no pydicom here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

WINDOW_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")
#: The share of values below and above a window taken from the data (percent): a few hot or dead
#: pixels, or the air around a body, do not decide the contrast.
PERCENTILES = (0.5, 99.5)
#: At most this many values are looked at to find the percentiles (a stride over bigger images).
PERCENTILE_SAMPLE = 1 << 22


@dataclass(frozen=True)
class Window:
    """``centre`` and ``width`` in the image's values (for DICOM: after rescale slope and intercept);
    ``function`` one of ``WINDOW_FUNCTIONS``; ``source`` says where the window came from (shown to
    the user: "the file", "0.5-99.5 percentiles", "16-bit range", "viewer")."""

    centre: float
    width: float
    function: str = "LINEAR"
    source: str = ""

    def bounds(self) -> tuple[float, float]:
        """The values that become black and white (for SIGMOID: those at about 12% and 88%)."""
        if self.function == "LINEAR":
            half = (self.width - 1) / 2
            return self.centre - 0.5 - half, self.centre - 0.5 + half
        return self.centre - self.width / 2, self.centre + self.width / 2


@dataclass(frozen=True, eq=False)
class VoiLut:
    """A VOI lookup table: value ``first`` maps to ``table[0]``, ``first + 1`` to ``table[1]`` and so
    on; values outside it take the first or last entry. ``top`` is the largest output the table's
    bits allow (white)."""

    first: float
    table: np.ndarray
    top: float
    explanation: str = ""

    def bounds(self) -> tuple[float, float]:
        """The values the table covers."""
        return self.first, self.first + len(self.table) - 1


def range_window(low: float, high: float, exact: bool = False, source: str = "") -> Window:
    """The window that spreads ``low``..``high`` over black..white. LINEAR (whole-number data: the
    centre and width DICOM would write) unless ``exact`` (LINEAR_EXACT, for fractional values whose
    range may be narrower than one)."""
    if exact:
        width = high - low if high > low else max(abs(low) * 1e-6, 1e-12)
        return Window((low + high) / 2, width, "LINEAR_EXACT", source)
    return Window((low + high) / 2 + 0.5, max(high - low, 0.0) + 1, "LINEAR", source)


def percentile_window(values: np.ndarray, exact: bool = False) -> Window:
    """A window from the data: its 0.5th to 99.5th percentile (finite values only; all black when
    there are none). For images whose file says nothing about how to show them."""
    flat = values.reshape(-1)
    if flat.size > PERCENTILE_SAMPLE:
        flat = flat[:: flat.size // PERCENTILE_SAMPLE + 1]
    finite = flat[np.isfinite(flat)]
    if finite.size == 0:
        return range_window(0.0, 0.0, exact, "no finite values")
    low, high = (float(v) for v in np.percentile(finite, PERCENTILES))
    return range_window(low, high, exact, f"{PERCENTILES[0]:g}-{PERCENTILES[1]:g} percentiles")


def apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """8-bit levels (uint8, same shape) of ``values`` in ``window``. NaN shows black, +inf white."""
    x = values.astype(np.float64, copy=False)
    c, w = float(window.centre), float(window.width)
    if window.function == "SIGMOID":
        w = w if w > 0 else 1e-12
        with np.errstate(over="ignore"):
            y = 255.0 / (1.0 + np.exp(-4.0 * (x - c) / w))
    elif window.function == "LINEAR_EXACT":
        w = w if w > 0 else 1e-12
        y = ((x - c) / w + 0.5) * 255.0
    else:  # LINEAR: PS3.3 C.11.2.1.2.1; a width of one (or less) is a threshold at c - 0.5
        if w <= 1:
            y = np.where(x > c - 0.5, 255.0, 0.0)
        else:
            with np.errstate(invalid="ignore"):
                y = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255.0
    y = np.where(np.isnan(x), 0.0, y)
    return np.clip(np.rint(np.nan_to_num(y, nan=0.0, posinf=255.0, neginf=0.0)), 0, 255).astype(np.uint8)


def apply_lut(values: np.ndarray, lut: VoiLut) -> np.ndarray:
    """8-bit levels of ``values`` looked up in ``lut`` (values outside the table take its ends)."""
    index = np.nan_to_num(values.astype(np.float64, copy=False) - lut.first, nan=0.0, posinf=len(lut.table),
                          neginf=0.0)
    index = np.clip(np.rint(index), 0, len(lut.table) - 1).astype(np.intp)
    levels = lut.table.astype(np.float64)[index] * (255.0 / lut.top if lut.top > 0 else 0.0)
    return np.clip(np.rint(levels), 0, 255).astype(np.uint8)


def to_rgb_image(levels: np.ndarray) -> Image.Image:
    """An RGB image of 8-bit grey (rows, cols) or colour (rows, cols, 3) levels."""
    if levels.ndim == 2:
        return Image.fromarray(levels, mode="L").convert("RGB")
    return Image.fromarray(np.ascontiguousarray(levels), mode="RGB")


@dataclass(eq=False)
class MedicalImage:
    """An image with more levels than 8 bits show: a DICOM file's frame, or a 12- or 16-bit (or float)
    PNG or TIFF, with how to show it.

    ``values`` are float32, (rows, cols) grey or (rows, cols, 3) colour; for DICOM they are modality
    values (rescale slope and intercept applied: Hounsfield units for CT). ``window`` is the default
    window (where a viewer's controls start); ``lut`` the file's VOI lookup table, drawn instead of
    ``window`` by default when there is one (``window`` is then the file's centre and width, if it
    also has them, else the table's range).
    ``invert`` (MONOCHROME1): the lowest values show white. ``pixel_spacing`` is (row, column) in mm,
    ``spacing_source`` the element it came from. ``identifiers`` holds the patient's identifiers for
    display only: they are never written anywhere (not in sessions, reports, logs or repr).
    """

    values: np.ndarray
    window: Window
    lut: VoiLut | None = None
    invert: bool = False
    kind: str = "DICOM"
    photometric: str = "MONOCHROME2"
    bits_stored: int = 16
    signed: bool = False
    frame: int = 0
    frames: int = 1
    pixel_spacing: tuple[float, float] | None = None
    spacing_source: str = ""
    transfer_syntax: str = ""
    modality: str = ""
    identifiers: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def colour(self) -> bool:
        return self.values.ndim == 3

    @property
    def whole_numbers(self) -> bool:
        """Whether every value is a whole number (a viewer's window then moves in steps of one)."""
        finite = self.values[np.isfinite(self.values)]
        return bool(np.all(finite == np.round(finite)))

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) in pixels, as PIL gives it."""
        return self.values.shape[1], self.values.shape[0]

    def render(self, window: Window | None = None) -> Image.Image:
        """The RGB image shown in ``window`` (None: the default: the file's lookup table, else its window)."""
        if window is None and self.lut is not None:
            levels = apply_lut(self.values, self.lut)
        else:
            levels = apply_window(self.values, window or self.window)
        if self.invert:
            levels = 255 - levels
        return to_rgb_image(levels)

    def with_window(self, centre: float, width: float) -> Window:
        """A window chosen in a viewer, drawn with the default window's function."""
        return dataclasses.replace(self.window, centre=float(centre), width=float(width), source="viewer")

    def describe(self) -> str:
        """One line for the image's information (no identifiers): frame, depth, interpretation, spacing."""
        parts = [f"{self.kind} {self.modality}".strip()]
        if self.frames > 1:
            parts.append(f"frame {self.frame + 1} of {self.frames}")
        parts.append(f"{self.bits_stored}-bit{' signed' if self.signed else ''} {self.photometric}")
        if self.pixel_spacing is not None:
            row, column = self.pixel_spacing
            where = " at the detector" if self.spacing_source == "ImagerPixelSpacing" else ""
            parts.append(f"pixel {column:.3g} \u00d7 {row:.3g} mm{where}")
        elif self.kind == "DICOM":
            parts.append("pixel spacing not given")
        return " \u00b7 ".join(parts)
