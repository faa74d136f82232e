"""Sampler study: quality against held-out real poses versus network evaluations, for every sampler.

For each prior and each (sampler, NFE) cell it draws `--n` samples from fixed seeds (the same start noise
for every sampler) and scores them with the spec §8.1 metrics on raw axis-angle vectors: FID against the
Gaussian fit of the reference poses, precision / recall / density / coverage (k = 3), APD (cm, first 500
samples through the body model) and dNN (rad, first 500 samples against the prior's training poses).
Headline cells (EM-1000, the default sampler, the former default) run several seeds, so every difference is
read against the seed-to-seed spread (`summary`).

Reference poses: rows 6000:8000 of `poses/<part>_reference_train.npz` (2000 poses). They are held out for a
prior trained on rows 0:6000 (`--prior official-body=PATH`, see `scripts` line in the JSON), but they are in
the training data of the bundled demo priors (which saw all 8000): say which when quoting.

    python -m bench.bench_sampler_study --prior demo-body --prior demo-hand \\
        --prior official-body=runs/official_body/prior.pt --out bench/results/sampler_study.json

Partial results are written after every cell; re-running with the same `--out` skips the cells it already
has (and `--cache DIR` keeps the samples, so a metric can be recomputed without sampling again).
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from bench._common import environment, write
from dposer_cli.bodies import load_body
from dposer_cli.core.parts import Part
from dposer_cli.core.paths import shared_data_dir
from dposer_cli.engine.prior import DPoserPrior
from dposer_cli.engine.samplers import DEFAULT_SAMPLER, DEFAULT_STEPS
from dposer_cli.evaluation.common import part_params
from dposer_cli.metrics import apd, dnn, fid, fid_from_stats, gaussian_stats, prdc
from dposer_cli.tasks.sample import sample

HELD_OUT = slice(6000, 8000)
FIT = slice(0, 6000)
GRID = {
    "em": (10, 25, 50, 100, 250, 1000),
    "ddim": (10, 25, 50, 100),
    "dpm2m": (10, 25, 50, 100),
    "dpm2m-sde": (10, 25, 50, 100),
}
SEEDS = 3  # for the headline cells
FORMER_DEFAULT = ("dpm2m", 25)
METRICS = ("fid", "precision", "recall", "density", "coverage", "apd_cm", "dnn", "fid_to_em1000")


def headline_cells() -> set[tuple[str, int]]:
    return {("em", 1000), (DEFAULT_SAMPLER, DEFAULT_STEPS[DEFAULT_SAMPLER]), FORMER_DEFAULT}


def load(spec: str) -> tuple[str, DPoserPrior, Part, np.ndarray, np.ndarray, str]:
    """`demo-body`, `demo-hand` or `official-<part>=PATH` → (name, prior, part, reference, train, note)."""
    name, _, path = spec.partition("=")
    kind, part = name.split("-", 1)
    part = Part(part)
    poses = np.load(shared_data_dir() / "poses" / f"{part.value}_reference_train.npz")["poses"].astype(
        np.float64
    )
    reference = poses[HELD_OUT]
    if kind == "demo":
        prior = DPoserPrior.load(part)
        return (
            name,
            prior,
            part,
            reference,
            poses,
            "reference rows 6000:8000 are in the demo prior's training data",
        )
    prior = DPoserPrior.from_checkpoint(Path(path), part)
    return (
        name,
        prior,
        part,
        reference,
        poses[FIT],
        "reference rows 6000:8000 are held out (trained on rows 0:6000)",
    )


def body_apd(body, part: Part, x: np.ndarray) -> float:
    with torch.no_grad():
        joints = body(
            **part_params(part, torch.as_tensor(x, dtype=torch.float32)), return_vertices=False
        ).joints
    return float(apd(joints[:, body.joint_set("hand21" if part is Part.hand else "body22")])) * 100


def score(s: np.ndarray, reference: np.ndarray, train: np.ndarray, stats, body, part: Part) -> dict:
    if not np.isfinite(s).all():
        return {"finite": False}
    m = {"finite": True, "fid": fid(s, mu=stats[0], sigma=stats[1])}
    m.update(prdc(reference, s, k=3))
    m["apd_cm"] = body_apd(body, part, s[:500])
    m["dnn"] = dnn(s[:500], train, measure="rotation")
    m["sample_std"] = float(s.std())
    return m


def summarise(cells: list[dict]) -> dict:
    """Mean and spread over seeds per (sampler, nfe); each cell's difference from EM-1000's seed mean."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for c in cells:
        if c["metrics"].get("finite"):
            groups.setdefault((c["sampler"], c["nfe"]), []).append(c["metrics"])
    out: dict = {}
    em = groups.get(("em", 1000), [])
    for (sampler, nfe), ms in sorted(groups.items()):
        row: dict = {"sampler": sampler, "nfe": nfe, "seeds": len(ms)}
        for k in METRICS:
            if not all(k in m for m in ms):
                continue
            v = np.array([m[k] for m in ms])
            row[k] = float(v.mean())
            if len(v) > 1:
                row[k + "_sd"] = float(v.std(ddof=1))
                row[k + "_range"] = [float(v.min()), float(v.max())]
            if em and all(k in m for m in em):
                row["d_" + k] = float(v.mean() - np.mean([m[k] for m in em]))
        out[f"{sampler}-{nfe}"] = row
    if em and len(em) > 1:
        fids = np.array([m["fid"] for m in em])
        out["em_seed_spread"] = {
            k: float(np.ptp([m[k] for m in em])) for k in METRICS if all(k in m for m in em)
        }
        for row in out.values():
            if "d_fid" in row:
                row["fid_within_em_spread"] = bool(
                    fids.min() <= row["fid"] <= fids.max() or abs(row["d_fid"]) <= float(np.ptp(fids))
                )
                row["pr_within_0.05"] = bool(abs(row["d_precision"]) <= 0.05 and abs(row["d_recall"]) <= 0.05)
    return out


