"""Drive sgdml 1.0.3 (run with the python of its own venv, numpy<2.4): train, time, predict.

Used by ``kernel_vs_sgdml.py`` and to make ``tests/data`` files; it only imports numpy and sgdml.

    /tmp/sgdml-venv/bin/python benchmarks/kernel_sgdml_driver.py --train train.npz --valid valid.npz \
        --sigma 50 [--test test.npz] [--max-memory 6] [--model-out m.npz] [--pred-out p.npz] --json out.json
"""
from __future__ import annotations

import argparse
import json
import logging
import resource
import time

import numpy as np


def _load(path):
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", required=True)
    ap.add_argument("--valid", required=True)
    ap.add_argument("--test")
    ap.add_argument("--sigma", type=float, default=50.0)
    ap.add_argument("--lam", type=float, default=1e-10)
    ap.add_argument("--max-memory", type=int, default=None, help="GB, sgdml's soft memory cap")
    ap.add_argument("--max-processes", type=int, default=None)
    ap.add_argument("--e-cstr", action="store_true", help="train with energy constraints (use_E_cstr)")
    ap.add_argument("--perms", help=".npy file of (P, N) atom permutations to use instead of detection")
    ap.add_argument("--model-out")
    ap.add_argument("--pred-out")
    ap.add_argument("--json", required=True)
    a = ap.parse_args()

    import sgdml
    from sgdml.predict import GDMLPredict
    from sgdml.train import GDMLTrain

    logging.getLogger("sgdml").setLevel(logging.WARNING)
    train, valid = _load(a.train), _load(a.valid)
    out = {"sgdml_version": sgdml.__version__, "numpy": np.__version__, "n_train": int(len(train["R"]))}
    gdml = GDMLTrain(max_memory=a.max_memory, max_processes=a.max_processes)
    t0 = time.perf_counter()
    perms = np.load(a.perms) if a.perms else None
    task = gdml.create_task(train, len(train["R"]), valid, len(valid["R"]), sig=a.sigma, lam=a.lam,
                            perms=perms, use_sym=True, use_E=True, use_E_cstr=a.e_cstr)
    model = gdml.train(task)
    out["train_s"] = time.perf_counter() - t0
    out["n_perms"] = int(len(model["perms"]))
    out["solver"] = str(model.get("solver_name", ""))
    if a.model_out:
        np.savez_compressed(a.model_out, **model)
    if a.test:
        test = _load(a.test)
        R = test["R"].reshape(len(test["R"]), -1)
        pred = GDMLPredict(model, max_processes=a.max_processes, log_level=logging.CRITICAL)
        pred.predict(R[:10])  # warm-up
        t1 = time.perf_counter()
        E, F = pred.predict(R)
        dt = time.perf_counter() - t1
        out["predict_gps"] = len(R) / dt
        F = F.reshape(test["F"].shape)
        out["force_mae"] = float(np.abs(F - test["F"]).mean())
        if "E" in test:
            out["energy_mae"] = float(np.abs(E - test["E"].ravel()).mean())
        if a.pred_out:
            np.savez(a.pred_out, R=test["R"], E=E, F=F)
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    child_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    out["peak_rss_gib"] = max(self_kb, child_kb) / 2 ** 20
    with open(a.json, "w") as fh:
        json.dump(out, fh, indent=1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
