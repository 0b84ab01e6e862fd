//! The owner's policy for a guarded table: what is safe to reveal, what never is,
//! and what happens to a query outside the safe zone.

use crate::{Invalid, InvalidResult};
use serde::{Deserialize, Serialize};

/// A table's policy, as the owner writes it:
///
/// ```json
/// {"safe_zone": {"aggregation": {"min_agg_size": 10}},
///  "unsafe_handling": "review",
///  "sanitized_columns": ["Name"],
///  "savable": false}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub safe_zone: Rule,
    #[serde(default)]
    pub unsafe_handling: UnsafeHandling,
    /// Columns that never reach a result: not directly, not renamed, not in any
    /// expression, and not as a filter, join or group key.
    #[serde(default)]
    pub sanitized_columns: Vec<String>,
    /// Whether results derived from the table may be saved on the server as new tables.
    #[serde(default)]
    pub savable: bool,
    /// Whether aggregates that return one individual's value (min, max, first_value, ...) are allowed.
    #[serde(default)]
    pub allow_extremes: bool,
    /// Differential privacy: every query reading the table is answered with noise, charged
    /// to the analyst's budget (see docs/PRIVACY.md). The safe zone's thresholds then do
    /// not apply; sanitized columns still do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dp: Option<DpPolicy>,
}

/// The owner's differential-privacy settings for one table:
///
/// ```json
/// {"epsilon": 4.0, "delta": 1e-6, "query_epsilon": 0.5, "privacy_unit": "PassengerId",
///  "max_rows_per_unit": 1, "max_groups_per_unit": 1,
///  "bounds": {"Age": [0, 100], "Fare": [0, 600]}, "public_keys": {"Sex": ["female", "male"]}}
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpPolicy {
    /// Each analyst's total budget on this table.
    pub epsilon: f64,
    /// Each analyst's total delta (spent only by grouping over keys that are not public).
    #[serde(default = "default_delta")]
    pub delta: f64,
    /// Whose budget `epsilon` is: each analyst's (`analyst`), or each pool's, shared by the
    /// analysts an admin put in one pool because they may pool results (`group`).
    #[serde(default)]
    pub per: DpPer,
    /// All analysts together may spend at most this (against collusion); absent: no cap.
    #[serde(default)]
    pub table_epsilon: Option<f64>,
    /// The budget renews: only what was spent in the last `renewal_days` days counts. Absent:
    /// a budget spent is spent for good.
    #[serde(default)]
    pub renewal_days: Option<f64>,
    /// What one query costs; default a tenth of `epsilon`.
    #[serde(default)]
    pub query_epsilon: Option<f64>,
    /// The column that identifies a person; absent: each row is its own person.
    #[serde(default)]
    pub privacy_unit: Option<String>,
    /// Rows of one person counted in one group; more are cut.
    #[serde(default = "one")]
    pub max_rows_per_unit: u32,
    /// Groups one person may appear in; more are cut.
    #[serde(default = "one")]
    pub max_groups_per_unit: u32,
    /// Clamping bounds of the numeric columns SUM and AVG may read; a column without
    /// bounds cannot be summed.
    #[serde(default)]
    pub bounds: std::collections::BTreeMap<String, [f64; 2]>,
    /// Group keys whose values the owner declares public: grouping by them releases every
    /// declared value (no partition selection, no delta).
    #[serde(default)]
    pub public_keys: std::collections::BTreeMap<String, Vec<serde_json::Value>>,
}

/// Who a DP budget belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DpPer {
    #[default]
    Analyst,
    Group,
}

fn default_delta() -> f64 {
    1e-6
}

fn one() -> u32 {
    1
}

impl DpPolicy {
    /// The epsilon one query spends.
    pub fn per_query_epsilon(&self) -> f64 {
        self.query_epsilon.unwrap_or(self.epsilon / 10.0)
    }

    /// The delta one query that selects groups spends.
    pub fn per_query_delta(&self) -> f64 {
        self.delta * self.per_query_epsilon() / self.epsilon
    }

