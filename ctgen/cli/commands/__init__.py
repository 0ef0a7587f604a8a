"""The CLI's commands, one module each. Modules import only Typer at the top (``ctgen --help`` must stay
fast); numpy, ONNX Runtime and pydicom are imported inside the command bodies."""
