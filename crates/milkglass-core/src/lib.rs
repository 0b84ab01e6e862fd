//! Domain types of milkglass and the rules that make them valid.
//!
//! Everything here is plain data plus validation; no I/O. The store and the server
//! both depend on these types, so a rule written here holds for every entry point
//! (HTTP, Arrow, CLI, sample data).

mod error;
mod frame;
mod label;
mod metadata;
mod name;
pub mod paths;
mod policy;
mod project;
mod role;

pub use error::{Invalid, InvalidResult};
pub use frame::{BucketScheme, DataUrl, Frame, Geo, Sensor, SensorKind, check_data_url};
pub use label::{ClassRef, Geometry, Keypoint, Label, LabelKind, MaskInstance, Probabilities};
pub use metadata::{MetaValue, Metadata, format_timestamp, metadata_from_json, parse_timestamp};
pub use name::check_name;
pub use policy::{Aggregation, AtLeast, DpPer, DpPolicy, Policy, Rule, UnsafeHandling};
pub use project::{AccessMode, ClassEntry, ClassMap, DatasetKind, DatasetSpec, ProjectSpec};
pub use role::{ProjectRole, Role};

/// Smallest and largest accepted embedding dimension.
pub const EMBEDDING_DIM_RANGE: std::ops::RangeInclusive<usize> = 2..=12_000;

/// Checks one embedding vector: dimension in range and every value finite.
pub fn check_embedding(field: &str, values: &[f32]) -> InvalidResult<()> {
    if !EMBEDDING_DIM_RANGE.contains(&values.len()) {
        return Err(Invalid::new(
            field,
            format!(
                "embedding has {} values; it must have between {} and {}",
                values.len(),
                EMBEDDING_DIM_RANGE.start(),
                EMBEDDING_DIM_RANGE.end()
            ),
        ));
    }
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(Invalid::new(format!("{field}[{i}]"), "must be a finite number (no NaN or infinity)"));
    }
    Ok(())
}

/// Checks that a float is finite, naming the field otherwise.
pub fn check_finite(field: &str, value: f64) -> InvalidResult<()> {
    if value.is_finite() { Ok(()) } else { Err(Invalid::new(field, "must be a finite number (no NaN or infinity)")) }
}
