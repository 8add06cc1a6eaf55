"""A run directory's files, each verified before it is used.

Every file the runner writes records what it is: JSON files carry the
sha256 of their content; array files (`.npz`) carry, in a `__meta__` entry,
the run's identity, what the file holds (a chunk's group and rows, a
checkpoint's step) and the sha256 of every array. A reader checks all of it
and raises `Damaged` naming the file and what is wrong, so nothing damaged,
truncated, swapped or left by another run is ever read as this run's data.
Writes are atomic (`dynamics.io`).
"""

from __future__ import annotations

import hashlib
import json
import os
import zipfile

import numpy as np

from dynamics import io

FORMAT = 2


class Damaged(Exception):
  """A file that cannot be trusted: `path`, and `why` in a few words."""

  def __init__(self, path: str, why: str):
    super().__init__(f"{path}: {why}")
    self.path, self.why = path, why


def sha256(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def file_sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def code_digest(files: list[str]) -> dict:
  """`{"sha256": ..., "files": {path: sha256}}` of the source files a run
  depends on (the package's paths relative to the folder that holds it,
  others absolute)."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  name = lambda f: os.path.relpath(f, root) if f.startswith(root + os.sep) else f
  shas = {name(f): file_sha256(f) for f in files}
  return {"sha256": sha256(json.dumps(shas, sort_keys=True).encode()), "files": shas}


def write_json(path: str, obj: dict) -> None:
  """`obj` with a `sha256` entry over the rest of it."""
  body = io.strict(obj)
  body.pop("sha256", None)
  body["sha256"] = sha256(json.dumps(body, sort_keys=True).encode())
  io.write_json(path, body)


def read_json(path: str) -> dict:
  """A file `write_json` wrote; `Damaged` if it is not."""
  try:
    with open(path, "rb") as f:
      body = json.loads(f.read().decode())
  except (OSError, UnicodeDecodeError, ValueError) as e:
    raise Damaged(path, f"unreadable ({type(e).__name__})") from None
  if not isinstance(body, dict) or "sha256" not in body:
    raise Damaged(path, "no checksum (not written by this runner, or emptied)")
  want = body.pop("sha256")
  if sha256(json.dumps(body, sort_keys=True).encode()) != want:
    raise Damaged(path, "checksum mismatch (edited or damaged)")
  return body


def _digest(arrays: dict) -> str:
  h = hashlib.sha256()
  for k in sorted(arrays):
    a = np.ascontiguousarray(arrays[k])
    h.update(f"{k}|{a.dtype.str}|{a.shape}|".encode())
    h.update(a.tobytes())
  return h.hexdigest()


def write_arrays(path: str, arrays: dict, meta: dict) -> None:
  """`arrays` (name -> numpy) and `meta` (JSON) as one `.npz`, with the
  arrays' sha256 in the meta."""
  arrays = {k: np.asarray(v) for k, v in arrays.items()}
  meta = {**io.strict(meta), "sha256": _digest(arrays)}
  blob = np.frombuffer(json.dumps(meta, sort_keys=True).encode(), np.uint8)
  io.write_npz(path, {**arrays, "__meta__": blob})


def read_arrays(path: str, expect: dict | None = None) -> tuple[dict, dict]:
  """`(arrays, meta)` of a file `write_arrays` wrote, checked: readable,
  arrays matching their checksum, and every `expect` entry equal in the meta
  (the run's identity, the chunk's rows). `Damaged` otherwise."""
  try:
    with np.load(path, allow_pickle=False) as z:
      arrays = {k: z[k] for k in z.files}
  except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
    raise Damaged(path, f"unreadable ({type(e).__name__}: {e})") from None
  if "__meta__" not in arrays:
    raise Damaged(path, "no metadata (not written by this runner)")
  try:
    meta = json.loads(arrays.pop("__meta__").tobytes().decode())
  except (UnicodeDecodeError, ValueError):
    raise Damaged(path, "unreadable metadata") from None
  if _digest(arrays) != meta.get("sha256"):
    raise Damaged(path, "checksum mismatch")
  for k, v in (expect or {}).items():
    if meta.get(k) != io.strict(v):
      raise Damaged(path, f"holds {k} {meta.get(k)!r}, not {io.strict(v)!r} (another "
                    "run's or another chunk's file)")
  return arrays, meta


def set_aside(path: str) -> str:
  """Renames a damaged file (or folder) to `<path>.damaged[-N]`, keeping it
  for inspection; returns the new name."""
  new, n = path + ".damaged", 1
  while os.path.exists(new):
    n += 1
    new = f"{path}.damaged-{n}"
  os.replace(path, new)
  return new


def _name(path) -> str:
  parts = []
  for k in path:
    for attr in ("key", "idx", "name"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


def flatten(tree, prefix: str) -> dict:
  """A pytree's leaves as `{prefix/<path>: array}` (`start/x`,
  `state/params/0/W`), numpy."""
  import jax
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {f"{prefix}/{_name(p)}" if p else prefix: np.asarray(x) for p, x in leaves}


def unflatten(arrays: dict, prefix: str, like):
  """The inverse of `flatten`, shaped like the pytree `like` (a KeyError or
  ValueError when the arrays do not fit it)."""
  import jax
  leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
  got = [arrays[f"{prefix}/{_name(p)}" if p else prefix] for p, _ in leaves]
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(like), got)
