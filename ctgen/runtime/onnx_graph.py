"""Just enough of the ONNX protobuf to check a graph before ONNX Runtime runs it: no ``onnx`` package needed.

``inspect_graph`` walks the model's wire format (nodes, tensors, inputs and outputs; weights are skipped,
not copied) and returns what the runtime checks against the card: the graph's inputs and outputs with
their element types and shapes, the operators used, whether anything holds a subgraph (control flow:
``Loop``, ``If``, ``Scan``) and whether any tensor keeps its data outside the file (external data, which
the card's checksums would not cover). The exporter writes neither.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ctgen.errors import ModelError

__all__ = ["CONTROL_FLOW_OPS", "ELEMENT_TYPES", "FLOAT", "GraphSummary", "inspect_graph"]

CONTROL_FLOW_OPS = frozenset({"Loop", "If", "Scan", "SequenceMap"})
MAX_GRAPH_BYTES = 2**31  # protobuf's own limit on one message
FLOAT = 1  # TensorProto.DataType.FLOAT
ELEMENT_TYPES = {1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64", 9: "bool", 10: "float16",
                 11: "float64", 16: "bfloat16"}
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL


@dataclass
class GraphSummary:
    """What ``inspect_graph`` found: ``inputs``/``outputs`` map names (in order) to (element type, dims);
    a dim is an int, a name (str) or None (unknown)."""

    inputs: dict[str, tuple[int, list[int | str | None]]] = field(default_factory=dict)
    outputs: dict[str, tuple[int, list[int | str | None]]] = field(default_factory=dict)
    op_types: set[str] = field(default_factory=set)
    subgraphs: bool = False
    external_tensors: list[str] = field(default_factory=list)


class _Malformed(Exception):
    pass


def inspect_graph(path: str | os.PathLike, data: bytes | None = None) -> GraphSummary:
    """Read ``path`` (or its bytes ``data``, already read) as an ONNX ModelProto; raises ModelError (naming the
    file) when it is not one."""
    path = Path(path)
    if data is None:
        from ctgen.io.regular_file import read_regular

        data = read_regular(path, MAX_GRAPH_BYTES, ModelError, missing="cannot be read (no such file)")
    if len(data) > MAX_GRAPH_BYTES:
        raise ModelError(path, "larger than an ONNX file can be (2 GiB)")
    summary = GraphSummary()
    try:
        graphs = 0
        for number, _, value in _fields(memoryview(data)):
            if number == 7:  # graph
                graphs += 1
                _graph(value, summary, top=True)
            elif number == 25:  # functions: their nodes run too
                for inner, _, item in _fields(_message(value)):
                    if inner == 7:
                        _node(item, summary)
        if graphs != 1:
            raise _Malformed("no graph" if graphs == 0 else "more than one graph")
    except _Malformed as exc:
        raise ModelError(path, f"not an ONNX model ({exc})") from None
    return summary


def _fields(data: memoryview):
    """(field number, wire type, value) of one message: ints for varints and fixed, memoryviews for the rest."""
    position, end = 0, len(data)
    while position < end:
        key, position = _varint(data, position)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _Malformed(f"field number 0 at byte {position}")
        if wire == _VARINT:
            value, position = _varint(data, position)
        elif wire == _LENGTH:
            length, position = _varint(data, position)
            if position + length > end:
                raise _Malformed(f"a field runs past the end at byte {position}")
            value, position = data[position : position + length], position + length
        elif wire in (_FIXED64, _FIXED32):
            size = 8 if wire == _FIXED64 else 4
            if position + size > end:
                raise _Malformed(f"a field runs past the end at byte {position}")
            value, position = int.from_bytes(data[position : position + size], "little"), position + size
        else:
            raise _Malformed(f"wire type {wire} at byte {position}")
        yield number, wire, value


def _varint(data: memoryview, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if position >= len(data) or shift > 63:
            raise _Malformed(f"bad varint at byte {position}")
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, position
        shift += 7


def _text(value) -> str:
    if not isinstance(value, memoryview):
        raise _Malformed("a string field is not length-delimited")
    return bytes(value).decode("utf-8", "replace")


def _message(value) -> memoryview:
    if not isinstance(value, memoryview):
        raise _Malformed("a message field is not length-delimited")
    return value


def _graph(data, summary: GraphSummary, *, top: bool) -> None:
    for number, _, value in _fields(_message(data)):
        if number == 1:  # node
            _node(value, summary)
        elif number == 5:  # initializer
            _tensor(value, summary)
        elif number == 15:  # sparse_initializer: values and indices are tensors
            for inner, _, item in _fields(_message(value)):
                if inner in (1, 2):
                    _tensor(item, summary)
        elif top and number in (11, 12):  # input, output
            name, kind = _value_info(value)
            (summary.inputs if number == 11 else summary.outputs)[name] = kind


def _node(data, summary: GraphSummary) -> None:
    for number, _, value in _fields(_message(data)):
        if number == 4:  # op_type
            summary.op_types.add(_text(value))
        elif number == 5:  # attribute
            for inner, _, item in _fields(_message(value)):
                if inner in (6, 11):  # g, graphs: a subgraph
                    summary.subgraphs = True
                elif inner in (5, 10):  # t, tensors
                    _tensor(item, summary)
                elif inner in (22, 23):  # sparse_tensor(s)
                    for part, _, tensor in _fields(_message(item)):
                        if part in (1, 2):
                            _tensor(tensor, summary)


def _tensor(data, summary: GraphSummary) -> None:
    name, external = "", False
    for number, _, value in _fields(_message(data)):
        if number == 8:
            name = _text(value)
        elif number == 13 or (number == 14 and value == _EXTERNAL):  # external_data, data_location
            external = True
    if external:
        summary.external_tensors.append(name)


def _value_info(data) -> tuple[str, tuple[int, list[int | str | None]]]:
    name, element, dims = "", 0, []
    for number, _, value in _fields(_message(data)):
        if number == 1:
            name = _text(value)
        elif number == 2:  # type
            for kind, _, tensor in _fields(_message(value)):
                if kind != 1:  # tensor_type; sequences, maps and optionals are not images
                    continue
                for part, _, item in _fields(_message(tensor)):
                    if part == 1:
                        element = item
                    elif part == 2:  # shape
                        dims = [_dim(dim) for entry, _, dim in _fields(_message(item)) if entry == 1]
    return name, (element, dims)


def _dim(data) -> int | str | None:
    for number, _, value in _fields(_message(data)):
        if number == 1:
            return value if value < 1 << 63 else value - (1 << 64)
        if number == 2:
            return _text(value)
    return None