    fn check(&self) -> InvalidResult<()> {
        let positive = |field: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(Invalid::new(format!("policy.dp.{field}"), "must be a positive number"))
            }
        };
        positive("epsilon", self.epsilon)?;
        if !(self.delta > 0.0 && self.delta < 1e-3) {
            return Err(Invalid::new("policy.dp.delta", "must be above 0 and below 0.001"));
        }
        if let Some(cap) = self.table_epsilon {
            positive("table_epsilon", cap)?;
        }
        if let Some(days) = self.renewal_days {
            positive("renewal_days", days)?;
        }
        if let Some(q) = self.query_epsilon {
            positive("query_epsilon", q)?;
            if q > self.epsilon {
                return Err(Invalid::new("policy.dp.query_epsilon", "must not exceed the budget, epsilon"));
            }
        }
        if self.max_rows_per_unit == 0 || self.max_rows_per_unit > 1_000_000 {
            return Err(Invalid::new("policy.dp.max_rows_per_unit", "must be between 1 and 1000000"));
        }
        if self.max_groups_per_unit == 0 || self.max_groups_per_unit > 10_000 {
            return Err(Invalid::new("policy.dp.max_groups_per_unit", "must be between 1 and 10000"));
        }
        for (column, [lo, hi]) in &self.bounds {
            if !(lo.is_finite() && hi.is_finite() && lo < hi) {
                return Err(Invalid::new(format!("policy.dp.bounds.{column}"), "must be [low, high] with low < high"));
            }
        }
        for (column, values) in &self.public_keys {
            if values.is_empty() || values.len() > 100_000 {
                return Err(Invalid::new(format!("policy.dp.public_keys.{column}"), "must list 1 to 100000 values"));
            }
        }
        Ok(())
    }
}

/// When a query is in the safe zone. Rules combine with `at_least`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Rule {
    Constant(bool),
    Aggregation { aggregation: Aggregation },
    User { user: String },
    AtLeast { at_least: AtLeast },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Aggregation {
    /// Every result row must stand for at least this many rows of the table.
    pub min_agg_size: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AtLeast {
    pub n: usize,
    pub of: Vec<Rule>,
}

/// What happens to a query outside the safe zone. Ordered from the most lenient to
/// the strictest, so `max` picks the handling that applies when several tables disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnsafeHandling {
    /// Answer it, flag it in the audit log, and tell the caller it was flagged.
    Log,
    /// Hold it until the owner approves or rejects it.
    Review,
    /// Refuse it, naming the rule that failed.
    #[default]
    Reject,
}

impl UnsafeHandling {
    pub fn as_str(self) -> &'static str {
        match self {
            UnsafeHandling::Log => "log",
            UnsafeHandling::Reject => "reject",
            UnsafeHandling::Review => "review",
        }
    }
}

impl Policy {
    /// Parses a policy, naming the field of the first problem.
    pub fn from_json(text: &str) -> InvalidResult<Policy> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| Invalid::new("policy", format!("not valid JSON: {e}")))?;
        Self::from_value(value)
    }

    pub fn from_value(value: serde_json::Value) -> InvalidResult<Policy> {
        // Rules are an untagged enum, whose serde errors say only "did not match";
        // checking the shape by hand names the offending rule instead.
        if let Some(zone) = value.get("safe_zone") {
            check_rule("policy.safe_zone", zone)?;
        }
        let policy: Policy = serde_json::from_value(value).map_err(|e| Invalid::new("policy", e.to_string()))?;
        for (i, column) in policy.sanitized_columns.iter().enumerate() {
            if column.is_empty() {
                return Err(Invalid::new(format!("policy.sanitized_columns[{i}]"), "must not be empty"));
            }
        }
        if let Some(dp) = &policy.dp {
            dp.check()?;
        }
        Ok(policy)
    }

    /// The smallest aggregation size any rule of the safe zone asks for, if any.
    pub fn min_agg_size(&self) -> Option<u64> {
        self.safe_zone.min_agg_size()
    }
}

