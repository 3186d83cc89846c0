"""Reading and writing files safely: atomic writes and output-folder checks, images opened as RGB, run
records, and which image metadata identifies a patient (identifiers)."""
