"""Build the embedded scenario data under include/data/ from datasets shipped with scikit-learn.

No download: ``load_breast_cancer`` and ``load_diabetes`` read files inside the sklearn wheel.
Each dataset yields four batches:

- ``reference``: the first training batch;
- ``clean``: a later batch from the same population;
- ``drifted``: a different subpopulation (a real covariate shift, not added noise);
- ``corrupted`` (csv): the clean batch with a broken contract (a missing column, a text value in a
  numeric column, nulls in a complete column).

Run: ``.venv/bin/python scripts/make_demo_data.py`` (deterministic, seed 7).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.datasets import load_breast_cancer, load_diabetes

OUT = Path(__file__).resolve().parents[1] / "include" / "data"
SEED = 7


def _clean_names(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.rename(columns=lambda c: str(c).strip().replace(" ", "_"))


def _split(
    frame: pd.DataFrame, shifted_mask: pd.Series, reference_share: float
) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(SEED)
    base = frame[~shifted_mask].sample(frac=1.0, random_state=SEED).reset_index(drop=True)
    n_ref = int(len(base) * reference_share)
    reference, clean = base.iloc[:n_ref], base.iloc[n_ref:]
    drifted = frame[shifted_mask].sample(frac=1.0, random_state=SEED).reset_index(drop=True)
    corrupted = clean.copy()
    numeric = [c for c in corrupted.columns if pd.api.types.is_numeric_dtype(corrupted[c])]
    corrupted = corrupted.drop(columns=[numeric[1]])
    corrupted[numeric[2]] = corrupted[numeric[2]].astype(object)
    corrupted.loc[corrupted.index[:5], numeric[2]] = "unknown"
    null_rows = rng.choice(len(corrupted), size=len(corrupted) // 4, replace=False)
    corrupted.loc[corrupted.index[null_rows], numeric[3]] = np.nan
    return {
        "reference": reference.reset_index(drop=True),
        "clean": clean.reset_index(drop=True),
        "drifted": drifted,
        "corrupted": corrupted.reset_index(drop=True),
    }


def breast_cancer() -> dict[str, pd.DataFrame]:
    data = load_breast_cancer(as_frame=True)
    frame = _clean_names(data.frame).rename(columns={"target": "benign"})
    # Subpopulation: the largest tumours (top quartile of mean radius) arrive later.
    shifted = frame["mean_radius"] >= frame["mean_radius"].quantile(0.75)
    return _split(frame, shifted, reference_share=0.62)


def diabetes() -> dict[str, pd.DataFrame]:
    data = load_diabetes(as_frame=True, scaled=False)
    frame = _clean_names(data.frame).rename(columns={"target": "progression"})
    frame["sex"] = frame["sex"].map({1.0: "F", 2.0: "M"}).astype(str)
    # Subpopulation: patients aged 60 and over arrive later.
    shifted = frame["age"] >= 60
    return _split(frame, shifted, reference_share=0.62)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, batches in {"breast_cancer": breast_cancer(), "diabetes": diabetes()}.items():
        for batch, frame in batches.items():
            # A broken feed typically arrives as text: the corrupted batch is a csv.
            suffix = "csv" if batch == "corrupted" else "parquet"
            path = OUT / name / f"{batch}.{suffix}"
            path.parent.mkdir(parents=True, exist_ok=True)
            if suffix == "csv":
                frame.to_csv(path, index=False)
            else:
                frame.to_parquet(path, index=False)
            print(
                f"{path.relative_to(OUT.parent.parent)}: {len(frame)} rows x {frame.shape[1]} cols"
            )


if __name__ == "__main__":
    main()
