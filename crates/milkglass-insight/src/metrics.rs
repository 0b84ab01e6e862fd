//! Model metrics for detection: COCO AP/mAP computed exactly as pycocotools does, PR curves,
//! and a confusion matrix with a background row and column whose cells list the objects
//! behind them.
//!
//! pycocotools semantics reproduced here (for bounding boxes, area range "all", one maxDets):
//! detections of an image and class sorted by score (stable), cut to `max_dets`; ground truth
//! with `iscrowd` is ignored and sorted last; each detection, in order, takes the unmatched
//! ground truth with the highest IoU at or above the threshold, preferring non-ignored ones;
//! a crowd region can absorb any number of detections (IoU against it is intersection over the
//! detection's area); detections matched to ignored truth count neither way. Per class, all
//! images' detections are merged by score (stable, images in id order), precision is made
//! monotone from the right and read at 101 recall points (`searchsorted` left), and a class
//! without non-ignored truth is left out of the means (-1 in the arrays).

use serde::{Deserialize, Serialize};

/// A box in pixels: left, top, width, height (COCO's x, y, w, h).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Bbox {
    pub left: f64,
    pub top: f64,
    pub width: f64,
    pub height: f64,
}

impl Bbox {
    pub fn new(left: f64, top: f64, width: f64, height: f64) -> Bbox {
        Bbox { left, top, width, height }
    }

    pub fn area(&self) -> f64 {
        self.width * self.height
    }

    fn intersection(&self, other: &Bbox) -> f64 {
        let w = (self.left + self.width).min(other.left + other.width) - self.left.max(other.left);
        if w <= 0.0 {
            return 0.0;
        }
        let h = (self.top + self.height).min(other.top + other.height) - self.top.max(other.top);
        if h <= 0.0 {
            return 0.0;
        }
        w * h
    }

    /// Intersection over union.
    pub fn iou(&self, other: &Bbox) -> f64 {
        let i = self.intersection(other);
        if i == 0.0 {
            return 0.0;
        }
        i / (self.area() + other.area() - i)
    }

    /// IoU as COCO computes it against a crowd region: intersection over this box's area.
    fn iou_against(&self, truth: &Bbox, truth_is_crowd: bool) -> f64 {
        if !truth_is_crowd {
            return self.iou(truth);
        }
        let i = self.intersection(truth);
        if i == 0.0 { 0.0 } else { i / self.area() }
    }
}

/// A ground-truth label or an inference. `score` is the confidence (ignored for labels).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Object {
    pub frame: u32,
    pub class: u32,
    pub bbox: Bbox,
    #[serde(default)]
    pub iscrowd: bool,
    #[serde(default)]
    pub score: f64,
}

/// COCO's IoU thresholds 0.50:0.05:0.95, computed like `np.linspace` so they are bit-identical.
pub fn coco_iou_thresholds() -> Vec<f64> {
    linspace(0.5, 0.95, 10)
}

/// COCO's recall points 0:0.01:1.
pub fn coco_recall_thresholds() -> Vec<f64> {
    linspace(0.0, 1.0, 101)
}

fn linspace(start: f64, stop: f64, count: usize) -> Vec<f64> {
    let step = (stop - start) / (count - 1) as f64;
    let mut values: Vec<f64> = (0..count).map(|i| i as f64 * step + start).collect();
    values[count - 1] = stop;
    values
}

/// COCO evaluation results for area "all" and one maxDets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CocoEvaluation {
    pub classes: Vec<u32>,
    pub iou_thresholds: Vec<f64>,
    pub recall_thresholds: Vec<f64>,
    /// `precision[t][k][r]`: -1 for a class without non-ignored ground truth.
    pub precision: Vec<Vec<Vec<f64>>>,
    /// `recall[t][k]`: the recall reached with all detections; -1 as above.
    pub recall: Vec<Vec<f64>>,
    /// AP per class averaged over IoU thresholds (COCO's AP), -1 without ground truth.
    pub ap: Vec<f64>,
    /// AP per class at the first IoU threshold (0.5 for COCO's).
    pub ap50: Vec<f64>,
    /// mAP@[.5:.95] (COCO's stats[0]), mAP@0.5 (stats[1]), -1 when nothing was evaluable.
    pub map: f64,
    pub map50: f64,
}

