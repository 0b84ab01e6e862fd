"""A script as Aquarium's docs teach it, run with the unmodified `aquariumlearning` 1.0.7 client
against a milkglass server (by tests/python/test_aquarium.py, in the client's own virtual
environment). It prints one JSON report on its last line.

    python aquarium_flow.py STEP ENDPOINT TOKEN PROJECT DATASET [IMAGE_BASE]

STEP is one of: upload, asset, delete, small, unlabeled, anonymous, unknown_class, wrong_dimension, truncated.
"""

import datetime
import json
import math
import random
import sys

import requests

# The client asks pypi.org for a newer version when it is imported; answer it here, so that the
# test does not depend on pypi.org once the client is installed.
_real_get = requests.get


def _offline_pypi(url, *args, **kwargs):
    if "pypi.org" in str(url):
        response = requests.Response()
        response.status_code = 404
        return response
    return _real_get(url, *args, **kwargs)


requests.get = _offline_pypi
import aquariumlearning as al  # noqa: E402
import aquariumlearning.util as al_util  # noqa: E402

requests.get = _real_get

# Small chunks, so that each file goes up in several Content-Range PUTs (the client's default
# is 8 MiB; the resumable protocol needs a multiple of 256 KiB).
al_util.MAX_CHUNK_SIZE = 256 * 1024

STEP, ENDPOINT, TOKEN, PROJECT, DATASET = sys.argv[1:6]
IMAGE_BASE = sys.argv[6] if len(sys.argv) > 6 else "https://images.example.com/drive"
FRAMES = 1100  # more than one batch file (1000 frames each) and several chunks per file
DIM = 16
CLASSES = ["car", "pedestrian", "bike"]
CITIES = ["paris", "lyon", "nantes"]
MISLABELED = set(range(0, FRAMES, 50))  # one frame in 50: the label says another class than the model

client = al.Client(api_endpoint=ENDPOINT)
client.set_credentials(api_key=TOKEN)


def vector(cluster: int, rng: random.Random):
    """Embeddings in three tight clusters, one per city, so that neighbours share a city."""
    v = [rng.gauss(0, 0.05) for _ in range(DIM)]
    v[cluster] += 1.0
    return v


def true_class(i: int) -> str:
    return CLASSES[i % 3]


def given_class(i: int) -> str:
    return CLASSES[(i + 1) % 3] if i in MISLABELED else true_class(i)


def make_dataset(name, count, dim=DIM, url=None, anonymous=False, offset=0, classes=None):
    rng = random.Random(7 + offset)
    dataset = client.initialize_labeled_dataset(
        name, PROJECT, frame_embedding_model="mobilenet", label_embedding_model="mobilenet-crops",
        external_metadata={"source": "aquarium script"}, is_anon_mode=anonymous,
    )
    sent, frames = {}, {}
    for n in range(count):
        i = n + offset
        frame_id = f"frame_{i:05d}"
        city = i % 3
        box = {"top": 10.0 + i % 40, "left": 20.0 + i % 30, "width": 50.0 + i % 7, "height": 40.0 + i % 5}
        labels = [
            al.Bbox2DLabel(
                id=f"{frame_id}_gt0", classification=(classes or given_class)(i), **box,
                user_attrs={"occluded": i % 4 == 0}, embedding=[x * 0.5 for x in vector(city, rng)][:dim],
            )
        ]
        image = url(i) if url else f"{IMAGE_BASE}/{frame_id}.jpg"
        frames[frame_id] = al.LabeledFrame(
            dataset=dataset,
            frame_id=frame_id,
            sensor_data=[al.Image(image_url=image, width=640, height=480)],
            labels=labels,
            date_captured=f"2024-05-{1 + i % 28:02d}T12:{i % 60:02d}:00",
            geo_data=al.GeoData(48.0 + (i % 100) / 1000, 2.0 + (i % 100) / 1000),
            user_metadata=[
                al.UserMetadataEntry("city", CITIES[city]),
                al.UserMetadataEntry("speed", float(i % 90) + 0.5),
                al.UserMetadataEntry("lane", i % 4),
                al.UserMetadataEntry("night", i % 5 == 0),
            ],
            embedding=vector(city, rng)[:dim],
        )
        sent[frame_id] = {"box": box, "class": (classes or given_class)(i), "city": CITIES[city], "image": image}
    return dataset, sent, frames


def instant(text):
    """A date as the instant it names: milkglass keeps dates in UTC (a date without an offset is
    taken as UTC) and writes them back with the offset."""
    value = datetime.datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc)


def comparable(frame):
    """What the client itself uploads for a frame, without what is not returned (embeddings),
    dates as instants."""
    row = frame.to_dict()
    row.pop("reuse_latest_embedding", None)
    if row.get("date_captured"):
        row["date_captured"] = instant(row["date_captured"])
    for sensor in row.get("sensor_data", []):
        if sensor.get("date_captured"):
            sensor["date_captured"] = instant(sensor["date_captured"])
    crops = frame._crop_set.to_dict()["label_data"]
    for crop in crops:
        crop.pop("reuse_latest_embedding", None)
    return row, sorted(crops, key=lambda c: c["uuid"])