def add_fid_to_em(entry: dict, name: str, cache: Path, n: int) -> None:
    """FID of every cached cell's samples to EM-1000's samples (mean over EM seeds, other seeds only for
    EM-1000 itself): how far a sampler's distribution is from the official one, beside the sampling noise
    that EM-1000 against itself shows."""

    def stats(sampler: str, steps: int, seed: int):
        f = cache / f"{name}_{sampler}_{steps}_s{seed}_n{n}.npy"
        return gaussian_stats(np.load(f)) if f.is_file() else None

    em = {
        c["seed"]: stats("em", 1000, c["seed"])
        for c in entry["cells"]
        if (c["sampler"], c["nfe"]) == ("em", 1000)
    }
    em = {k: v for k, v in em.items() if v is not None}
    for c in entry["cells"]:
        st = stats(c["sampler"], c["nfe"], c["seed"]) if c["metrics"].get("finite") else None
        others = [
            v for k, v in em.items() if not ((c["sampler"], c["nfe"]) == ("em", 1000) and k == c["seed"])
        ]
        if st is not None and others:
            c["metrics"]["fid_to_em1000"] = float(np.mean([fid_from_stats(*st, *o) for o in others]))


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    priors = list(report["priors"])
    shown = ("fid", "fid_to_em1000", "precision", "recall", "apd_cm", "dnn")
    fig, axes = plt.subplots(
        len(priors), len(shown), figsize=(4 * len(shown), 3.2 * len(priors)), squeeze=False
    )
    colours = {"em": "k", "ddim": "tab:green", "dpm2m": "tab:red", "dpm2m-sde": "tab:blue"}
    for r, name in enumerate(priors):
        summ = report["priors"][name]["summary"]
        em = summ.get("em-1000")
        for c, k in enumerate(shown):
            ax = axes[r][c]
            for sampler, colour in colours.items():
                rows = sorted(
                    (
                        v
                        for v in summ.values()
                        if isinstance(v, dict) and v.get("sampler") == sampler and k in v
                    ),
                    key=lambda v: v["nfe"],
                )
                if rows:
                    ax.plot(
                        [v["nfe"] for v in rows],
                        [v[k] for v in rows],
                        "o-",
                        color=colour,
                        label=sampler,
                        ms=3,
                    )
                    for v in rows:
                        if k + "_sd" in v:
                            ax.errorbar(v["nfe"], v[k], yerr=v[k + "_sd"], color=colour, capsize=3)
            if em is not None and k in em:
                lo, hi = em.get(k + "_range", [em[k], em[k]])
                ax.axhspan(lo, hi, color="0.8", zorder=0)
                ax.axhline(em[k], color="0.5", lw=0.8, ls="--")
            ax.set_xscale("log")
            if k.startswith("fid"):
                ax.set_yscale("log")
            ax.axvline(50, color="0.7", lw=0.8, ls=":")
            ax.set_title(f"{name}: {k}", fontsize=9)
            ax.set_xlabel("network evaluations")
            if r == 0 and c == 0:
                ax.legend(fontsize=7)
    fig.suptitle("Sampler quality vs NFE (grey band: EM-1000 over seeds; dotted: 50 NFE)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--prior", action="append", required=True, help="demo-body, demo-hand or official-body=PATH"
    )
    p.add_argument("--out", type=Path, default=Path("bench/results/sampler_study.json"))
    p.add_argument("--png", type=Path, default=None, help="default: --out with .png")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cache", type=Path, default=None, help="keep the samples of every cell here (npy)")
    p.add_argument("--plot-only", action="store_true")
    p.add_argument("--note", action="append", default=[], help="prior=text recorded with that prior")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    report = json.loads(args.out.read_text()) if args.out.is_file() else {}
    report.update(
        {
            "benchmark": "sampler_study",
            "env": environment(),
            "n": args.n,
            "reference": "rows 6000:8000 (2000 poses) of ../shared/data/poses/<part>_reference_train.npz",
            "metrics": "spec §8.1 on raw axis-angle: FID vs the reference Gaussian, PRDC k=3 vs the "
            "reference, APD (cm) and dNN (rad, rotation) of the first 500 samples",
            "seeds": f"{SEEDS} for {sorted(headline_cells())}, 1 elsewhere; seed s = the same start noise "
            "for every sampler",
        }
    )
    report.setdefault("priors", {})
    notes = dict(n.split("=", 1) for n in args.note)
    for spec in args.prior:
        if args.plot_only:
            break
        name, prior, part, reference, train, note = load(spec)
        entry = report["priors"].setdefault(name, {"cells": []})
        entry.update(
            {
                "checkpoint": prior.source,
                "part": part.value,
                "reference_note": note,
                "network": {
                    k: v
                    for k, v in vars(prior.config.net).items()
                    if k in ("hidden_dim", "embed_dim", "scale_by_sigma", "gaussian_skip", "dropout")
                },
            }
        )
        if name in notes:
            entry["note"] = notes[name]
        stats = gaussian_stats(reference)
        body = load_body("hand" if part is Part.hand else "body")
        done = {(c["sampler"], c["nfe"], c["seed"]) for c in entry["cells"]}
        heads = headline_cells()
        todo = [
            (s, k, seed)
            for s, ks in GRID.items()
            for k in ks
            for seed in range(SEEDS if (s, k) in heads else 1)
        ]
        todo.sort(key=lambda c: (c[2], c[1] == 1000, c[1]))  # seed 0 first, cheap cells first
        for sampler, steps, seed in todo:
            if (sampler, steps, seed) in done:
                continue
            cached = args.cache / f"{name}_{sampler}_{steps}_s{seed}_n{args.n}.npy" if args.cache else None
            t0 = time.perf_counter()
            if cached is not None and cached.is_file():
                s, seconds = np.load(cached), None
            else:
                res = sample(
                    prior, args.n, sampler=sampler, steps=steps, generator=torch.Generator().manual_seed(seed)
                )
                s, seconds = res.poses.numpy().astype(np.float64), res.seconds
                if cached is not None:
                    cached.parent.mkdir(parents=True, exist_ok=True)
                    np.save(cached, s)
            m = score(s, reference, train, stats, body, part)
            entry["cells"].append(
                {
                    "sampler": sampler,
                    "nfe": steps,
                    "seed": seed,
                    "sample_seconds": seconds,
                    "metric_seconds": time.perf_counter() - t0 - (seconds or 0),
                    "metrics": m,
                }
            )
            entry["summary"] = summarise(entry["cells"])
            write(report, args.out)
            print(
                f"{name} {sampler}-{steps} s{seed}: "
                + ", ".join(f"{k} {m[k]:.3f}" for k in METRICS if k in m),
                flush=True,
            )
        if args.cache is not None:
            add_fid_to_em(entry, name, args.cache, args.n)
        entry["summary"] = summarise(entry["cells"])
        write(report, args.out)
    plot(report, args.png or args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