impl CocoEvaluation {
    /// The PR curve of class index `k` at IoU threshold index `t`: (recall, precision) at each
    /// recall point.
    pub fn pr_curve(&self, t: usize, k: usize) -> Vec<(f64, f64)> {
        self.recall_thresholds.iter().copied().zip(self.precision[t][k].iter().copied()).collect()
    }
}

/// The per-image, per-class matching of one IoU threshold set.
struct ImageEvaluation {
    scores: Vec<f64>,
    /// `[t][d]`
    matched: Vec<Vec<bool>>,
    ignored: Vec<Vec<bool>>,
    truth_not_ignored: usize,
}

/// pycocotools' `evaluate` + `accumulate` for boxes. `classes` plays `getCatIds()` (every class
/// of the dataset, sorted here); frames are visited in ascending id like `imgIds`.
pub fn coco_evaluate(labels: &[Object], inferences: &[Object], classes: &[u32], max_dets: usize) -> CocoEvaluation {
    let iou_thresholds = coco_iou_thresholds();
    let recall_thresholds = coco_recall_thresholds();
    let mut classes = classes.to_vec();
    classes.sort_unstable();
    classes.dedup();
    let (t_count, r_count, k_count) = (iou_thresholds.len(), recall_thresholds.len(), classes.len());
    let mut precision = vec![vec![vec![-1.0; r_count]; k_count]; t_count];
    let mut recall = vec![vec![-1.0; k_count]; t_count];

    let group = |objects: &[Object]| {
        let mut by_key: std::collections::BTreeMap<(u32, u32), Vec<usize>> = std::collections::BTreeMap::new();
        for (n, o) in objects.iter().enumerate() {
            by_key.entry((o.class, o.frame)).or_default().push(n);
        }
        by_key
    };
    let labels_by = group(labels);
    let inferences_by = group(inferences);
    for (k, &class) in classes.iter().enumerate() {
        let mut frames: Vec<u32> = labels_by
            .range((class, 0)..=(class, u32::MAX))
            .chain(inferences_by.range((class, 0)..=(class, u32::MAX)))
            .map(|((_, frame), _)| *frame)
            .collect();
        frames.sort_unstable();
        frames.dedup();
        let empty = Vec::new();
        let evaluations: Vec<ImageEvaluation> = frames
            .iter()
            .map(|&frame| {
                let truth: Vec<&Object> =
                    labels_by.get(&(class, frame)).unwrap_or(&empty).iter().map(|&n| &labels[n]).collect();
                let detections: Vec<&Object> =
                    inferences_by.get(&(class, frame)).unwrap_or(&empty).iter().map(|&n| &inferences[n]).collect();
                evaluate_image(&truth, &detections, &iou_thresholds, max_dets)
            })
            .collect();
        let truth_count: usize = evaluations.iter().map(|e| e.truth_not_ignored).sum();
        if truth_count == 0 {
            continue;
        }
        // Merge all images' detections by score; the sort is stable, like numpy's mergesort.
        let mut merged: Vec<(f64, usize, usize)> = Vec::new();
        for (e, evaluation) in evaluations.iter().enumerate() {
            merged.extend(evaluation.scores.iter().enumerate().map(|(d, &s)| (s, e, d)));
        }
        merged.sort_by(|a, b| b.0.total_cmp(&a.0));
        for t in 0..t_count {
            let (mut tp, mut fp) = (0.0f64, 0.0f64);
            let mut recalls = Vec::with_capacity(merged.len());
            let mut precisions = Vec::with_capacity(merged.len());
            for &(_, e, d) in &merged {
                let evaluation = &evaluations[e];
                if !evaluation.ignored[t][d] {
                    if evaluation.matched[t][d] {
                        tp += 1.0;
                    } else {
                        fp += 1.0;
                    }
                }
                recalls.push(tp / truth_count as f64);
                precisions.push(tp / (fp + tp + f64::EPSILON));
            }
            recall[t][k] = recalls.last().copied().unwrap_or(0.0);
            for i in (1..precisions.len()).rev() {
                if precisions[i] > precisions[i - 1] {
                    precisions[i - 1] = precisions[i];
                }
            }
            let row = &mut precision[t][k];
            for (r, &threshold) in recall_thresholds.iter().enumerate() {
                let at = recalls.partition_point(|&rc| rc < threshold);
                row[r] = if at < precisions.len() { precisions[at] } else { 0.0 };
            }
        }
    }
    let mean_of = |values: &mut dyn Iterator<Item = f64>| {
        let (sum, count) = values.filter(|&v| v > -1.0).fold((0.0, 0usize), |(s, c), v| (s + v, c + 1));
        if count == 0 { -1.0 } else { sum / count as f64 }
    };
    let ap = (0..k_count).map(|k| mean_of(&mut (0..t_count).flat_map(|t| precision[t][k].iter().copied()))).collect();
    let ap50 = (0..k_count).map(|k| mean_of(&mut precision[0][k].iter().copied())).collect();
    let map = mean_of(&mut precision.iter().flatten().flatten().copied());
    let map50 = mean_of(&mut precision[0].iter().flatten().copied());
    CocoEvaluation { classes, iou_thresholds, recall_thresholds, precision, recall, ap, ap50, map, map50 }
}