def differences(sent_frame, got_frame):
    """Field by field: each key of the sent frame's row and of each of its labels."""
    (sent_row, sent_crops), (got_row, got_crops) = comparable(sent_frame), comparable(got_frame)
    out = []
    for key in sorted(set(sent_row) | set(got_row)):
        if sent_row.get(key) != got_row.get(key):
            out.append({"field": key, "sent": sent_row.get(key), "got": got_row.get(key)})
    if len(sent_crops) != len(got_crops):
        out.append({"field": "label_data", "sent": len(sent_crops), "got": len(got_crops)})
    for a, b in zip(sent_crops, got_crops):
        for key in sorted(set(a) | set(b)):
            if key == "attributes":
                for attr in sorted(set(a[key]) | set(b[key])):
                    x, y = a[key].get(attr), b[key].get(attr)
                    if not (x == y or (isinstance(x, float) and isinstance(y, float) and math.isclose(x, y))):
                        out.append({"field": f"label_data.{a['uuid']}.attributes.{attr}", "sent": x, "got": y})
            elif a.get(key) != b.get(key):
                out.append({"field": f"label_data.{a['uuid']}.{key}", "sent": a.get(key), "got": b.get(key)})
    return out


def upload_inferences(name, sent, dim=DIM):
    rng = random.Random(11)
    inference_set = client.initialize_inference_set(
        name, PROJECT, DATASET, inference_embedding_model="mobilenet-crops",
    )
    for n, frame_id in enumerate(sorted(sent)):
        i = int(frame_id.split("_")[1])
        box = sent[frame_id]["box"]
        al.InferenceFrame(
            inference_set=inference_set,
            frame_id=frame_id,
            inferences=[
                al.Bbox2DInference(
                    id=f"{frame_id}_inf0", classification=true_class(i), confidence=0.9 + (n % 10) / 100,
                    top=box["top"] + 1, left=box["left"] + 1, width=box["width"], height=box["height"],
                    embedding=[rng.gauss(0, 1) for _ in range(dim)],
                )
            ],
        )
    client.create_or_update_inference_set(inference_set, wait_until_finish=True)


def report(**values):
    print(json.dumps(values, default=str))


def refused(action):
    """Runs a step that must fail, and returns the client's error text."""
    try:
        action()
    except Exception as e:  # the client raises plain Exceptions with the server's message
        return str(e)
    return None


if STEP == "upload":
    class_map = al.LabelClassMap.from_classnames(CLASSES)
    client.create_project(
        PROJECT, class_map, primary_task="2D_OBJECT_DETECTION", external_metadata={"team": "perception"},
    )
    dataset, sent, expected = make_dataset(DATASET, FRAMES)
    client.create_or_update_labeled_dataset(dataset, wait_until_finish=True)
    upload_inferences("model_v1", sent)
    client.update_inferences_metadata(PROJECT, "model_v1", {"epoch": 12})
    ids = client.get_frame_ids(PROJECT, DATASET)
    one = client.get_frame(PROJECT, DATASET, "frame_00007")
    some = client.get_frames(PROJECT, DATASET, sorted(expected)[:300])
    some.update(client.get_frames(PROJECT, DATASET, sorted(expected)[300:]))
    missing = sorted(set(expected) - set(some))
    diffs = {fid: d for fid in sorted(set(expected) & set(some)) if (d := differences(expected[fid], some[fid]))}
    single = differences(expected["frame_00007"], one)
    segments = client.get_segment_manager(PROJECT)
    night = [fid for fid in sorted(expected) if int(fid.split("_")[1]) % 5 == 0][:25]
    elements = [al.segments.SegmentElement(element_id=fid, frame_id=fid, element_type="frame", dataset=DATASET) for fid in night]
    segment_id = segments.create_segment("night frames", DATASET, elements, "frame")
    fetched = segments.get_segment(segment_id)
    metrics = client.get_metrics_manager(PROJECT).get_metrics(DATASET, "model_v1", confidence_pct=50, iou_pct=50)
    report(
        segment_elements=sorted(e.frame_id for e in fetched.elements),
        metrics={k: (v["score"] if isinstance(v, dict) else v) for k, v in metrics[0].items()},
        frame_ids=len(ids), unique_ids=len(set(ids)), compared=len(some), missing=missing[:10],
        differences=dict(list(diffs.items())[:5]), differing_frames=len(diffs), single=single,
        segment_id=segment_id, segment_frames=night,
        segments=[s.name for s in segments.list_segment_summaries()],
        processed=client.is_dataset_processed(PROJECT, DATASET),
        mislabeled=[f"frame_{i:05d}" for i in sorted(MISLABELED)],
    )
elif STEP == "asset":
    # IMAGE_BASE is a local file here: mirrored into the hosted store, and used by a frame.
    url = client.upload_asset_from_filepath(PROJECT, DATASET, IMAGE_BASE)
    dataset = client.initialize_labeled_dataset(DATASET, PROJECT)
    al.LabeledFrame(dataset=dataset, frame_id="with_asset", sensor_data=[al.Image(image_url=url)], labels=[])
    client.create_or_update_labeled_dataset(dataset, wait_until_finish=True)
    report(url=url)
