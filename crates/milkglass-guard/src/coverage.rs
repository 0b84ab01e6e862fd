//! Which rows of a table a query's answer covered, kept compactly so that later queries
//! can be compared with it.
//!
//! Two answers whose row sets differ by a few rows reveal those rows by subtraction:
//! `SUM(salary)` over everyone, then over everyone but Bob. The guard records, for each
//! guarded table, the row ids that entered the query's aggregations (after WHERE and
//! joins, before grouping), as a compressed bitmap. Whole-table reads are a single run
//! and cost a few bytes; a filter that keeps every other row of a million costs about
//! 128 KiB, the bitmap's worst case. The server keeps one set per answered query, per
//! analyst or pool of analysts, and compares every new answer with them.
//!
//! Differences are exact: nothing here is probabilistic, so a small difference is never
//! missed by chance.

use roaring::RoaringTreemap;

/// The row ids of one table that entered a query's aggregations.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Coverage {
    rows: RoaringTreemap,
}

impl Coverage {
    /// Every row of a table of `rows` rows (ids are `0..rows`).
    pub fn whole(rows: u64) -> Self {
        let mut set = RoaringTreemap::new();
        set.insert_range(0..rows);
        set.optimize();
        Coverage { rows: set }
    }

    /// From row ids in any order, duplicates allowed.
    pub(crate) fn from_ids(mut ids: Vec<u64>) -> Self {
        // Sorted, the bitmap is built by appending, several times faster than inserting.
        ids.sort_unstable();
        ids.dedup();
        let mut rows = RoaringTreemap::from_sorted_iter(ids).expect("sorted and deduplicated");
        rows.optimize();
        Coverage { rows }
    }

    /// Adds another occurrence's rows (the same table read twice in one query).
    pub(crate) fn union_with(&mut self, other: &Coverage) {
        self.rows |= &other.rows;
        self.rows.optimize();
    }

    /// How many rows are in exactly one of the two sets.
    pub fn differs_by(&self, other: &Coverage) -> u64 {
        self.rows.symmetric_difference_len(&other.rows)
    }

    /// How many rows the set holds.
    pub fn len(&self) -> u64 {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The portable roaring serialization, for the store.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.rows.serialized_size());
        self.rows.serialize_into(&mut bytes).expect("writing to a Vec cannot fail");
        bytes
    }

    /// Reads [`Coverage::to_bytes`]; an unreadable set is an error, never an empty set.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, String> {
        RoaringTreemap::deserialize_from(bytes)
            .map(|rows| Coverage { rows })
            .map_err(|e| format!("a stored coverage set is unreadable: {e}"))
    }
}

/// The fewest rows by which `current` differs from any of `earlier`, counting only
/// sets that differ at all (asking the same question twice reveals nothing new).
pub fn closest<'a>(current: &Coverage, earlier: impl IntoIterator<Item = &'a Coverage>) -> Option<u64> {
    earlier.into_iter().map(|e| current.differs_by(e)).filter(|&d| d > 0).min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_tables_are_a_run_and_differences_are_exact() {
        let all = Coverage::whole(1_000_000);
        let bytes = all.to_bytes().len();
        assert!(bytes < 300, "a whole table is one run per 65,536 rows, not {bytes} bytes");
        let but_one = Coverage::from_ids((0..1_000_000).filter(|&i| i != 4_242).collect());
        assert_eq!(all.differs_by(&but_one), 1);
        assert_eq!(closest(&all, [&but_one, &all]), Some(1));
        assert_eq!(closest(&all, [&all]), None);
        let back = Coverage::from_bytes(&but_one.to_bytes()).unwrap();
        assert_eq!(back, but_one);
        assert!(Coverage::from_bytes(b"not a bitmap").is_err());
    }
}