impl Rule {
    fn min_agg_size(&self) -> Option<u64> {
        match self {
            Rule::Aggregation { aggregation } => Some(aggregation.min_agg_size),
            Rule::AtLeast { at_least } => at_least.of.iter().filter_map(Rule::min_agg_size).max(),
            Rule::Constant(_) | Rule::User { .. } => None,
        }
    }
}

fn check_rule(field: &str, rule: &serde_json::Value) -> InvalidResult<()> {
    use serde_json::Value;
    match rule {
        Value::Bool(_) => Ok(()),
        Value::Object(map) if map.len() == 1 => {
            let (key, body) = map.iter().next().expect("one entry");
            let at = format!("{field}.{key}");
            match key.as_str() {
                "aggregation" => {
                    let size = body.get("min_agg_size").and_then(Value::as_u64);
                    if size.is_none() || body.as_object().is_none_or(|o| o.len() != 1) {
                        return Err(Invalid::new(at, "expected {\"min_agg_size\": N} with N a whole number"));
                    }
                    Ok(())
                }
                "user" => match body {
                    Value::String(name) if !name.is_empty() => Ok(()),
                    _ => Err(Invalid::new(at, "expected a user name")),
                },
                "at_least" => {
                    let n = body.get("n").and_then(Value::as_u64);
                    let of = body.get("of").and_then(Value::as_array);
                    match (n, of) {
                        (Some(n), Some(rules)) if body.as_object().is_some_and(|o| o.len() == 2) => {
                            if n as usize > rules.len() {
                                return Err(Invalid::new(format!("{at}.n"), "is larger than the number of rules"));
                            }
                            for (i, rule) in rules.iter().enumerate() {
                                check_rule(&format!("{at}.of[{i}]"), rule)?;
                            }
                            Ok(())
                        }
                        _ => Err(Invalid::new(at, "expected {\"n\": N, \"of\": [rules]}")),
                    }
                }
                other => Err(Invalid::new(
                    at.clone(),
                    format!("unknown rule {other:?}; rules are aggregation, user, at_least, true and false"),
                )),
            }
        }
        _ => Err(Invalid::new(field, "a rule is true, false, or an object with one of: aggregation, user, at_least")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_policy() {
        let p = Policy::from_json(
            r#"{"safe_zone": {"aggregation": {"min_agg_size": 10}}, "unsafe_handling": "review",
                "sanitized_columns": ["Name"], "savable": false}"#,
        )
        .unwrap();
        assert_eq!(p.unsafe_handling, UnsafeHandling::Review);
        assert_eq!(p.min_agg_size(), Some(10));
        let p = Policy::from_json(
            r#"{"safe_zone": {"at_least": {"n": 1, "of": [{"user": "alice"}, {"aggregation": {"min_agg_size": 5}}]}}}"#,
        )
        .unwrap();
        assert_eq!(p.unsafe_handling, UnsafeHandling::Reject);
        assert_eq!(p.min_agg_size(), Some(5));
    }

    #[test]
    fn the_strictest_handling_wins() {
        use UnsafeHandling::*;
        assert_eq!([Log, Reject, Review].into_iter().max(), Some(Reject));
        assert_eq!([Log, Review].into_iter().max(), Some(Review));
        assert_eq!(UnsafeHandling::default(), Reject);
    }

    #[test]
    fn unknown_rules_are_named() {
        let err = Policy::from_json(r#"{"safe_zone": {"at_least": {"n": 1, "of": [{"k_anon": 5}]}}}"#).unwrap_err();
        assert_eq!(err.field, "policy.safe_zone.at_least.of[0].k_anon");
        let err = Policy::from_json(r#"{"safe_zone": true, "unsafe_handling": "shrug"}"#).unwrap_err();
        assert!(err.message.contains("shrug"), "{err}");
        let err = Policy::from_json(r#"{"safe_zone": {"aggregation": {"min_agg_size": -1}}}"#).unwrap_err();
        assert_eq!(err.field, "policy.safe_zone.aggregation");
    }
}
