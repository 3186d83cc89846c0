"""Reading and writing files safely: atomic writes and output-folder checks, images opened as RGB
(DICOM and more-than-8-bit images through a grey-level window), run records, and which image
metadata identifies a patient (identifiers)."""
