"""The model: model folders and ONNX Runtime sessions (``model``, ``ort_session``), the typed model card (``card``),
the graph checks (``onnx_graph``), the fitted sampling prior (``prior``) and the native stderr guard."""
