"""Published numbers of DPoser-X (arXiv 2508.00599v2), for side-by-side reporting (shared/spec/paper-results.md).

Each entry: `table` (where it is printed), `metrics` (our metric names, in column order), `rows`
({method: values}; None where the paper leaves a cell empty) and an optional `note`. Values are in the
units of our metric names: tables published in cm are converted to mm here (the note says so).
"""

from typing import Any

_GEN = ["apd_cm", "fid", "precision", "recall", "dnn"]

PAPER: dict[str, dict[str, dict[str, Any]]] = {
    "generation": {
        "body": {
            "table": "Table 1 (body generation; APD on 500 samples, FID/Prec/Rec on 50k)",
            "metrics": _GEN,
            "rows": {
                "Real-world (AMASS)": [15.44, 0.005, 0.86, 0.90, 0.001],
                "GMM": [16.28, 1.02, 0.13, 0.34, 4.37],
                "VPoser": [10.75, 0.66, 0.29, 0.42, 3.74],
                "GAN-S": [15.68, 0.18, 0.61, 0.41, 2.98],
                "Pose-NDF": [18.75, 5.92, 0.02, 0.00, 9.08],
                "NRDF": [22.82, 0.64, 0.03, 0.99, 6.69],
                "DPoser": [14.28, 0.07, 0.72, 0.80, 2.63],
                "DPoser* (DDIM 10 steps)": [19.03, 0.58, 0.10, 0.95, 2.95],
            },
            "note": "DPoser row = Euler–Maruyama, 1000 steps (--sampler em)",
        },
        "hand": {
            "table": "Table S-8 (hand generation)",
            "metrics": _GEN,
            "rows": {"VPoser": [1.99, 0.21, 0.68, 0.65, 1.85], "NRDF": [1.76, 5.20, 0.17, 0.65, 5.37],
                     "DPoser": [2.36, 0.01, 0.82, 0.87, 1.45]},
        },
        "face": {
            "table": "Table S-11 (face expression generation)",
            "metrics": ["fid", "precision", "recall", "dnn"],
            "rows": {"VPoser": [0.888, 0.993, 0.019, 0.79], "DPoser": [0.156, 0.818, 0.697, 1.01]},
        },
        "face-shape": {
            "table": "Table S-11 (face shape generation)",
            "metrics": ["fid", "precision", "recall", "dnn"],
            "rows": {"VPoser": [31.91, 0.984, 0.105, 6.52], "DPoser": [5.331, 0.689, 0.396, 8.29]},
        },
        "wholebody": {
            "table": "Table 6 (whole-body generation)",
            "metrics": ["apd_body_cm", "apd_hands_cm", "fid", "precision", "recall"],
            "rows": {"VPoser-X": [7.79, 1.16, 14.52, 0.64, 0.07], "DPoser-X-base": [14.45, 2.34, 90.78, 0.00, 0.00],
                     "DPoser-X-fused": [11.78, 1.93, 3.71, 0.32, 0.77],
                     "DPoser": [14.08, 2.04, 13.97, 0.02, 0.81]},
            "note": "DPoser row = DPoser-X-mixed, the released model",
        },
    },
    "completion": {
        mask: {
            "table": "Table S-5 (MPVPE min/mean/std over S=10, APD) and Table S-18 (MPJPE min/mean/std, S=10)",
            "metrics": ["mpvpe_min_mm", "mpvpe_mean_mm", "mpvpe_std_mm", "apd_cm", "mpjpe_min_mm", "mpjpe_mean_mm",
                        "mpjpe_std_mm"],
            "rows": rows,
        }
        for mask, rows in {
            "left_leg": {"Pose-NDF": [154.21, 168.45, 8.66, 1.95, None, None, None],
                         "VPoser": [182.31, 200.51, 12.20, 2.41, None, None, None],
                         "CVPoser": [113.48, 128.04, 10.36, 1.91, None, None, None],
                         "DPoser": [38.79, 78.31, 27.13, 6.53, 35.37, 74.01, 26.47]},
            "legs": {"Pose-NDF": [159.75, 169.86, 6.12, 1.97, None, None, None],
                     "VPoser": [195.76, 221.34, 16.40, 5.44, None, None, None],
                     "CVPoser": [121.00, 134.35, 10.17, 2.43, None, None, None],
                     "DPoser": [63.65, 102.46, 25.39, 7.75, 59.25, 96.77, 24.55]},
            "arms": {"Pose-NDF": [252.90, 260.94, 4.81, 1.20, None, None, None],
                     "VPoser": [186.55, 206.72, 12.91, 4.08, None, None, None],
                     "CVPoser": [153.12, 162.82, 5.58, 1.08, None, None, None],
                     "DPoser": [64.72, 104.94, 26.44, 5.69, 51.27, 81.76, 20.04]},
            "trunk": {"Pose-NDF": [105.87, 114.97, 5.43, 0.93, None, None, None],
                      "VPoser": [47.31, 58.71, 7.38, 1.56, None, None, None],
                      "CVPoser": [45.16, 51.23, 4.32, 0.57, None, None, None],
                      "DPoser": [22.63, 44.60, 14.65, 2.21, 13.95, 28.57, 9.85]},
        }.items()
    },
    "wholebody-completion": {
        "one_hand": {"table": "Table 7 (whole-body completion, one random hand masked, 10 hypotheses)",
                     "metrics": ["mpvpe_min_mm", "mpvpe_mean_mm", "mpvpe_std_mm", "apd_cm"],
                     "rows": {"VPoser-X": [37.34, 43.24, 4.60, 0.59], "DPoser": [21.81, 30.99, 6.10, 1.24],
                              "VPoser-X (BEAT2)": [27.49, 35.46, 5.06, 0.66],
                              "DPoser (BEAT2)": [15.92, 25.89, 6.04, 1.18]},
                     "note": "unsuffixed rows: ARCTIC"},
    },
    "denoise": {
        "40mm": {"table": "Table 3 (AMASS/HumanEva, σ = 40 mm)", "metrics": ["mpjpe_mm", "mpvpe_mm"],
                 "rows": {"w/o prior": [24.19, None], "VPoser": [23.42, None], "Pose-NDF": [22.13, None],
                          "MVAE": [26.80, None], "HuMoR": [22.69, None], "DPoser": [19.87, 38.21]},
                 "note": "DPoser MPVPE from Table 9"},
        "20mm": {"table": "Table S-6 (AMASS, σ = 20 mm)", "metrics": ["mpjpe_mm"],
                 "rows": {"w/o prior": [15.33], "VPoser": [15.20], "Pose-NDF": [13.84], "DPoser": [13.64]}},
        "100mm": {"table": "Table S-6 (AMASS, σ = 100 mm)", "metrics": ["mpjpe_mm"],
                  "rows": {"w/o prior": [51.48], "VPoser": [49.10], "Pose-NDF": [46.10], "DPoser": [33.18]}},
        "legs": {"table": "Table S-7 (AMASS, legs occluded)",
                 "metrics": ["mpjpe_visible_mm", "mpjpe_occluded_mm", "mpjpe_mm", "mpvpe_mm"],
                 "rows": {"w/o prior": [2.6, 147.2, 55.2, 54.5], "VPoser": [17.5, 142.9, 63.1, 73.8],
                          "Pose-NDF": [2.5, 157.1, 58.7, 56.4], "DPoser": [2.8, 122.4, 46.3, 36.5]},
                 "note": "published in cm; ×10 here"},
        "left_arm": {"table": "Table S-7 (AMASS, left arm occluded)",
                     "metrics": ["mpjpe_visible_mm", "mpjpe_occluded_mm", "mpjpe_mm", "mpvpe_mm"],
                     "rows": {"w/o prior": [2.6, 248.7, 47.4, 99.1], "VPoser": [12.1, 132.3, 34.0, 76.8],
                              "Pose-NDF": [2.5, 177.0, 34.2, 78.6], "DPoser": [2.7, 78.0, 16.4, 38.1]},
                     "note": "published in cm; ×10 here"},
    },
    "hand-ik": {
        "sparse": {"table": "Table 4 (ReInterHand, 60 % of the joints hidden)",
                   "metrics": ["mpjpe_visible_mm", "mpjpe_occluded_mm", "mpjpe_all_mm", "mpvpe_mm"],
                   "rows": {"w/o prior": [0.07, 14.46, 8.98, 10.07], "L2 prior": [0.84, 13.84, 8.89, 8.94],
                            "VPoser": [0.37, 13.10, 8.25, 8.84], "NRDF": [0.11, 13.92, 8.66, 9.53],
                            "DPoser": [0.06, 5.15, 3.21, 3.43]}},
        "fingertip": {"table": "Table 4 (ReInterHand, only fingertips visible)",
                      "metrics": ["mpjpe_visible_mm", "mpjpe_occluded_mm", "mpjpe_all_mm", "mpvpe_mm"],
                      "rows": {"w/o prior": [0.13, 4.00, 2.89, 4.59], "L2 prior": [1.02, 3.58, 2.85, 3.15],
                               "VPoser": [0.48, 4.35, 3.25, 3.93], "NRDF": [0.15, 3.95, 2.93, 3.95],
                               "DPoser": [0.07, 2.40, 1.74, 1.99]}},
        **{f"noisy-{mm}mm": {"table": f"Table S-10 (noisy hand IK, σ = {mm} mm)", "metrics": ["mpvpe_mm", "mpjpe_all_mm"],
                             "rows": rows}
           for mm, rows in {
               2: {"w/o prior": [3.95, 1.50], "L2 prior": [2.10, 1.43], "VPoser": [2.47, 1.36], "NRDF": [2.67, 1.40],
                   "DPoser": [1.71, 1.17]},
               5: {"w/o prior": [5.82, 3.46], "L2 prior": [4.06, 2.92], "VPoser": [4.15, 2.85], "NRDF": [4.57, 3.11],
                   "DPoser": [3.30, 2.39]},
               10: {"w/o prior": [8.62, 5.97], "L2 prior": [6.06, 4.27], "VPoser": [6.32, 4.40], "NRDF": [7.18, 5.06],
                    "DPoser": [5.39, 3.87]},
           }.items()},
    },
    "face-ik": {
        **{f"noisy-{mm}mm": {"table": f"Table S-13 (WCPA face IK, σ = {mm} mm)", "metrics": ["mpvpe_mm", "mpjpe_all_mm"],
                             "rows": rows}
           for mm, rows in {
               1: {"w/o prior": [1.460, 0.878], "L2 prior": [1.121, 0.865], "VPoser": [1.153, 0.803],
                   "DPoser": [0.784, 0.584]},
               2: {"w/o prior": [2.230, 1.702], "L2 prior": [1.626, 1.288], "VPoser": [1.688, 1.480],
                   "DPoser": [1.098, 0.963]},
               5: {"w/o prior": [4.701, 4.028], "L2 prior": [2.570, 2.344], "VPoser": [2.716, 2.688],
                   "DPoser": [1.902, 1.936]},
           }.items()},
        "half_face": {"table": "Table S-13 (WCPA face IK, half face occluded)", "metrics": ["mpvpe_mm", "mpjpe_all_mm"],
                      "rows": {"w/o prior": [0.752, 0.632], "L2 prior": [0.698, 0.512], "VPoser": [0.671, 0.361],
                               "DPoser": [0.427, 0.228]}},
    },
    "ehf": {
        "ehf": {"table": "Table 2 (EHF, PA-MPJPE body joints, from scratch; 2D keypoints from ViTPose-H)",
                "metrics": ["pa_mpjpe_mm", "mpjpe_mm"],
                "rows": {"w/o prior": [108.57, None], "GMM": [58.32, None], "VPoser": [58.08, None],
                         "Pose-NDF": [57.87, None], "NRDF": [57.38, None], "GAN-S": [57.26, None],
                         "DPoser": [56.05, 79.82]},
                "note": "DPoser MPJPE from Table S-4 (1 hypothesis)"},
    },
    "arctic": {
        "arctic": {"table": "Table 8 (ARCTIC whole-body mesh recovery from scratch; RTMPose 2D keypoints)",
                   "metrics": ["pa_mpvpe_all_mm", "pa_mpvpe_hand_mm", "pa_mpvpe_face_mm", "pa_mpjpe_body_mm"],
                   "rows": {"w/o prior": [72.94, 18.80, 11.60, 86.40], "GMM": [67.25, 17.93, 10.92, 79.08],
                            "L2 prior": [67.25, 17.93, 10.92, 79.08], "VPoser-X": [66.74, 17.44, 10.99, 79.88],
                            "DPoser": [60.98, 15.60, 9.75, 73.00]},
                   "note": "the paper has one baseline row, 'GMM & L2 prior', shown for --prior gmm and --prior l2; "
                           "DPoser = DPoser-X"},
    },
    "freihand": {
        "freihand": {"table": "Table S-9 (FreiHAND evaluation set, from scratch, GT 2D keypoints)",
                     "metrics": ["pa_mpjpe_mm", "pa_mpvpe_mm", "f_at_5mm", "f_at_15mm"],
                     "rows": {"w/o prior": [16.12, 17.04, 0.446, 0.895], "L2 prior": [11.49, 11.59, 0.533, 0.927],
                              "VPoser": [10.62, 10.91, 0.609, 0.943], "NRDF": [11.04, 11.59, 0.554, 0.937],
                              "DPoser": [8.68, 8.70, 0.679, 0.963]},
                     "note": "values with GT 2D keypoints (the table's second numbers)"},
    },
}


def paper_for(evaluation: str, setting: str) -> dict[str, Any] | None:
    """The published table for one evaluation setting, or None."""
    return PAPER.get(evaluation, {}).get(setting)


def paper_value(entry: dict[str, Any] | None, row: str, metric: str) -> float | None:
    """One published number (row = method name), or None."""
    if entry is None or row not in entry["rows"] or metric not in entry["metrics"]:
        return None
    return entry["rows"][row][entry["metrics"].index(metric)]
