//! Likely label mistakes, ranked, with the kind of mistake.
//!
//! Detection: per frame, inferences are matched to labels of their own class greedily by
//! confidence at IoU >= 0.5 (as COCO does). What is left over, and how it overlaps, names the
//! issue:
//! - **missing label**: an inference no label of any class overlaps;
//! - **class confusion**: an inference of another class sits on an unmatched label's box;
//! - **bad localization**: the label's own-class inference overlaps it only partly (matched
//!   with a low IoU, or overlapping but below the match threshold);
//! - **duplicate label**: a second label of the same class on (nearly) the same box;
//! - **spurious label**: a label nothing supports.
//!
//! Every score is in [0, 1] and reads as "how strongly the evidence says this is a mistake",
//! from quantities with the same meaning in every dataset (the model's confidence, IoU, the
//! share of a crop's embedding neighbours with another class), never from a rank or a
//! dataset-wide normalisation, so 0.8 here means what 0.8 means elsewhere. This follows
//! FiftyOne's mistakenness (confidence-weighted, missing/spurious flags) and Cleanlab's
//! ObjectLab (overlooked / swap / bad location), with two departures: the model's confidence is
//! used across its whole range rather than past a fixed 0.95 cut (real detectors are rarely that
//! sure), and crop-embedding neighbours, when given, add a model-free vote on the class.
//!
//! Classification: confident learning (Northcutt et al.): per-class thresholds are the mean
//! self-confidence of the class's examples, the confident joint counts each example under the
//! most probable class whose threshold it passes, and its off-diagonal is the issue list, ranked
//! by the normalised margin between the given class and the best other one.

use crate::metrics::Object;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IssueKind {
    MissingLabel,
    ClassConfusion,
    BadLocalization,
    DuplicateLabel,
    SpuriousLabel,
}

impl IssueKind {
    pub fn name(self) -> &'static str {
        match self {
            IssueKind::MissingLabel => "missing_label",
            IssueKind::ClassConfusion => "class_confusion",
            IssueKind::BadLocalization => "bad_localization",
            IssueKind::DuplicateLabel => "duplicate_label",
            IssueKind::SpuriousLabel => "spurious_label",
        }
    }
}

/// One likely mistake. Indices point into the label and inference slices given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Issue {
    pub kind: IssueKind,
    pub frame: u32,
    /// The faulty label (None for a missing label).
    pub label: Option<u32>,
    /// The inference that gives it away (None for duplicates and unsupported labels).
    pub inference: Option<u32>,
    /// For a duplicate: the label it copies.
    pub other_label: Option<u32>,
    /// The class the evidence points to (confusions, missing labels).
    pub suggested_class: Option<u32>,
    /// IoU between the label and the inference (or the copied label), when both exist.
    pub iou: Option<f64>,
    pub score: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectionParams {
    /// IoU at which an inference confirms a label of its class.
    pub match_iou: f64,
    /// Below this IoU boxes do not overlap for any purpose.
    pub min_overlap: f64,
    /// Localization is good enough at or above this IoU against a confident own-class
    /// inference; below it the score rises linearly, to 1 at `bad_localization_iou`.
    pub good_localization_iou: f64,
    pub bad_localization_iou: f64,
    /// Two labels of one class this close are one object labelled twice.
    pub duplicate_iou: f64,
    /// The most an unsupported label can score: a label a detector missed is far more often
    /// the detector's fault than the label's.
    pub spurious_weight: f64,
    /// Inferences below this confidence are ignored.
    pub min_confidence: f64,
}

impl Default for DetectionParams {
    fn default() -> Self {
        DetectionParams {
            match_iou: 0.5,
            min_overlap: 0.1,
            good_localization_iou: 0.75,
            bad_localization_iou: 0.25,
            duplicate_iou: 0.9,
            spurious_weight: 0.3,
            min_confidence: 0.05,
        }
    }
}

/// Optional model-free evidence per label, from its crop embedding's neighbours
/// ([`crate::neighbors::label_agreement`]): the share of neighbours with another class, and the
/// class most of them carry.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NeighborVote {
    pub disagreement: f32,
    pub neighbor_class: u32,
}

