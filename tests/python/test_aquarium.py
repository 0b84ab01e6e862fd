"""Aquarium's own client, `aquariumlearning` 1.0.7 from PyPI, unmodified, against a real milkglass
server: the script `aquarium_flow.py` runs in the client's own virtual environment, and what it
did is then checked through milkglass's own API."""

import http.server
import json
import pathlib
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

from conftest import Server, milkglass

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parents[1]


@pytest.fixture(scope="module")
def aquarium_python():
    """The client's own virtual environment (made once by scripts/aquarium-venv.sh, then reused)."""
    made = subprocess.run([str(ROOT / "scripts" / "aquarium-venv.sh")], check=True, capture_output=True, text=True)
    return made.stdout.strip()


@pytest.fixture(scope="module")
def server():
    server = Server(None)
    yield server
    server.stop()


class CountingServer:
    """Images on a server only the owner's network reaches; it counts every request it gets."""

    def __init__(self):
        hits = self.hits = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                hits.append(self.path)
                self.send_response(200)
                self.send_header("content-type", "image/jpeg")
                self.end_headers()
                self.wfile.write(b"\xff\xd8\xff")

            do_HEAD = do_GET

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/img"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()


def run_step(python, server, step, project, dataset, image_base=None):
    """Runs one step of the script and returns its report (its last line of output)."""
    args = [python, str(HERE / "aquarium_flow.py"), step, f"{server.http}/api/v1", server.tokens["olivia"],
            project, dataset]
    if image_base:
        args.append(image_base)
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{step} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def api(server, method, path, body=None, token="olivia"):
    request = urllib.request.Request(
        f"{server.http}{path}", method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"authorization": f"Bearer {server.tokens.get(token, token)}", "content-type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def frame_count(server, project, dataset):
    status, body = api(server, "GET", f"/api/projects/{project}/datasets/{dataset}/status")
    assert status == 200, body
    return body["frames"]


def test_a_script_written_for_aquarium_runs_unmodified_and_milkglass_sees_its_data(aquarium_python, server):
    report = run_step(aquarium_python, server, "upload", "drive", "cams")

    # Read back through the client: every frame, field by field as the client itself wrote it.
    assert report["frame_ids"] == 1100 and report["unique_ids"] == 1100
    assert report["compared"] == 1100 and report["missing"] == []
    assert report["differing_frames"] == 0, report["differences"]
    assert report["single"] == []
    assert report["processed"] is True
    assert report["segment_id"] and "night frames" in report["segments"]
    assert report["segment_elements"] == sorted(report["segment_frames"])
    # The metrics manager, answered from milkglass's matching: 22 boxes carry the wrong class.
    m = report["metrics"]
    assert (m["false_positives"], m["false_negatives"], m["total_confusions"]) == (22, 22, 22), m
    assert m["precision"] == m["recall"] == pytest.approx(1078 / 1100) and m["frame_count"] == 1100, m

    ds = "/api/projects/drive/datasets/cams"
    # The same frames through milkglass's own API, with the metadata typed as the client sent it.
    assert frame_count(server, "drive", "cams") == 1100
    status, page = api(server, "GET", f"{ds}/frames?meta=city:eq:lyon&count=true&limit=5")
    assert status == 200 and page["total"] == len([i for i in range(1100) if i % 3 == 1]), page
    status, frame = api(server, "GET", f"{ds}/frames/frame_00007")
    assert status == 200, frame
    assert frame["metadata"]["speed"] == 7.5 and frame["metadata"]["lane"] == 3 and frame["metadata"]["night"] is False
    assert frame["sensors"][0]["url"] == "https://images.example.com/drive/frame_00007.jpg"
    assert frame["geo"] == {"lat": 48.007, "lon": 2.007}
    [label] = frame["labels"]
    assert label["label_id"] == "frame_00007_gt0" and label["class"] == "pedestrian"
    assert label["attributes"] == {"occluded": False}
    status, project = api(server, "GET", "/api/projects/drive")
    assert [c["name"] for c in project["classes"]] == ["car", "pedestrian", "bike"]
    assert project["metadata"]["team"] == "perception"

    status, inference_set = api(server, "GET", f"{ds}/inference_sets/model_v1")
    assert status == 200 and inference_set["metadata"] == {"epoch": 12}, inference_set
    assert api(server, "GET", ds)[1]["metadata"] == {"source": "aquarium script"}

    # Label errors: the labels the model contradicts (one frame in 50) lead the queue.
    status, errors = api(server, "GET", f"{ds}/insights/label_errors?inference_set=model_v1&kind=class_confusion")
    assert status == 200, errors
    flagged = {issue["frame_id"] for issue in errors["issues"]}
    assert flagged == set(report["mislabeled"]), errors["issues"][:3]

    # Metrics: every inference matches a box; 22 of 1100 disagree with the label's class.
    status, metrics = api(server, "GET", f"{ds}/insights/metrics?inference_set=model_v1")
    assert status == 200, metrics
    assert metrics["task"] == "detection"
    confusion = metrics["confusion"]
    cells = {(r, c): confusion["cells"][i][j] for i, r in enumerate(confusion["rows"])
             for j, c in enumerate(confusion["columns"])}
    agree = sum(cell["count"] for (r, c), cell in cells.items() if r == c != "background")
    confused = [cell for (r, c), cell in cells.items() if r != c and "background" not in (r, c)]
    assert agree == 1100 - 22 and sum(cell["count"] for cell in confused) == 22, confusion
    assert {f for cell in confused for f in cell["frame_ids"]} == set(report["mislabeled"])

    # Similarity over the client's frame embeddings: neighbours share the city (the embedding's cluster).
    status, similar = api(server, "POST", f"{ds}/insights/similar", {"frame_id": "frame_00007", "k": 10})
    assert status == 200, similar
    assert len(similar["neighbors"]) == 10
    assert all(int(n["frame_id"].split("_")[1]) % 3 == 7 % 3 for n in similar["neighbors"]), similar
    status, crops = api(server, "POST", f"{ds}/insights/similar",
                        {"space": "labels", "label_id": "frame_00007_gt0", "k": 5})
    assert status == 200 and len(crops["neighbors"]) == 5, crops

    # The segment the client made is milkglass's segment.
    status, segments = api(server, "GET", f"{ds}/segments")
    [segment] = [s for s in segments["segments"] if s["name"] == "night frames"]
    assert sorted(segment["items"]) == sorted(report["segment_frames"])

    # An asset uploaded by the client is in the project's hosted store, and a frame can use it.
    image = pathlib.Path(server.dir) / "cone.jpg"
    image.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg " * 100)
    asset = run_step(aquarium_python, server, "asset", "drive", "cams", str(image))
    assert asset["url"].startswith("hosted:aquarium/cams/") and asset["url"].endswith("_cone.jpg"), asset
    status, frame = api(server, "GET", f"{ds}/frames/with_asset")
    assert status == 200 and frame["sensors"][0]["url"] == asset["url"], frame
    status, signed = api(server, "POST", "/api/projects/drive/assets/sign", {"keys": [asset["url"][len("hosted:"):]]})
    assert status == 200, signed
    with urllib.request.urlopen(signed["urls"][0]["get_url"]) as response:
        assert response.read() == image.read_bytes()

    # The client deletes the dataset; milkglass no longer has it.
    assert run_step(aquarium_python, server, "delete", "drive", "cams") == {"exists": False}
    assert api(server, "GET", ds)[0] == 404


def test_an_unlabeled_dataset_keeps_its_proposals_as_an_inference_set(aquarium_python, server):
    assert run_step(aquarium_python, server, "unlabeled", "pool", "unlabeled_pool") == {"frame_ids": 30}
    ds = "/api/projects/pool/datasets/unlabeled_pool"
    assert api(server, "GET", ds)[1]["kind"] == "unlabeled"
    status, page = api(server, "GET", f"{ds}/frames?inference_set=proposals&limit=3")
    assert status == 200, page
    [first, *_] = page["frames"]
    assert first["frame_id"] == "pool_000" and first["metadata"] == {"city": "paris"}
    [proposal] = first["inferences"]
    assert proposal["label_id"] == "pool_000_p0" and proposal["class"] == "car" and proposal["confidence"] == 0.5
    assert api(server, "POST", f"{ds}/insights/similar", {"frame_id": "pool_004", "k": 3})[0] == 200


def test_anonymous_mode_data_is_never_loaded_by_the_server(aquarium_python, server):
    images = CountingServer()
    try:
        report = run_step(aquarium_python, server, "anonymous", "private", "drive", images.url)
        assert report == {"frame_ids": 600}
        status, project = api(server, "GET", "/api/projects/private")
        assert project["access_mode"] == "anonymous"
        ds = "/api/projects/private/datasets/drive"
        # Everything milkglass offers on the frames works from their metadata and embeddings.
        status, page = api(server, "GET", f"{ds}/frames?limit=4")
        assert status == 200 and [s["url"] for f in page["frames"] for s in f["sensors"]] == [
            "s3://private-bucket/drive/frame_00000.jpg", f"{images.url}/frame_00001.jpg",
            "s3://private-bucket/drive/frame_00002.jpg", f"{images.url}/frame_00003.jpg",
        ]
        assert api(server, "POST", f"{ds}/insights/similar", {"frame_id": "frame_00001", "k": 5})[0] == 200
        assert api(server, "GET", f"{ds}/insights/neighbors?kind=outliers")[0] == 200
        assert api(server, "GET", f"{ds}/status")[0] == 200
        time.sleep(2)  # any background check after the upload would have run by now
        assert images.hits == [], "milkglass loaded anonymous-mode data"
    finally:
        images.stop()


@pytest.mark.parametrize("step, says", [
    ("unknown_class", "Class truck is not in the project classmap"),
    ("wrong_dimension", "embedding has dimension 12, but this dataset's embeddings have dimension 16"),
    ("truncated", "is incomplete: 262144 of"),
])
def test_bad_input_through_the_client_names_the_problem_and_keeps_the_dataset(aquarium_python, server, step, says):
    project = f"bad_{step}"
    report = run_step(aquarium_python, server, step, project, "cams")
    assert report["error"] and says in report["error"], report
    # Only the first, good commit is there: not a frame of the refused one.
    assert frame_count(server, project, "cams") == 40
    status, page = api(server, "GET", f"/api/projects/{project}/datasets/cams/frames?limit=1&after=frame_00999")
    assert status == 200 and page["frames"] == [], page


def upload_file(server, token, project, dataset, content: bytes):
    """The resumable protocol, by hand: a URL, the session's start, one chunk."""
    import requests

    headers = {"x-illume-api-key": server.tokens.get(token, token)}
    r = requests.get(f"{server.http}/api/v1/projects/{project}/datasets/{dataset}/get_upload_url",
                     params={"upload_filename": "rows.jsonl", "resumable_upload": "true"}, headers=headers)
    assert r.status_code == 200, r.text
    urls = r.json()
    start = requests.post(urls["put_url"], headers={"x-upload-content-length": str(len(content))}, data=b"{}")
    assert start.status_code == 200, start.text
    put = requests.put(start.headers["location"], data=content,
                       headers={"content-range": f"bytes 0-{len(content) - 1}/{len(content)}"})
    assert put.status_code == 200, put.text
    return urls["download_url"]


def commit(server, token, project, body):
    import requests

    return requests.post(f"{server.http}/api/v1/projects/{project}/datasets", json=body,
                         headers={"x-illume-api-key": server.tokens.get(token, token)})


def row(frame_id, label_class="car"):
    frame = {"task_id": frame_id, "sensor_data": [{"sensor_id": "DEFAULT", "sensor_type": "IMAGE_V0",
             "data_urls": {"image_url": f"https://images.example.com/{frame_id}.jpg"}}], "change": "ADD"}
    labels = {"task_id": frame_id, "label_data": [{"uuid": f"{frame_id}_l", "label_type": "BBOX_2D",
              "label": label_class, "attributes": {"top": 1, "left": 2, "width": 3, "height": 4}, "change": "ADD"}]}
    return json.dumps(frame) + "\n", json.dumps(labels) + "\n"


def test_commits_are_checked_by_the_server_and_bound_to_their_uploader(server, aquarium_python):
    import requests

    headers = {"x-illume-api-key": server.tokens["olivia"]}
    r = requests.post(f"{server.http}/api/v1/projects", headers=headers,
                      json={"project_id": "raw", "label_class_map": [{"id": 1, "name": "car", "color": [1, 2, 3]}]})
    assert r.status_code == 200, r.text
    frames, labels = zip(*(row(f"f{i}") for i in range(3)))
    bad_frames, bad_labels = row("f9", label_class="truck")

    # A class the project does not have, from a client that skipped its own check: refused, nothing made.
    urls = [upload_file(server, "olivia", "raw", "d", "".join(frames + (bad_frames,)).encode()),
            upload_file(server, "olivia", "raw", "d", "".join(labels + (bad_labels,)).encode())]
    r = commit(server, "olivia", "raw", {"dataset_id": "d", "data_url": {"frame": urls[:1], "crop": urls[1:]}})
    assert r.status_code == 400 and 'unknown class "truck"' in r.json()["message"], r.text
    assert "line 4" in r.json()["message"] and "f9" in r.json()["message"]
    assert api(server, "GET", "/api/projects/raw/datasets/d")[0] == 404

    # Another owner cannot commit olivia's upload into his project, nor she a file twice.
    otto = milkglass("user", "add", "otto", "--role", "owner", "--data-dir", server.dir).strip().splitlines()[-1]
    server.tokens["otto"] = otto
    r = requests.post(f"{server.http}/api/v1/projects", headers={"x-illume-api-key": otto},
                      json={"project_id": "otto", "label_class_map": [{"id": 1, "name": "car"}]})
    assert r.status_code == 200, r.text
    good = [upload_file(server, "olivia", "raw", "d", "".join(frames).encode()),
            upload_file(server, "olivia", "raw", "d", "".join(labels).encode())]
    r = commit(server, "otto", "otto", {"dataset_id": "d", "data_url": {"frame": good[:1], "crop": good[1:]}})
    assert r.status_code == 400 and "is not a file uploaded to this server for this commit" in r.json()["message"]
    # A scientist may not even ask for an upload URL.
    r = requests.get(f"{server.http}/api/v1/projects/raw/datasets/d/get_upload_url",
                     params={"upload_filename": "x.jsonl", "resumable_upload": "true"},
                     headers={"x-illume-api-key": server.tokens["sam"]})
    assert r.status_code in (403, 404), r.text
    r = commit(server, "olivia", "raw", {"dataset_id": "d", "data_url": {"frame": good[:1], "crop": good[1:]}})
    assert r.status_code == 200, r.text
    assert frame_count(server, "raw", "d") == 3
    r = commit(server, "olivia", "raw", {"dataset_id": "d", "data_url": {"frame": good[:1], "crop": good[1:]}})
    assert r.status_code == 400, "a committed file is gone"

    # What milkglass cannot honour is refused by name, never dropped.
    for body, field in [
        ({"dataset_id": "d", "data_url": {"frame": []}, "embedding_distance_metric": "euclidean"},
         "embedding_distance_metric"),
        ({"dataset_id": "d", "data_url": {"frame": []}, "colour": 1}, "colour"),
        ({"dataset_id": "d", "data_url": {"frame": [], "frame_asset_url": ["x"]}}, "data_url.frame_asset_url"),
    ]:
        r = commit(server, "olivia", "raw", body)
        assert r.status_code == 400 and r.json()["error"]["field"] == field, r.text
    # A body past the JSON limit is refused whole, in the client's error shape.
    huge = b'{"project_id": "big", "external_metadata": {"pad": "' + b"x" * (2 << 20) + b'"}}'
    r = requests.post(f"{server.http}/api/v1/projects", data=huge,
                      headers={**headers, "content-type": "application/json"})
    assert r.status_code == 413 and r.json()["message"], r.text
    assert "big" not in [p["name"] for p in api(server, "GET", "/api/projects")[1]["projects"]]
    r = requests.get(f"{server.http}/api/v1/projects/raw/datasets/d/object_metadata_schema", headers=headers)
    assert r.status_code == 501 and "docs/AQUARIUM.md" in r.json()["message"]
