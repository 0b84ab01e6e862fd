//! milkglass-insight's COCO evaluation against pycocotools' own numbers on the same cases.
//! The fixture comes from tests/fixtures/make_coco_fixtures.py (committed beside it), so this
//! test needs no Python.

use milkglass_insight::metrics::{Bbox, Object, coco_evaluate};
use serde_json::Value;

const TOLERANCE: f64 = 1e-4;

fn objects(values: &Value, with_score: bool) -> Vec<Object> {
    values
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            let b: Vec<f64> = v["bbox"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
            Object {
                frame: v["frame"].as_u64().unwrap() as u32,
                class: v["class"].as_u64().unwrap() as u32,
                bbox: Bbox::new(b[0], b[1], b[2], b[3]),
                iscrowd: v.get("iscrowd").and_then(Value::as_bool).unwrap_or(false),
                score: if with_score { v["score"].as_f64().unwrap() } else { 0.0 },
            }
        })
        .collect()
}

fn floats(value: &Value) -> Vec<f64> {
    value.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

fn assert_close(what: &str, got: f64, expected: f64) {
    assert!((got - expected).abs() <= TOLERANCE, "{what}: milkglass {got}, pycocotools {expected}");
}

#[test]
fn ap_map_recall_and_pr_curves_equal_pycocotools() {
    let fixture: Value = serde_json::from_str(include_str!("fixtures/coco_eval.json")).expect("fixture is valid JSON");
    for case in fixture.as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let classes: Vec<u32> =
            case["classes"].as_array().unwrap().iter().map(|c| c.as_u64().unwrap() as u32).collect();
        let labels = objects(&case["labels"], false);
        let inferences = objects(&case["inferences"], true);
        let expected = &case["expected"];
        let result = coco_evaluate(&labels, &inferences, &classes, 100);
        assert_close(&format!("{name} mAP"), result.map, expected["map"].as_f64().unwrap());
        assert_close(&format!("{name} mAP@0.5"), result.map50, expected["map50"].as_f64().unwrap());
        for (k, (ap, ap50)) in floats(&expected["ap"]).into_iter().zip(floats(&expected["ap50"])).enumerate() {
            assert_close(&format!("{name} AP class {}", result.classes[k]), result.ap[k], ap);
            assert_close(&format!("{name} AP50 class {}", result.classes[k]), result.ap50[k], ap50);
        }
        for (t, key) in [(0, "pr_curve_iou50"), (5, "pr_curve_iou75")] {
            for (k, curve) in expected[key].as_array().unwrap().iter().enumerate() {
                let ours = result.pr_curve(t, k);
                for (r, expected) in floats(curve).into_iter().enumerate() {
                    assert_close(&format!("{name} {key} class {} point {r}", result.classes[k]), ours[r].1, expected);
                }
            }
        }
        for (t, row) in expected["recall"].as_array().unwrap().iter().enumerate() {
            for (k, expected) in floats(row).into_iter().enumerate() {
                assert_close(&format!("{name} recall t{t} class {}", result.classes[k]), result.recall[t][k], expected);
            }
        }
        println!("{name}: mAP {:.6} (pycocotools {:.6})", result.map, expected["map"].as_f64().unwrap());
    }
}