fn evaluate_image(
    truth: &[&Object],
    detections: &[&Object],
    iou_thresholds: &[f64],
    max_dets: usize,
) -> ImageEvaluation {
    let mut truth: Vec<&Object> = truth.to_vec();
    // Ignored truth last, order otherwise kept (a stable sort, as pycocotools' mergesort).
    truth.sort_by_key(|g| g.iscrowd);
    let truth_ignored: Vec<bool> = truth.iter().map(|g| g.iscrowd).collect();
    let mut detections: Vec<&Object> = detections.to_vec();
    detections.sort_by(|a, b| b.score.total_cmp(&a.score));
    detections.truncate(max_dets);
    let ious: Vec<Vec<f64>> =
        detections.iter().map(|d| truth.iter().map(|g| d.bbox.iou_against(&g.bbox, g.iscrowd)).collect()).collect();
    let mut matched = vec![vec![false; detections.len()]; iou_thresholds.len()];
    let mut ignored = vec![vec![false; detections.len()]; iou_thresholds.len()];
    for (t, &threshold) in iou_thresholds.iter().enumerate() {
        let mut truth_taken = vec![false; truth.len()];
        for d in 0..detections.len() {
            let mut best_iou = threshold.min(1.0 - 1e-10);
            let mut best: Option<usize> = None;
            for g in 0..truth.len() {
                if truth_taken[g] && !truth[g].iscrowd {
                    continue;
                }
                // Once matched to real truth, never move to ignored truth.
                if best.is_some_and(|m| !truth_ignored[m]) && truth_ignored[g] {
                    break;
                }
                if ious[d][g] < best_iou {
                    continue;
                }
                best_iou = ious[d][g];
                best = Some(g);
            }
            if let Some(g) = best {
                ignored[t][d] = truth_ignored[g];
                matched[t][d] = true;
                truth_taken[g] = true;
            }
        }
    }
    ImageEvaluation {
        scores: detections.iter().map(|d| d.score).collect(),
        matched,
        ignored,
        truth_not_ignored: truth_ignored.iter().filter(|&&i| !i).count(),
    }
}

/// One cell of a confusion matrix: how many pairs, and which labels and inferences (by index
/// into the slices given) are behind it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConfusionCell {
    pub count: usize,
    pub labels: Vec<u32>,
    pub inferences: Vec<u32>,
}

