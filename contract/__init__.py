"""The torch-free bottom of the toolkit, used by ``codeenhance``, ``export``, ``runtime`` and ``benchmarks`` alike.

- ``contract.graph``: the exported graph's contract (input/output names, metadata keys, precisions, the accepted
  IFT weight range).
- ``contract.errors``: the one error base class and the exit-code convention of every command.
- ``contract.formats``: what a model file really is, from its first bytes.
- ``contract.images``: the one image reader and image suffix list.
- ``contract.files``: atomic writes and file hashes.

Nothing here imports torch, onnx or the other packages of this project.
"""
