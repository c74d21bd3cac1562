"""Integrity at load: every artifact the toolkit writes records a content hash of its payload, and every loader
checks it before the artifact runs, so a corrupt file is refused (``BadArtifactError``, exit 2, the file named)
instead of giving a wrong image.

One rule, one error, per carrier of the hash:

- ONNX graph: metadata ``payload_sha256`` = sha256 of the serialized ``GraphProto`` (nodes, initializers, I/O:
  everything that computes; the metadata itself is outside it). ``seal_onnx`` / ``check_onnx``.
- OpenVINO IR (.xml + .bin): ``rt_info`` ``codeenhance/payload_sha256`` = sha256 of the .bin and of the .xml as
  written with this field still holding ``PLACEHOLDER``. ``PLACEHOLDER`` is set before saving and the real value
  written into the .xml afterwards (``seal_ir``); ``check_ir`` puts the placeholder back to recompute it.
- Zip packages (AOTInductor ``.pt2``): the zip's own CRC-32 of every member, plus ``<prefix>extra/PAYLOAD_NAME``
  holding the sha256 over the name and bytes of every member but itself and the readable facts file (checked on
  their own: ``contract.aoti_package``), appended after the package is written (``seal_zip`` / ``check_zip``).
- TensorRT engines: the sidecar records the engine's sha256 (``contract.engine_sidecar.check_engine_bytes``).
- Caches the toolkit keeps for a backend (OpenVINO compiled blobs): a manifest of file hashes; a file that does
  not match is deleted and rebuilt (``CacheManifest``).
- Folder artifacts (a Triton repository): ``contract.files.ManagedFolder``'s manifest of the files written and
  their sha256 (``changed()``).

Artifacts without a recorded hash (made by another tool, or by an older toolkit) are not refused for that: the
check is what we can prove, and the loaders say "unverified" where they report.

Whether an artifact is the right one (made from this checkpoint, for this machine) is ``contract.provenance``'s.
"""
from __future__ import annotations

import hashlib
import json
import re
import zipfile
from pathlib import Path

from .errors import BadArtifactError
from .files import file_sha256, update_digest, write_bytes_atomically

PAYLOAD_KEY = "payload_sha256"
PLACEHOLDER = "0" * 64
IR_SECTION = "codeenhance"  # the rt_info element of an OpenVINO IR that holds the toolkit's facts
PAYLOAD_NAME = "codeenhance_payload.sha256"  # the member a sealed zip package carries under extra/


def corrupt(path, what: str, fix: str) -> BadArtifactError:
    return BadArtifactError(f"{path} is corrupt: {what}; it was not used. {fix[0].upper()}{fix[1:]}.")


def check_recorded(recorded: str | None, actual: str, path, fix: str) -> bool:
    """False when nothing was recorded (unverified); True when it matches; BadArtifactError otherwise."""
    if recorded is None:
        return False
    if recorded != actual:
        raise corrupt(path, f"its content hash is {actual[:12]}... but it was written with {recorded[:12]}... "
                            "(changed on disk since it was written)", fix)
    return True


# --------------------------------------------------------------------------------------------------- ONNX


def onnx_payload_sha256(model) -> str:
    """sha256 of an ``onnx.ModelProto``'s graph, serialized deterministically (the metadata is outside it)."""
    return hashlib.sha256(model.graph.SerializeToString(deterministic=True)).hexdigest()


def seal_onnx(model) -> None:
    """Record the graph's payload hash in its metadata (in place); call it last, just before saving."""
    props = {p.key: p.value for p in model.metadata_props}
    props[PAYLOAD_KEY] = onnx_payload_sha256(model)
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def check_onnx(model, path, fix: str = "export it again") -> bool:
    """Check a loaded graph against its recorded payload hash; False when it records none (not ours, or older)."""
    recorded = {p.key: p.value for p in model.metadata_props}.get(PAYLOAD_KEY)
    if any(t.data_location == 1 for t in model.graph.initializer):  # TensorProto.EXTERNAL: weights not loaded
        return False
    return check_recorded(recorded, onnx_payload_sha256(model), path, fix)


def read_onnx(path, fix: str = "export it again"):
    """``onnx.load`` of ``path`` (external data included); BadArtifactError for a file onnx cannot parse."""
    import onnx
    from google.protobuf.message import DecodeError

    try:
        model = onnx.load(str(path))
    except (DecodeError, ValueError, OSError, RuntimeError) as e:
        raise corrupt(path, f"onnx cannot parse it ({type(e).__name__}: {str(e)[:200]})", fix) from None
    return model


# ------------------------------------------------------------------------------------------- OpenVINO IR


def ir_payload_sha256(xml_text: str, bin_path: Path) -> str:
    """sha256 of the .bin's bytes and of the .xml text with the recorded hash replaced by PLACEHOLDER."""
    digest = update_digest(hashlib.sha256(), bin_path)
    digest.update(xml_text.encode())
    return digest.hexdigest()