/// Rows are true classes, columns predicted classes, each in `classes` order with the
/// background last: row "background" holds unmatched inferences (false positives), column
/// "background" unmatched labels (misses).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfusionMatrix {
    pub classes: Vec<u32>,
    pub iou_threshold: f64,
    pub confidence_threshold: f64,
    pub cells: Vec<Vec<ConfusionCell>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassScores {
    pub class: u32,
    pub true_positives: usize,
    pub false_positives: usize,
    pub false_negatives: usize,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

impl ConfusionMatrix {
    /// Precision, recall and F1 per class read off the matrix: the diagonal are hits, the rest
    /// of a column false positives, the rest of a row misses.
    pub fn class_scores(&self) -> Vec<ClassScores> {
        let k = self.classes.len();
        (0..k)
            .map(|c| {
                let tp = self.cells[c][c].count;
                let column: usize = (0..=k).map(|r| self.cells[r][c].count).sum();
                let row: usize = (0..=k).map(|p| self.cells[c][p].count).sum();
                let (fp, fn_) = (column - tp, row - tp);
                let precision = if tp + fp == 0 { 0.0 } else { tp as f64 / (tp + fp) as f64 };
                let recall = if tp + fn_ == 0 { 0.0 } else { tp as f64 / (tp + fn_) as f64 };
                let f1 = if precision + recall == 0.0 { 0.0 } else { 2.0 * precision * recall / (precision + recall) };
                ClassScores {
                    class: self.classes[c],
                    true_positives: tp,
                    false_positives: fp,
                    false_negatives: fn_,
                    precision,
                    recall,
                    f1,
                }
            })
            .collect()
    }
}

/// Matches inferences at or above `confidence_threshold` to labels per frame, most confident
/// first: each takes the unmatched label with IoU >= `iou_threshold` of its own class with the
/// highest IoU, or failing that of any class (a confusion). Crowd labels absorb the inferences
/// on them and count in no cell. Objects of classes outside `classes` are left out.
pub fn confusion_matrix(
    labels: &[Object],
    inferences: &[Object],
    classes: &[u32],
    iou_threshold: f64,
    confidence_threshold: f64,
) -> ConfusionMatrix {
    let k = classes.len();
    let index_of = |class: u32| classes.iter().position(|&c| c == class);
    let mut cells = vec![vec![ConfusionCell::default(); k + 1]; k + 1];
    let mut by_frame: std::collections::BTreeMap<u32, (Vec<usize>, Vec<usize>)> = std::collections::BTreeMap::new();
    for (n, label) in labels.iter().enumerate() {
        if index_of(label.class).is_some() {
            by_frame.entry(label.frame).or_default().0.push(n);
        }
    }
    for (n, inference) in inferences.iter().enumerate() {
        if index_of(inference.class).is_some() && inference.score >= confidence_threshold {
            by_frame.entry(inference.frame).or_default().1.push(n);
        }
    }
    for (truth, mut predicted) in by_frame.into_values() {
        predicted.sort_by(|&a, &b| inferences[b].score.total_cmp(&inferences[a].score));
        let mut taken = vec![false; truth.len()];
        for &p in &predicted {
            let inference = &inferences[p];
            let mut best: Option<(bool, f64, usize)> = None;
            let mut on_crowd = false;
            for (g, &l) in truth.iter().enumerate() {
                let label = &labels[l];
                if label.iscrowd {
                    on_crowd |= inference.bbox.iou_against(&label.bbox, true) >= iou_threshold;
                    continue;
                }
                if taken[g] {
                    continue;
                }
                let iou = inference.bbox.iou(&label.bbox);
                if iou < iou_threshold {
                    continue;
                }
                let key = (label.class == inference.class, iou, g);
                if best.is_none_or(|b| (key.0, key.1) > (b.0, b.1)) {
                    best = Some(key);
                }
            }
            let column = index_of(inference.class).expect("filtered above");
            match best {
                Some((_, _, g)) => {
                    taken[g] = true;
                    let label = &labels[truth[g]];
                    let cell = &mut cells[index_of(label.class).expect("filtered above")][column];
                    cell.count += 1;
                    cell.labels.push(truth[g] as u32);
                    cell.inferences.push(p as u32);
                }
                None if on_crowd => {}
                None => {
                    let cell = &mut cells[k][column];
                    cell.count += 1;
                    cell.inferences.push(p as u32);
                }
            }
        }
        for (g, &l) in truth.iter().enumerate() {
            if !taken[g] && !labels[l].iscrowd {
                let cell = &mut cells[index_of(labels[l].class).expect("filtered above")][k];
                cell.count += 1;
                cell.labels.push(l as u32);
            }
        }
    }
    ConfusionMatrix { classes: classes.to_vec(), iou_threshold, confidence_threshold, cells }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(frame: u32, class: u32, bbox: [f64; 4], score: f64) -> Object {
        Object { frame, class, bbox: Bbox::new(bbox[0], bbox[1], bbox[2], bbox[3]), iscrowd: false, score }
    }

    #[test]
    fn iou_of_known_boxes() {
        let a = Bbox::new(0.0, 0.0, 10.0, 10.0);
        let b = Bbox::new(5.0, 0.0, 10.0, 10.0);
        assert!((a.iou(&b) - 50.0 / 150.0).abs() < 1e-12);
        assert_eq!(a.iou(&Bbox::new(10.0, 0.0, 5.0, 5.0)), 0.0, "touching boxes do not overlap");
        assert!((b.iou_against(&a, true) - 0.5).abs() < 1e-12, "crowd IoU is over the detection's area");
    }

    #[test]
    fn thresholds_are_numpy_linspace() {
        let t = coco_iou_thresholds();
        assert_eq!(t.len(), 10);
        assert_eq!(t[0], 0.5);
        assert_eq!(t[9], 0.95);
        assert_eq!(coco_recall_thresholds()[100], 1.0);
        assert_eq!(coco_recall_thresholds()[7], 7.0 * 0.01);
    }

    #[test]
    fn perfect_detections_score_one_and_a_miss_halves_recall() {
        let labels = vec![object(0, 1, [0.0, 0.0, 10.0, 10.0], 0.0), object(1, 1, [5.0, 5.0, 20.0, 20.0], 0.0)];
        let inferences = vec![object(0, 1, [0.0, 0.0, 10.0, 10.0], 0.9), object(1, 1, [5.0, 5.0, 20.0, 20.0], 0.8)];
        let full = coco_evaluate(&labels, &inferences, &[1, 2], 100);
        assert_eq!(full.map, 1.0);
        assert_eq!(full.ap[1], -1.0, "class 2 has no ground truth");
        let half = coco_evaluate(&labels, &inferences[..1], &[1], 100);
        assert_eq!(half.recall[0][0], 0.5);
        // Precision 1 up to recall 0.5, then 0: 51 of 101 points.
        assert!((half.map50 - 51.0 / 101.0).abs() < 1e-12);
    }

    #[test]
    fn confusion_cells_name_their_objects() {
        let labels = vec![
            object(0, 0, [0.0, 0.0, 10.0, 10.0], 0.0),
            object(0, 1, [50.0, 50.0, 10.0, 10.0], 0.0),
            object(1, 0, [0.0, 0.0, 10.0, 10.0], 0.0),
        ];
        let inferences = vec![
            object(0, 0, [0.0, 0.0, 10.0, 11.0], 0.9),   // hit
            object(0, 0, [50.0, 50.0, 10.0, 10.0], 0.8), // class 1 seen as 0
            object(1, 1, [80.0, 80.0, 5.0, 5.0], 0.7),   // false positive
            object(1, 0, [0.0, 0.0, 10.0, 10.0], 0.1),   // below the confidence threshold
        ];
        let matrix = confusion_matrix(&labels, &inferences, &[0, 1], 0.5, 0.5);
        assert_eq!(matrix.cells[0][0].labels, vec![0]);
        assert_eq!(matrix.cells[0][0].inferences, vec![0]);
        assert_eq!(matrix.cells[1][0].labels, vec![1]);
        assert_eq!(matrix.cells[1][0].inferences, vec![1]);
        assert_eq!(matrix.cells[2][1].inferences, vec![2]);
        assert_eq!(matrix.cells[0][2].labels, vec![2], "frame 1's label is missed");
        let scores = matrix.class_scores();
        assert_eq!((scores[0].true_positives, scores[0].false_positives, scores[0].false_negatives), (1, 1, 1));
        assert_eq!(scores[0].precision, 0.5);
        assert_eq!(scores[1].recall, 0.0);
    }
}
