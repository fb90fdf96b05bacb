"""Load a saved encoder in a fresh Python process: which heavy libraries it imported, and the vector it gives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "sentence_transformers", "transformers", "onnxruntime")


def encode_in_fresh_process(directory: Path, text: str) -> tuple[list[str], np.ndarray]:
    """(heavy modules imported by ``load_encoder(directory)`` + one ``encode``, the vector of ``text``)."""
    code = (
        "import sys, json\n"
        "from router.encoders import load_encoder\n"
        f"enc = load_encoder({str(directory)!r})\n"
        f"v = enc.encode([{text!r}])\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print(json.dumps({'heavy': heavy, 'v': v[0].tolist()}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    return out["heavy"], np.array(out["v"], dtype=np.float32)