/// Detection issues over all frames, highest score first (ties: frame, then label order).
pub fn detection_issues(
    labels: &[Object],
    inferences: &[Object],
    votes: Option<&[Option<NeighborVote>]>,
    params: &DetectionParams,
) -> Vec<Issue> {
    if let Some(votes) = votes {
        assert_eq!(votes.len(), labels.len(), "one vote slot per label");
    }
    let mut by_frame: BTreeMap<u32, (Vec<u32>, Vec<u32>)> = BTreeMap::new();
    for (n, label) in labels.iter().enumerate() {
        if !label.iscrowd {
            by_frame.entry(label.frame).or_default().0.push(n as u32);
        }
    }
    for (n, inference) in inferences.iter().enumerate() {
        if inference.score >= params.min_confidence {
            by_frame.entry(inference.frame).or_default().1.push(n as u32);
        }
    }
    for (_, frame_inferences) in by_frame.values_mut() {
        frame_inferences.sort_by(|&a, &b| inferences[b as usize].score.total_cmp(&inferences[a as usize].score));
    }
    let mut observations = Vec::new();
    for (frame_labels, frame_inferences) in by_frame.values() {
        let (_, matched) = match_frame(labels, inferences, frame_labels, frame_inferences, params);
        observations.extend(frame_inferences.iter().zip(matched).map(|(&i, m)| (inferences[i as usize].score, m)));
    }
    let calibration = Calibration::fit(observations);
    let mut issues = Vec::new();
    for (frame, (frame_labels, frame_inferences)) in by_frame {
        frame_issues(
            frame,
            labels,
            inferences,
            &frame_labels,
            &frame_inferences,
            votes,
            params,
            &calibration,
            &mut issues,
        );
    }
    issues.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(a.frame.cmp(&b.frame))
            .then(a.label.cmp(&b.label))
            .then(a.inference.cmp(&b.inference))
    });
    issues
}

/// Own-class matching in one frame, most confident inference first, best IoU wins: each
/// matched label's (inference, IoU), and per inference slot whether it matched.
fn match_frame(
    labels: &[Object],
    inferences: &[Object],
    frame_labels: &[u32],
    frame_inferences: &[u32],
    params: &DetectionParams,
) -> (BTreeMap<u32, (u32, f64)>, Vec<bool>) {
    let mut label_match: BTreeMap<u32, (u32, f64)> = BTreeMap::new();
    let mut inference_matched = vec![false; frame_inferences.len()];
    for (slot, &i) in frame_inferences.iter().enumerate() {
        let inference = &inferences[i as usize];
        let best = frame_labels
            .iter()
            .filter(|&&l| labels[l as usize].class == inference.class && !label_match.contains_key(&l))
            .map(|&l| (l, labels[l as usize].bbox.iou(&inference.bbox)))
            .filter(|&(_, o)| o >= params.match_iou)
            .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)));
        if let Some((l, o)) = best {
            label_match.insert(l, (i, o));
            inference_matched[slot] = true;
        }
    }
    (label_match, inference_matched)
}

/// What a confidence means for this model: the share of its inferences at that confidence that
/// the labels confirm, fitted as a non-decreasing step function (isotonic regression by pool
/// adjacent violators). Detectors' raw confidences are rarely calibrated (one may put all its
/// clutter at 0.3, another at 0.6); the calibrated value is a probability, so scores built on it
/// mean the same in every dataset. The few label errors among the labels barely move it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// (highest confidence of the step, probability), ascending.
    steps: Vec<(f64, f64)>,
}

impl Calibration {
    /// Fewer inferences than this and the raw confidence is used as is.
    const MIN_INFERENCES: usize = 50;

    pub fn fit(mut observations: Vec<(f64, bool)>) -> Calibration {
        if observations.len() < Self::MIN_INFERENCES {
            return Calibration { steps: Vec::new() };
        }
        observations.sort_by(|a, b| a.0.total_cmp(&b.0));
        // Blocks of (sum of hits, count, highest confidence), merged while decreasing.
        let mut blocks: Vec<(f64, f64, f64)> = Vec::new();
        for (confidence, hit) in observations {
            blocks.push((if hit { 1.0 } else { 0.0 }, 1.0, confidence));
            while blocks.len() > 1 {
                let (last, before) = (blocks[blocks.len() - 1], blocks[blocks.len() - 2]);
                if before.0 / before.1 < last.0 / last.1 {
                    break;
                }
                blocks.pop();
                let merged = blocks.last_mut().expect("two blocks");
                *merged = (before.0 + last.0, before.1 + last.1, last.2);
            }
        }
        Calibration { steps: blocks.into_iter().map(|(hits, count, top)| (top, hits / count)).collect() }
    }

