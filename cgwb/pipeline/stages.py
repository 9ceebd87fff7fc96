"""Resumable stages: each stage writes its outputs into the run folder and is skipped on a re-run when its
outputs exist and the fingerprint of its inputs (parameters and input files) is unchanged.

Outputs are written atomically by the stage functions, and a stage's stamp (``.stages/<name>.json``) is
written last, so a crash midway leaves either a finished stage or one that is redone.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from forcefield.fileio import atomic_path


def file_digest(path: Path) -> str:
    """MD5 of a file's bytes (streamed)."""
    h = hashlib.md5()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Stage:
    """One step of the pipeline.

    ``fn(ctx)`` does the work and writes ``outputs`` (file names inside the run folder); ``params`` and
    ``inputs`` (files) define its fingerprint.
    """

    name: str
    fn: Callable[["RunContext"], dict[str, Any] | None]
    outputs: list[str]
    inputs: list[str] = field(default_factory=list)
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunContext:
    """What stages share: the run folder, the config, the results and timings gathered so far."""

    folder: Path
    config: Any
    progress: bool = True
    results: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    log: Callable[[str], None] = print

    fingerprint: str = ""

    def file(self, name: str) -> Path:
        return self.folder / name

    def checkpoint(self, stage: str) -> Path:
        """Checkpoint file of a stage, tied to its inputs: a crash resumes it, changed inputs start afresh."""
        return self.folder / f".{stage}-{self.fingerprint[:12]}.ckpt"


class StageRunner:
    """Run stages in order, skipping those whose stamp matches."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        (ctx.folder / ".stages").mkdir(parents=True, exist_ok=True)

    def _fingerprint(self, st: Stage) -> str:
        h = hashlib.md5(json.dumps(st.params, sort_keys=True, default=str).encode())
        for name in st.inputs:
            p = self.ctx.file(name) if not Path(name).is_absolute() else Path(name)
            h.update(name.encode())
            h.update(file_digest(p).encode() if p.exists() else b"missing")
        return h.hexdigest()

    def run(self, st: Stage) -> dict[str, Any]:
        stamp = self.ctx.folder / ".stages" / f"{st.name}.json"
        fp = self._fingerprint(st)
        if stamp.exists() and all(self.ctx.file(o).exists() for o in st.outputs):
            old = json.loads(stamp.read_text())
            if old.get("fingerprint") == fp:
                self.ctx.log(f"[{st.name}] up to date, skipped")
                self.ctx.results.update(old.get("results", {}))
                self.ctx.seconds[st.name] = old.get("seconds", 0.0)
                return old.get("results", {})
        self.ctx.log(f"[{st.name}] running")
        self.ctx.fingerprint = fp
        t0 = time.perf_counter()
        res = st.fn(self.ctx) or {}
        dt = time.perf_counter() - t0
        missing = [o for o in st.outputs if not self.ctx.file(o).exists()]
        if missing:
            raise RuntimeError(f"stage {st.name} did not write {missing}")
        self.ctx.results.update(res)
        self.ctx.seconds[st.name] = dt
        with atomic_path(stamp) as tmp:
            tmp.write_text(json.dumps({"fingerprint": fp, "seconds": dt, "results": res}, indent=1, default=float))
        self.ctx.log(f"[{st.name}] done in {dt:.1f} s")
        return res