elif STEP == "delete":
    client.delete_dataset(PROJECT, DATASET)
    report(exists=client.dataset_exists(PROJECT, DATASET))
elif STEP == "small":
    # IMAGE_BASE is one image URL here, which every frame shows.
    client.create_project(PROJECT, al.LabelClassMap.from_classnames(CLASSES), primary_task="2D_OBJECT_DETECTION")
    dataset, _, _ = make_dataset(DATASET, 40, url=lambda i: IMAGE_BASE)
    client.create_or_update_labeled_dataset(dataset, wait_until_finish=True)
    report(frame_ids=len(client.get_frame_ids(PROJECT, DATASET)))
elif STEP == "unlabeled":
    # A pool of unlabeled frames with a model's proposals, as for active learning.
    client.create_project(PROJECT, al.LabelClassMap.from_classnames(CLASSES), primary_task="2D_OBJECT_DETECTION")
    rng = random.Random(3)
    pool = client.initialize_unlabeled_dataset(DATASET, PROJECT, frame_embedding_model="mobilenet")
    for i in range(30):
        al.UnlabeledFrame(
            dataset=pool, frame_id=f"pool_{i:03d}",
            sensor_data=[al.Image(image_url=f"{IMAGE_BASE}/pool_{i:03d}.jpg", width=640, height=480)],
            proposals=[al.Bbox2DInference(id=f"pool_{i:03d}_p0", classification=true_class(i), confidence=0.5 + i / 100,
                                          top=5.0, left=6.0, width=30.0, height=20.0)],
            user_metadata=[al.UserMetadataEntry("city", CITIES[i % 3])],
            embedding=vector(i % 3, rng),
        )
    client.create_or_update_unlabeled_dataset(pool, wait_until_finish=True)
    report(frame_ids=len(client.get_frame_ids(PROJECT, DATASET)))
elif STEP == "anonymous":
    client.create_project(PROJECT, al.LabelClassMap.from_classnames(CLASSES), primary_task="2D_OBJECT_DETECTION")
    # Every other frame in a private bucket, the others on a server only the owner's network reaches.
    bucket = lambda i: f"s3://private-bucket/drive/frame_{i:05d}.jpg" if i % 2 == 0 else f"{IMAGE_BASE}/frame_{i:05d}.jpg"
    dataset, sent, _ = make_dataset(DATASET, 600, url=bucket, anonymous=True)
    client.create_or_update_labeled_dataset(dataset, wait_until_finish=True)
    # Not get_frames: the client checks the URLs of the frames it rebuilds, and raises for a
    # bucket path without an embedding to hand (as it did against Aquarium; docs/AQUARIUM.md).
    report(frame_ids=len(client.get_frame_ids(PROJECT, DATASET)))
elif STEP == "unknown_class":
    client.create_project(PROJECT, al.LabelClassMap.from_classnames(CLASSES), primary_task="2D_OBJECT_DETECTION")
    first, _, _ = make_dataset(DATASET, 40)
    client.create_or_update_labeled_dataset(first, wait_until_finish=True)
    # The client checks classes against the class map it reads from the server, as the frame is made.
    truck = lambda i: "truck" if i == 1020 else true_class(i)
    report(error=refused(lambda: client.create_or_update_labeled_dataset(
        make_dataset(DATASET, 40, offset=1000, classes=truck)[0], wait_until_finish=True)))
elif STEP == "wrong_dimension":
    client.create_project(PROJECT, al.LabelClassMap.from_classnames(CLASSES), primary_task="2D_OBJECT_DETECTION")
    first, _, _ = make_dataset(DATASET, 40)
    client.create_or_update_labeled_dataset(first, wait_until_finish=True)
    bad, _, _ = make_dataset(DATASET, 40, offset=1000, dim=12)
    report(error=refused(lambda: client.create_or_update_labeled_dataset(bad, wait_until_finish=True)))
elif STEP == "truncated":
    client.create_project(PROJECT, al.LabelClassMap.from_classnames(CLASSES), primary_task="2D_OBJECT_DETECTION")
    first, _, _ = make_dataset(DATASET, 40)
    client.create_or_update_labeled_dataset(first, wait_until_finish=True)
    # A client whose upload stops after its first chunk, believing it has finished (a dropped
    # connection its retry logic missed): the commit then names a file that is incomplete.
    from google.resumable_media.requests import ResumableUpload

    original = ResumableUpload.transmit_next_chunk

    def first_chunk_only(self, transport, *args, **kwargs):
        response = original(self, transport, *args, **kwargs)
        self._finished = True
        return response

    ResumableUpload.transmit_next_chunk = first_chunk_only
    bad, _, _ = make_dataset(DATASET, 800, offset=1000)
    report(error=refused(lambda: client.create_or_update_labeled_dataset(bad, wait_until_finish=True)))
else:
    raise SystemExit(f"unknown step {STEP!r}")
