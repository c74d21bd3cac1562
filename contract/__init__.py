"""The torch-free bottom of the toolkit, used by ``codeenhance``, ``export``, ``runtime`` and ``benchmarks`` alike.

- ``contract.graph``: the model contract (input/output names, dtypes, layouts and dynamic axes, the pad multiple and
  minimum size, the precision vocabulary, the IFT weight rule, and ``check_io``, the one check of an
  artifact's I/O that every backend and exporter calls).
- ``contract.errors``: the one error base class and the exit-code convention of every command.
- ``contract.formats``: what a model file really is, from its first bytes.
- ``contract.images``: the one image reader and image suffix list.
- ``contract.files``: atomic writes and file hashes.
- ``contract.integrity`` and ``contract.provenance``: the payload hash every artifact records, and the one
  provenance record (where it comes from, what it runs on) with its one staleness check.

Nothing here imports torch, onnx or the other packages of this project.
"""