def _ir_field(text: str) -> re.Match | None:
    # rt_info is written as <payload_sha256 value="..." /> inside the model's <rt_info><codeenhance> element. Only
    # there: OpenVINO also copies an ONNX graph's metadata (its own payload_sha256 included) into rt_info.
    return re.search(rf'<{IR_SECTION}>(?:(?!</{IR_SECTION}>).)*?<{PAYLOAD_KEY} value="([0-9a-f]{{64}})"', text, re.DOTALL)


def seal_ir(xml: Path) -> str:
    """Write the payload hash into an IR saved with ``PLACEHOLDER`` in its ``payload_sha256`` rt_info field."""
    text = xml.read_text()
    field = _ir_field(text)
    if field is None or field.group(1) != PLACEHOLDER:
        raise BadArtifactError(f"{xml}: no {PAYLOAD_KEY} placeholder to seal (write it with the placeholder first)")
    sha = ir_payload_sha256(text, xml.with_suffix(".bin"))
    write_bytes_atomically(xml, (text[:field.start(1)] + sha + text[field.end(1):]).encode())
    return sha


def check_ir(xml: Path, fix: str) -> bool:
    """Check an IR's .xml and .bin against the hash it records; False for an IR that records none."""
    xml = Path(xml)
    try:
        text = xml.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise corrupt(xml, f"it cannot be read as XML text ({type(e).__name__})", fix) from None
    field = _ir_field(text)
    if field is None:
        return False
    bin_path = xml.with_suffix(".bin")
    if not bin_path.is_file():
        raise corrupt(xml, f"its weights file {bin_path.name} is missing", fix)
    actual = ir_payload_sha256(text[:field.start(1)] + PLACEHOLDER + text[field.end(1):], bin_path)
    return check_recorded(field.group(1), actual, xml, fix)


# ------------------------------------------------------------------------------------------- zip packages


def _zip_payload_sha256(archive: zipfile.ZipFile, facts: str) -> str:
    """Over every member but the hash itself and the readable facts (``extra/<facts>``, checked on their own)."""
    digest = hashlib.sha256()
    for info in sorted(archive.infolist(), key=lambda i: i.filename):
        if info.filename.endswith(("extra/" + PAYLOAD_NAME, "extra/" + facts)):
            continue
        digest.update(info.filename.encode() + b"\0")
        with archive.open(info) as member:
            for chunk in iter(lambda: member.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def seal_zip(path: Path, facts: str) -> str:
    """Append ``<prefix>extra/PAYLOAD_NAME`` with the hash of the payload to a finished zip package, beside its
    facts file ``<prefix>extra/<facts>``."""
    with zipfile.ZipFile(path, "a") as archive:
        anchor = next(n for n in archive.namelist() if n.endswith("extra/" + facts))
        sha = _zip_payload_sha256(archive, facts)
        archive.writestr(anchor[: -len(facts)] + PAYLOAD_NAME, sha + "\n")
    return sha


def check_zip(path: Path, facts: str, fix: str) -> bool:
    """Every member's CRC-32, then the recorded payload hash; False when the package records no hash."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
            if bad is not None:
                raise corrupt(path, f"member {bad} fails its CRC check", fix)
            recorded = [n for n in archive.namelist() if n.endswith("extra/" + PAYLOAD_NAME)]
            if not recorded:
                return False
            value = archive.read(recorded[0]).decode(errors="replace").strip()
            return check_recorded(value, _zip_payload_sha256(archive, facts), path, fix)
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise corrupt(path, f"it is not a readable zip package ({e})", fix) from None


# ------------------------------------------------------------------------------------------- caches


class CacheManifest:
    """sha256 of the files a library writes into a cache folder (e.g. OpenVINO's compiled blobs), kept in
    ``<folder>/MANIFEST``: ``verify()`` before the library reads the folder deletes every file that no longer
    matches (returning their names, so the caller can say they are rebuilt), ``record()`` after it wrote."""

    def __init__(self, folder: Path, pattern: str, name: str = "codeenhance-cache-manifest.json"):
        self.folder, self.pattern, self.path = Path(folder), pattern, Path(folder) / name

    def _read(self) -> dict:
        try:
            content = json.loads(self.path.read_text())
            return content if isinstance(content, dict) else {}
        except (OSError, ValueError):
            return {}

    def verify(self) -> list[str]:
        known, dropped = self._read(), []
        for path in sorted(self.folder.glob(self.pattern)):
            if known.get(path.name) != file_sha256(path):
                path.unlink(missing_ok=True)  # corrupt, or written by something we did not see: rebuilt on use
                dropped.append(path.name)
        return dropped

    def record(self) -> None:
        hashes = {p.name: file_sha256(p) for p in sorted(self.folder.glob(self.pattern))}
        write_bytes_atomically(self.path, json.dumps(hashes, indent=1).encode())
