"""What the DICOM reader (``ctgen.dicom``) and writer (``ctgen.dicom_write``) share; imports neither."""

from __future__ import annotations

CT_SOP = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
SC_SOP = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage


def one_line(exc: BaseException) -> str:
    """An exception as one line of at most 300 characters, for error messages."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."