    /// The calibrated probability for a raw confidence.
    pub fn probability(&self, confidence: f64) -> f64 {
        if self.steps.is_empty() {
            return confidence.clamp(0.0, 1.0);
        }
        let at = self.steps.partition_point(|&(top, _)| top < confidence).min(self.steps.len() - 1);
        self.steps[at].1
    }
}

#[allow(clippy::too_many_arguments)]
fn frame_issues(
    frame: u32,
    labels: &[Object],
    inferences: &[Object],
    frame_labels: &[u32],
    frame_inferences: &[u32],
    votes: Option<&[Option<NeighborVote>]>,
    params: &DetectionParams,
    calibration: &Calibration,
    issues: &mut Vec<Issue>,
) {
    let label = |l: u32| &labels[l as usize];
    let inference = |i: u32| &inferences[i as usize];
    let vote = |l: u32| votes.and_then(|v| v[l as usize]);
    let iou = |l: u32, i: u32| label(l).bbox.iou(&inference(i).bbox);
    let localization_badness = |iou: f64| {
        ((params.good_localization_iou - iou) / (params.good_localization_iou - params.bad_localization_iou))
            .clamp(0.0, 1.0)
    };
    let confidence = |i: u32| calibration.probability(inference(i).score);

    let (label_match, inference_matched) = match_frame(labels, inferences, frame_labels, frame_inferences, params);

    // Duplicates: of two same-class labels on one box, the one without a match is the copy.
    let mut duplicate_of: BTreeMap<u32, u32> = BTreeMap::new();
    for (a_slot, &a) in frame_labels.iter().enumerate() {
        for &b in &frame_labels[a_slot + 1..] {
            if label(a).class != label(b).class || duplicate_of.contains_key(&a) || duplicate_of.contains_key(&b) {
                continue;
            }
            let overlap = label(a).bbox.iou(&label(b).bbox);
            if overlap >= params.duplicate_iou {
                let (copy, original) = if label_match.contains_key(&b) || !label_match.contains_key(&a) {
                    (if label_match.contains_key(&b) { a } else { b }, if label_match.contains_key(&b) { b } else { a })
                } else {
                    (b, a)
                };
                duplicate_of.insert(copy, original);
                issues.push(Issue {
                    kind: IssueKind::DuplicateLabel,
                    frame,
                    label: Some(copy),
                    inference: None,
                    other_label: Some(original),
                    suggested_class: None,
                    iou: Some(overlap),
                    // Near-certain: one object rarely has two same-class boxes this close.
                    score: 0.95 * overlap,
                });
            }
        }
    }

    // Matched but loosely placed labels.
    for (&l, &(i, o)) in &label_match {
        let badness = localization_badness(o);
        if badness > 0.0 {
            issues.push(Issue {
                kind: IssueKind::BadLocalization,
                frame,
                label: Some(l),
                inference: Some(i),
                other_label: None,
                suggested_class: None,
                iou: Some(o),
                score: confidence(i) * badness,
            });
        }
    }

    // Unmatched labels, each explained by the strongest leftover inference on it.
    let leftover: Vec<u32> =
        frame_inferences.iter().zip(&inference_matched).filter(|(_, m)| !**m).map(|(&i, _)| i).collect();
    let mut explained = vec![false; leftover.len()];
    for &l in frame_labels {
        if label_match.contains_key(&l) || duplicate_of.contains_key(&l) {
            continue;
        }
        let mut confusion: Option<(usize, f64)> = None;
        let mut partial: Option<(usize, f64)> = None;
        for (slot, &i) in leftover.iter().enumerate() {
            let o = iou(l, i);
            if o < params.min_overlap {
                continue;
            }
            let strength = |best: Option<(usize, f64)>, o: f64| {
                best.is_none_or(|(s, bo)| confidence(i) * o > confidence(leftover[s]) * bo)
            };
            if inference(i).class != label(l).class && o >= params.match_iou && strength(confusion, o) {
                confusion = Some((slot, o));
            }
            if inference(i).class == label(l).class && strength(partial, o) {
                partial = Some((slot, o));
            }
        }
        let model_says = confusion.map(|(slot, o)| (slot, o, confidence(leftover[slot])));
        let neighbors_say = vote(l).filter(|v| v.neighbor_class != label(l).class);
        if let Some((slot, o, confidence)) = model_says {
            let i = leftover[slot];
            explained[slot] = true;
            // With embedding neighbours, the two votes are averaged: a model that confuses
            // classes on its own (neighbours agree with the label) is then told apart from a
            // label with the wrong class (both point away from it).
            let score = match vote(l) {
                Some(v) => 0.5 * confidence + 0.5 * f64::from(v.disagreement),
                None => confidence,
            };
            issues.push(Issue {
                kind: IssueKind::ClassConfusion,
                frame,
                label: Some(l),
                inference: Some(i),
                other_label: None,
                suggested_class: Some(inference(i).class),
                iou: Some(o),
                score,
            });
        } else if let Some((slot, o)) = partial {
            let i = leftover[slot];
            explained[slot] = true;
            issues.push(Issue {
                kind: IssueKind::BadLocalization,
                frame,
                label: Some(l),
                inference: Some(i),
                other_label: None,
                suggested_class: None,
                iou: Some(o),
                score: confidence(i) * localization_badness(o),
            });
        } else if let Some(v) = neighbors_say.filter(|v| v.disagreement >= 0.5) {
            // The model says nothing here, but the crop looks like another class.
            issues.push(Issue {
                kind: IssueKind::ClassConfusion,
                frame,
                label: Some(l),
                inference: None,
                other_label: None,
                suggested_class: Some(v.neighbor_class),
                iou: None,
                score: 0.5 * f64::from(v.disagreement),
            });
        } else {
            // What little overlaps it, of any class, counts as support.
            let support = leftover
                .iter()
                .map(|&i| confidence(i) * iou(l, i))
                .chain(label_match.values().map(|&(i, _)| confidence(i) * iou(l, i)))
                .fold(0.0f64, f64::max);
            issues.push(Issue {
                kind: IssueKind::SpuriousLabel,
                frame,
                label: Some(l),
                inference: None,
                other_label: None,
                suggested_class: None,
                iou: None,
                score: params.spurious_weight * (1.0 - support),
            });
        }
    }

    // Leftover inferences on no label at all: objects nobody labelled.
    for (slot, &i) in leftover.iter().enumerate() {
        if explained[slot] {
            continue;
        }
        let max_overlap = frame_labels.iter().map(|&l| iou(l, i)).fold(0.0f64, f64::max);
        if max_overlap >= params.match_iou {
            continue; // a second detection of a labelled object, not a missing label
        }
        issues.push(Issue {
            kind: IssueKind::MissingLabel,
            frame,
            label: None,
            inference: Some(i),
            other_label: None,
            suggested_class: Some(inference(i).class),
            iou: None,
            score: confidence(i) * (1.0 - max_overlap),
        });
    }
}

