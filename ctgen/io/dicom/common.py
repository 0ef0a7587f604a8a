"""What the DICOM reader (``ctgen.io.dicom.read``) and writer (``ctgen.io.dicom.write``) share; imports neither."""

from __future__ import annotations

import hashlib

CT_SOP = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
SC_SOP = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage (.7.1-.7.4: its multi-frame kinds)
# the modality a file without a Modality value has, by its SOP class: CT, enhanced CT, legacy converted CT; MR
MODALITY_BY_SOP = {CT_SOP: "CT", CT_SOP + ".1": "CT", CT_SOP + ".2": "CT",
                   "1.2.840.10008.5.1.4.1.1.4": "MR", "1.2.840.10008.5.1.4.1.1.4.1": "MR"}


def one_line(exc: BaseException) -> str:
    """An exception as one line of at most 300 characters, for error messages."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def patient_key(patient_id: str, fallback: str = "") -> str:
    """The patient key of training splits and evaluation: 16 hex digits of sha256 of the PatientID, or of
    ``fallback`` (series UID or folder) when the ID is empty. Keys never reveal the ID itself."""
    text = f"id:{patient_id}" if patient_id else f"anon:{fallback}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]
