"""What a model file really is, from its first bytes: a suffix can lie (an ONNX graph saved as ``.pth``)."""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

TORCH_CHECKPOINT, ONNX_GRAPH, OPENVINO_IR, TORCH_PACKAGE = "torch checkpoint", "ONNX graph", "OpenVINO IR", "torch .pt2 package"
IMAGE, TEXT, EMPTY, FOLDER, UNKNOWN = "image file", "text file", "empty file", "folder", "unknown"

# Tags of the ModelProto fields that follow ir_version in a serialized ONNX model (producer_name, producer_version,
# domain, model_version, doc_string, graph, opset_import, metadata_props): protobuf writes fields in number order.
ONNX_SECOND_FIELDS = frozenset({0x12, 0x1A, 0x22, 0x28, 0x32, 0x3A, 0x42, 0x72})
IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8\xff", b"GIF8", b"BM", b"II*\x00", b"MM\x00*", b"RIFF")


def a(kind: str) -> str:
    """The kind with its article, for messages: "an ONNX graph", "a torch checkpoint"."""
    return f"{'an' if kind[0].lower() in 'aeiou' or kind.startswith('ONNX') else 'a'} {kind}"


def detect(path: str | os.PathLike) -> str:
    """One of the names above. Only the first bytes are read (and a zip's table of contents)."""
    path = Path(path)
    if path.is_dir():
        return FOLDER
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        return EMPTY
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile:
            return UNKNOWN
        if any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
            return TORCH_CHECKPOINT
        return TORCH_PACKAGE if any(n.endswith("archive_format") for n in names) else UNKNOWN
    if head[0] == 0x80 and len(head) > 1 and head[1] <= 5:  # a pickle (torch's legacy, non-zip format)
        return TORCH_CHECKPOINT
    if head[0] == 0x08 and len(head) > 2 and 3 <= head[1] <= 30 and head[2] in ONNX_SECOND_FIELDS:
        return ONNX_GRAPH  # protobuf field 1 (ir_version, a small varint), then another ModelProto field
    if head.lstrip().startswith(b"<?xml") and b"<net " in head:
        return OPENVINO_IR
    if head.startswith(IMAGE_MAGIC):
        return IMAGE
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return UNKNOWN
    return UNKNOWN if b"\x00" in head else TEXT