/// One frame's standing in the queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameScore {
    pub frame: u32,
    /// The chance that at least one of its issues is real, if each score were a probability:
    /// `1 - prod(1 - score)`.
    pub score: f64,
    pub issues: usize,
}

/// Frames ranked by their issues (highest first).
pub fn frame_scores(issues: &[Issue]) -> Vec<FrameScore> {
    let mut frames: BTreeMap<u32, (f64, usize)> = BTreeMap::new();
    for issue in issues {
        let entry = frames.entry(issue.frame).or_insert((1.0, 0));
        entry.0 *= 1.0 - issue.score.clamp(0.0, 1.0);
        entry.1 += 1;
    }
    let mut ranked: Vec<FrameScore> =
        frames.into_iter().map(|(frame, (clean, issues))| FrameScore { frame, score: 1.0 - clean, issues }).collect();
    ranked.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.frame.cmp(&b.frame)));
    ranked
}

/// A classification example whose given label the model's probabilities contradict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassificationIssue {
    pub index: u32,
    pub given: u32,
    pub suggested: u32,
    /// The model's probability of the given class.
    pub self_confidence: f32,
    /// p(given) - max p(other), in [-1, 1].
    pub margin: f32,
    /// (1 - margin) / 2: 1 when the model is sure it is another class.
    pub score: f32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfidentLearning {
    /// Per class, the mean self-confidence of its examples.
    pub thresholds: Vec<f32>,
    /// `joint[given][suggested]`: examples counted under each pair.
    pub joint: Vec<Vec<usize>>,
    /// Likely mistakes (pruned by noise rate), most likely first.
    pub issues: Vec<ClassificationIssue>,
}

