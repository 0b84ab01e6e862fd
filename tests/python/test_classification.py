"""Confident learning on a real classification dataset, side by side with Cleanlab.

scikit-learn's bundled digits (1,797 8x8 images, 10 classes) with 5% of the labels flipped; the
model's class probabilities come from 5-fold cross-validation, so no probability is from a model
that saw the example's label. milkglass gets the noisy labels and the probabilities over its
HTTP API and ranks label errors; Cleanlab ranks the same probabilities in the same test.
"""

import json

import numpy as np
import pytest
import requests
from cleanlab.filter import find_label_issues
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_predict

CLASSES = [f"digit{d}" for d in range(10)]


@pytest.fixture(scope="module")
def noisy_digits():
    digits = load_digits()
    rng = np.random.default_rng(42)
    labels = digits.target.copy()
    flipped = rng.choice(len(labels), size=len(labels) // 20, replace=False)
    for i in flipped:
        labels[i] = (labels[i] + rng.integers(1, 10)) % 10
    model = LogisticRegression(max_iter=2000)
    probabilities = cross_val_predict(model, digits.data / 16.0, labels, cv=5, method="predict_proba")
    return labels, probabilities, set(int(i) for i in flipped)


def upload(server, token, path, records):
    body = "".join(json.dumps(r) + "\n" for r in records)
    r = requests.post(server.http + path, data=body, timeout=120,
                      headers={"Authorization": f"Bearer {token}", "content-type": "application/x-ndjson"})
    assert r.status_code == 200, r.text


def test_milkglass_finds_the_flipped_digits_at_least_as_well_as_cleanlab(server_empty, noisy_digits):
    labels, probabilities, flipped = noisy_digits
    server, token = server_empty, server_empty.tokens["olivia"]
    auth = {"Authorization": f"Bearer {token}"}
    classes = [{"id": i, "name": name} for i, name in enumerate(CLASSES)]
    r = requests.post(server.http + "/api/projects", json={"name": "digits", "classes": classes}, headers=auth)
    assert r.status_code == 201, r.text
    base = "/api/projects/digits/datasets/d"
    assert requests.post(server.http + "/api/projects/digits/datasets", json={"name": "d"}, headers=auth).status_code == 201
    assert requests.post(server.http + base + "/inference_sets", json={"name": "cv"}, headers=auth).status_code == 201
    n = len(labels)
    upload(server, token, base + "/frames", [
        {"frame_id": f"x{i:04}", "sensors": [{"kind": "image", "url": f"https://digits.example/{i}.png"}]}
        for i in range(n)])
    upload(server, token, base + "/labels", [
        {"label_id": f"x{i:04}_gt", "frame_id": f"x{i:04}", "class": CLASSES[labels[i]],
         "geometry": {"kind": "classification"}} for i in range(n)])
    upload(server, token, base + "/inference_sets/cv/inferences", [
        {"label_id": f"x{i:04}_cv", "frame_id": f"x{i:04}", "class": CLASSES[int(np.argmax(p))],
         "confidence": float(np.max(p)), "probabilities": [float(v) for v in p],
         "geometry": {"kind": "classification"}} for i, p in enumerate(probabilities)])

    planted = len(flipped)
    answer = requests.get(server.http + base + "/insights/label_errors",
                          params={"inference_set": "cv", "limit": 2 * planted}, headers=auth).json()
    ranked = [int(issue["frame_id"][1:]) for issue in answer["issues"]]
    recall_at_2n = len(set(ranked) & flipped) / planted
    milkglass_at_n = len(set(ranked[:planted]) & flipped) / planted

    cleanlab_ranked = find_label_issues(labels, probabilities, return_indices_ranked_by="self_confidence")
    cleanlab_at_n = len(set(int(i) for i in cleanlab_ranked[:planted]) & flipped) / planted
    print(f"planted {planted}: milkglass recall@N {milkglass_at_n:.3f}, @2N {recall_at_2n:.3f}; "
          f"cleanlab recall@N {cleanlab_at_n:.3f}")
    assert recall_at_2n >= 0.9, answer["total"]
    assert milkglass_at_n >= cleanlab_at_n
