# Copyright (c) gpu.mig contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
# SPDX-License-Identifier: GPL-3.0-or-later
"""Train a tiny scikit-learn classifier on the fly and lay out an MLServer model repository around it.

Writes ``<dir>/<model>/model.joblib`` (logistic regression on the iris data shipped with scikit-learn: no download),
plus ``settings.json`` and ``model-settings.json`` when given as JSON on the command line (the role's rendered dicts).
Needs scikit-learn and joblib (``pip install mlserver==1.7.1 mlserver-sklearn==1.7.1`` brings both).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import joblib
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression


def train(directory: Path, model: str, settings: dict | None = None, model_settings: dict | None = None) -> Path:
    """Fit, save and return the model path; write the MLServer settings files next to it when given."""
    features, labels = load_iris(return_X_y=True)
    classifier = LogisticRegression(max_iter=500).fit(features, labels)
    target = directory / model
    target.mkdir(parents=True, exist_ok=True)
    joblib.dump(classifier, target / "model.joblib")
    if settings is not None:
        (directory / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    if model_settings is not None:
        (target / "model-settings.json").write_text(json.dumps(model_settings, indent=2) + "\n")
    return target / "model.joblib"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("directory", type=Path)
    parser.add_argument("--model", default="iris")
    parser.add_argument("--settings", type=json.loads, help="settings.json content (JSON)")
    parser.add_argument("--model-settings", type=json.loads, help="model-settings.json content (JSON)")
    args = parser.parse_args(argv)
    print(train(args.directory, args.model, args.settings, args.model_settings))


if __name__ == "__main__":
    main()