/// Confident learning over `given` labels and row-major `probabilities` (`given.len()` rows of
/// `classes` columns). Probabilities should be out-of-sample (cross-validated), as for Cleanlab.
pub fn confident_learning(given: &[u32], probabilities: &[f32], classes: usize) -> ConfidentLearning {
    assert_eq!(probabilities.len(), given.len() * classes, "one probability row per example");
    let row = |i: usize| &probabilities[i * classes..(i + 1) * classes];
    let mut sums = vec![0f64; classes];
    let mut counts = vec![0usize; classes];
    for (i, &g) in given.iter().enumerate() {
        sums[g as usize] += f64::from(row(i)[g as usize]);
        counts[g as usize] += 1;
    }
    let thresholds: Vec<f32> =
        sums.iter().zip(&counts).map(|(&s, &c)| if c == 0 { 1.0 } else { (s / c as f64) as f32 }).collect();
    let mut joint = vec![vec![0usize; classes]; classes];
    for (i, &g) in given.iter().enumerate() {
        let p = row(i);
        let confident =
            (0..classes).filter(|&j| p[j] >= thresholds[j]).max_by(|&a, &b| p[a].total_cmp(&p[b]).then(b.cmp(&a)));
        if let Some(j) = confident {
            joint[g as usize][j] += 1;
        }
    }
    // Prune by noise rate, as Cleanlab does by default: calibrate the joint so each row sums to
    // its class's size, read from it how many examples of class g belong to class j, and flag
    // that many examples of g, those with the largest margin p[j] - p[g]. Counting only the
    // off-diagonal of the confident joint would miss mistakes no threshold catches.
    let mut flagged: Vec<Option<u32>> = vec![None; given.len()];
    let mut by_given: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, &g) in given.iter().enumerate() {
        by_given[g as usize].push(i);
    }
    for g in 0..classes {
        let row_total: usize = joint[g].iter().sum();
        if row_total == 0 {
            continue;
        }
        for j in (0..classes).filter(|&j| j != g) {
            let expected = (joint[g][j] as f64 / row_total as f64 * counts[g] as f64).round() as usize;
            // Leave every class at least one example, as Cleanlab does.
            let expected = expected.min(counts[g].saturating_sub(1));
            if expected == 0 {
                continue;
            }
            let mut candidates: Vec<(f32, usize)> = by_given[g].iter().map(|&i| (row(i)[j] - row(i)[g], i)).collect();
            candidates.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            for &(_, i) in candidates.iter().take(expected) {
                // An example flagged for two classes keeps the one the model prefers.
                if flagged[i].is_none_or(|k| row(i)[j] > row(i)[k as usize]) {
                    flagged[i] = Some(j as u32);
                }
            }
        }
    }
    // Beside the pruned ones, every example whose label the model's top class contradicts:
    // pruning estimates how many mistakes each class has, and an estimate can fall short.
    let mut issues: Vec<ClassificationIssue> = (0..given.len())
        .filter_map(|i| {
            let (p, g) = (row(i), given[i] as usize);
            let (best, best_other) = (0..classes)
                .filter(|&c| c != g)
                .map(|c| (c, p[c]))
                .fold((g, f32::NEG_INFINITY), |acc, (c, v)| if v > acc.1 { (c, v) } else { acc });
            let margin = p[g] - best_other;
            let suggested = match flagged[i] {
                Some(j) => j,
                None if margin < 0.0 => best as u32,
                None => return None,
            };
            Some(ClassificationIssue {
                index: i as u32,
                given: g as u32,
                suggested,
                self_confidence: p[g],
                margin,
                score: ((1.0 - margin) / 2.0).clamp(0.0, 1.0),
            })
        })
        .collect();
    // Cleanlab's default order: the lowest probability of the given label first.
    issues.sort_by(|a, b| a.self_confidence.total_cmp(&b.self_confidence).then(a.index.cmp(&b.index)));
    ConfidentLearning { thresholds, joint, issues }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Bbox;

    fn object(frame: u32, class: u32, bbox: [f64; 4], score: f64) -> Object {
        Object { frame, class, bbox: Bbox::new(bbox[0], bbox[1], bbox[2], bbox[3]), iscrowd: false, score }
    }

    #[test]
    fn each_kind_is_found_and_named() {
        let labels = vec![
            object(0, 0, [0.0, 0.0, 10.0, 10.0], 0.0),     // 0: fine
            object(0, 1, [50.0, 50.0, 10.0, 10.0], 0.0),   // 1: wrong class (model says 2)
            object(0, 0, [103.0, 100.0, 10.0, 10.0], 0.0), // 2: shifted
            object(0, 0, [0.0, 0.0, 10.0, 10.0], 0.0),     // 3: copy of 0
            object(1, 2, [300.0, 300.0, 10.0, 10.0], 0.0), // 4: nothing there
        ];
        let inferences = vec![
            object(0, 0, [0.0, 0.0, 10.0, 10.0], 0.9),
            object(0, 2, [50.0, 50.0, 10.0, 10.0], 0.85),
            object(0, 0, [100.0, 104.0, 10.0, 10.0], 0.8),
            object(1, 1, [200.0, 200.0, 10.0, 10.0], 0.95), // no label: missing
        ];
        let issues = detection_issues(&labels, &inferences, None, &DetectionParams::default());
        let find = |kind: IssueKind| issues.iter().find(|i| i.kind == kind).unwrap_or_else(|| panic!("{kind:?}"));
        assert_eq!(find(IssueKind::ClassConfusion).label, Some(1));
        assert_eq!(find(IssueKind::ClassConfusion).suggested_class, Some(2));
        assert_eq!(find(IssueKind::BadLocalization).label, Some(2));
        assert_eq!(find(IssueKind::DuplicateLabel).label, Some(3));
        assert_eq!(find(IssueKind::DuplicateLabel).other_label, Some(0));
        assert_eq!(find(IssueKind::MissingLabel).inference, Some(3));
        assert_eq!(find(IssueKind::SpuriousLabel).label, Some(4));
        assert_eq!(issues.len(), 5, "the correct label raises nothing: {issues:?}");
        assert!(issues.iter().all(|i| (0.0..=1.0).contains(&i.score)));
        assert!(issues.windows(2).all(|w| w[0].score >= w[1].score));
        let frames = frame_scores(&issues);
        assert_eq!(frames[0].frame, 0);
        assert_eq!(frames[0].issues, 3);
    }

    #[test]
    fn neighbour_votes_separate_a_wrong_label_from_a_confused_model() {
        let labels = vec![object(0, 0, [0.0, 0.0, 10.0, 10.0], 0.0), object(1, 0, [0.0, 0.0, 10.0, 10.0], 0.0)];
        let inferences = vec![object(0, 1, [0.0, 0.0, 10.0, 10.0], 0.6), object(1, 1, [0.0, 0.0, 10.0, 10.0], 0.6)];
        let votes = [
            Some(NeighborVote { disagreement: 0.0, neighbor_class: 0 }), // crop looks like its label
            Some(NeighborVote { disagreement: 0.9, neighbor_class: 1 }), // crop looks like class 1
        ];
        let issues = detection_issues(&labels, &inferences, Some(&votes), &DetectionParams::default());
        assert_eq!(issues[0].label, Some(1));
        assert!(issues[0].score > issues[1].score + 0.3);
    }

    #[test]
    fn confident_learning_flags_the_contradicted_examples() {
        // Three classes; example 4 is labelled 0 but the model is sure it is 2.
        let given = [0, 0, 1, 1, 0, 2, 2];
        let probabilities = [
            0.9, 0.05, 0.05, //
            0.8, 0.1, 0.1, //
            0.1, 0.8, 0.1, //
            0.2, 0.7, 0.1, //
            0.05, 0.05, 0.9, //
            0.1, 0.1, 0.8, //
            0.2, 0.1, 0.7,
        ];
        let result = confident_learning(&given, &probabilities, 3);
        assert_eq!(result.issues.len(), 1);
        let issue = &result.issues[0];
        assert_eq!((issue.index, issue.given, issue.suggested), (4, 0, 2));
        assert!((issue.margin - (0.05 - 0.9)).abs() < 1e-6);
        assert_eq!(result.joint[0][2], 1);
        assert!((result.thresholds[0] - (0.9 + 0.8 + 0.05) / 3.0).abs() < 1e-6);
    }
}
