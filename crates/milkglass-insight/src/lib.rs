//! Insight algorithms for milkglass: pure computation over vectors, boxes and scores, with no
//! I/O except an index's own file.
//!
//! - [`distance`]: cosine and L2 kernels, exact k-NN (the fallback and the recall oracle);
//! - [`hnsw`]: the approximate index: parallel build, incremental insert, tombstones,
//!   filtered search, atomic persistence;
//! - [`neighbors`]: the all-points k-NN graph and what is computed from it (uniqueness,
//!   near-duplicates, outliers, neighbour label agreement);
//! - [`map`]: the 2-D embedding map (PCA, then a UMAP-style layout) and its clusters;
//! - [`label_errors`]: ranked likely label mistakes, for detection and classification;
//! - [`metrics`]: confusion matrices, precision/recall/F1, PR curves, COCO AP and mAP.

pub mod distance;
pub mod hnsw;

pub use distance::{Metric, Neighbor, VectorSet, exact_knn, exact_knn_unprepared};
pub use hnsw::{Hnsw, HnswParams};
pub mod label_errors;
pub mod map;
pub mod metrics;
pub mod neighbors;
mod parallel;
