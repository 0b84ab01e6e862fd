//! The property behind sanitized columns, tested on queries nobody wrote by hand: for
//! generated queries (filters, CASE, arithmetic, joins, set operations, windows,
//! grouping sets, subqueries), the guard's whole answer (error or decision, the
//! explanation, the masked columns and every returned row) is the same on the Titanic
//! table and on a copy whose sanitized `Name` column is scrambled.
//!
//! README's test command runs a fixed-seed slice. The long run:
//!
//! ```sh
//! MILKGLASS_NONINTERFERENCE_CASES=20000 MILKGLASS_NONINTERFERENCE_SEED=7 \
//!     cargo test --release -p milkglass-guard --test noninterference -- --nocapture
//! ```

use arrow::array::{Array, AsArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use datafusion::common::TableReference;
use datafusion::datasource::MemTable;
use datafusion::prelude::{CsvReadOptions, SessionContext};
use milkglass_core::Policy;
use milkglass_guard::{ProtectedTable, ROW_ID, prepare};
use std::collections::HashMap;
use std::sync::Arc;

/// Log handling: every result is computed and returned (flagged when unsafe), so the
/// rows themselves are compared, not only the decisions.
const POLICY: &str = r#"{"safe_zone": {"aggregation": {"min_agg_size": 10}}, "unsafe_handling": "log",
                         "sanitized_columns": ["Name"]}"#;

/// A small deterministic generator (xorshift64*): the same seed, the same queries.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, options: &[&'a str]) -> &'a str {
        options[self.below(options.len())]
    }

    fn number(&mut self) -> String {
        self.pick(&["0", "1", "2", "3", "7", "10", "22", "30", "54", "100", "500"]).to_string()
    }

    fn pred(&mut self, q: &str, depth: usize) -> String {
        // Mostly broad filters (which leave large groups), sometimes a targeted one.
        let choice = if depth == 0 { self.below(12) } else { self.below(15) };
        match choice {
            8..=11 => self.broad_pred(q),
            0 => {
                let c = self.pick(&["Age", "Fare", "Pclass", "SibSp", "Parch", "Survived", "PassengerId"]);
                let op = self.pick(&["=", "<>", "<", ">", "<=", ">="]);
                format!("{q}{c} {op} {}", self.number())
            }
            1 => format!("{q}Sex = '{}'", self.pick(&["male", "female"])),
            2 => format!("{q}Name LIKE '{}%'", self.pick(&["A", "B", "M", "McCarthy", "Mrs"])),
            3 => format!("LENGTH({q}Name) > {}", self.number()),
            4 => format!("{q}{} IS NULL", self.pick(&["Age", "Cabin", "Name", "Embarked"])),
            5 => format!("{q}PassengerId = {}", self.pick(&["7", "8", "100", "891"])),
            6 => format!("{q}Name = 'McCarthy, Mr. Timothy J'"),
            7 => format!("{q}Embarked = '{}'", self.pick(&["S", "C", "Q"])),
            12 => format!("NOT ({})", self.pred(q, depth - 1)),
            13 => format!("({}) AND ({})", self.pred(q, depth - 1), self.pred(q, depth - 1)),
            _ => format!("({}) OR ({})", self.pred(q, depth - 1), self.pred(q, depth - 1)),
        }
    }

    fn broad_pred(&mut self, q: &str) -> String {
        match self.below(4) {
            0 => format!("{q}Age {} {}", self.pick(&["<", ">"]), self.pick(&["18", "30", "40"])),
            1 => format!("{q}Pclass {} {}", self.pick(&["=", "<>", "<"]), self.pick(&["1", "2", "3"])),
            2 => format!("{q}Fare > {}", self.pick(&["5", "10", "30"])),
            _ => format!("{q}Sex = '{}'", self.pick(&["male", "female"])),
        }
    }

    fn value(&mut self, q: &str, depth: usize) -> String {
        let choice = if depth == 0 { self.below(4) } else { self.below(11) };
        match choice {
            0 => format!("{q}{}", self.pick(&["Age", "Fare", "Pclass", "SibSp", "Survived", "PassengerId"])),
            1 => format!("LENGTH({q}Name)"),
            2 => format!("ASCII({q}Name)"),
            3 => self.number(),
            4 => format!(
                "CASE WHEN {} THEN {} ELSE {} END",
                self.pred(q, 1),
                self.value(q, depth - 1),
                self.value(q, depth - 1)
            ),
            5 => format!("{} + {}", self.value(q, depth - 1), self.value(q, depth - 1)),
            6 => format!("{} * 2", self.value(q, depth - 1)),
            7 => format!("CAST({} AS INT)", self.pred(q, 1)),
            8 => format!("NULLIF({}, {})", self.value(q, depth - 1), self.number()),
            9 => format!("1 / ({})", self.value(q, depth - 1)),
            _ => format!("COALESCE({q}Age, LENGTH({q}Name), 0)"),
        }
    }

    fn aggregate(&mut self, q: &str) -> String {
        match self.below(8) {
            0 => "COUNT(*)".into(),
            1 => format!("SUM({})", self.value(q, 2)),
            2 => format!("AVG({})", self.value(q, 2)),
            3 => format!("MIN({})", self.value(q, 1)),
            4 => format!("MAX({})", self.value(q, 1)),
            5 => format!("COUNT(DISTINCT {q}{})", self.pick(&["Ticket", "Name", "Cabin", "Pclass"])),
            6 => format!("SUM({}) FILTER (WHERE {})", self.value(q, 1), self.pred(q, 1)),
            _ => format!("COUNT({})", self.value(q, 1)),
        }
    }

    fn key(&mut self, q: &str) -> String {
        match self.below(8) {
            0 | 6 => format!("{q}Pclass"),
            1 | 7 => format!("{q}Sex"),
            2 => format!("{q}Survived"),
            3 => format!("{q}Name"),
            4 => format!("LENGTH({q}Name) > 20"),
            _ => format!("{q}Embarked"),
        }
    }

    fn grouped(&mut self) -> String {
        let key = self.key("");
        let mut sql = format!("SELECT {key} AS k, {} AS a FROM titanic", self.aggregate(""));
        if self.below(2) == 0 {
            sql += &format!(" WHERE {}", self.pred("", 2));
        }
        sql += &format!(" GROUP BY {key}");
        if self.below(3) == 0 {
            sql += &format!(" HAVING {} > {}", self.aggregate(""), self.number());
        }
        sql
    }

    fn global(&mut self) -> String {
        let mut sql = format!("SELECT {} AS a FROM titanic", self.aggregate(""));
        if self.below(3) != 0 {
            sql += &format!(" WHERE {}", self.pred("", 2));
        }
        sql
    }

    fn query(&mut self) -> String {
        match self.below(9) {
            0 => self.grouped(),
            1 => self.global(),
            2 => format!(
                "SELECT PassengerId, {}, Name FROM titanic WHERE {} LIMIT {}",
                self.value("", 1),
                self.pred("", 2),
                1 + self.below(20)
            ),
            3 => {
                let on = self.pick(&["PassengerId", "Pclass", "Name", "Ticket"]);
                let key = self.key("a.");
                let mut sql = format!(
                    "SELECT {key} AS k, {} AS a FROM titanic a JOIN titanic b ON a.{on} = b.{on}",
                    self.aggregate("b.")
                );
                if self.below(2) == 0 {
                    sql += &format!(" WHERE {}", self.pred("a.", 1));
                }
                sql + &format!(" GROUP BY {key}")
            }
            4 => format!("{} UNION ALL {}", self.global(), self.global()),
            5 => format!("SELECT k, a, SUM(a) OVER (ORDER BY k ROWS 1 PRECEDING) AS w FROM ({}) t", self.grouped()),
            6 => {
                let (k1, k2) = (self.key(""), self.key(""));
                format!(
                    "SELECT {k1} AS k1, {k2} AS k2, {} AS a FROM titanic GROUP BY ROLLUP({k1}, {k2})",
                    self.aggregate("")
                )
            }
            7 => format!(
                "SELECT COUNT(*) AS n FROM titanic WHERE {} > (SELECT AVG({}) FROM titanic WHERE {})",
                self.value("", 1),
                self.value("", 1),
                self.pred("", 1)
            ),
            _ => format!(
                "SELECT {} AS a FROM titanic WHERE PassengerId IN (SELECT PassengerId FROM titanic WHERE {})",
                self.aggregate(""),
                self.pred("", 2)
            ),
        }
    }
}

/// The Titanic table, with `Name` replaced by `rename` of each row's name.
async fn titanic(rename: impl Fn(usize, &str) -> String) -> ProtectedTable {
    let ctx = SessionContext::new();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../milkglass-sample/data/titanic.csv");
    let batches = ctx.read_csv(path, CsvReadOptions::new()).await.unwrap().collect().await.unwrap();
    let schema = batches[0].schema();
    let name_index = schema.index_of("Name").unwrap();
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(ROW_ID, DataType::Int64, false));
    let internal_schema = Arc::new(Schema::new(fields));
    let mut next = 0usize;
    let mut visible = Vec::new();
    let mut internal = Vec::new();
    for batch in &batches {
        let names = batch.column(name_index).as_string::<i32>();
        let renamed: StringArray =
            (0..names.len()).map(|i| names.is_valid(i).then(|| rename(next + i, names.value(i)))).collect();
        let mut columns = batch.columns().to_vec();
        columns[name_index] = Arc::new(renamed);
        visible.push(RecordBatch::try_new(schema.clone(), columns.clone()).unwrap());
        columns.push(Arc::new(Int64Array::from_iter_values(next as i64..(next + batch.num_rows()) as i64)));
        internal.push(RecordBatch::try_new(internal_schema.clone(), columns).unwrap());
        next += batch.num_rows();
    }
    ProtectedTable {
        name: "titanic".into(),
        reference: TableReference::bare("titanic"),
        policy: Policy::from_json(POLICY).unwrap(),
        visible: Arc::new(MemTable::try_new(schema, vec![visible]).unwrap()),
        internal: Arc::new(MemTable::try_new(internal_schema, vec![internal]).unwrap()),
        rows: next as u64,
        shared_ids: false,
    }
}

/// Everything a caller could observe, as one comparable text.
#[derive(Debug, PartialEq)]
enum Observed {
    Refused(String),
    Answered { decision: String, safe: bool, masked: Vec<String>, rows: Vec<String> },
}

async fn observe(sql: &str, table: ProtectedTable) -> Observed {
    let policies: HashMap<String, Policy> = [("titanic".to_string(), table.policy.clone())].into();
    let prepared = match prepare(sql, vec![table]).await {
        Ok(p) => p,
        Err(e) => return Observed::Refused(e.to_string()),
    };
    let outcome = match prepared.execute().await {
        Ok(o) => o,
        Err(e) => return Observed::Refused(e.to_string()),
    };
    let decision = prepared.decide(Some(&outcome), &policies, "sam");
    let shown = arrow::util::pretty::pretty_format_batches(&outcome.batches).unwrap().to_string();
    let mut rows: Vec<String> = shown.lines().map(str::to_string).collect();
    rows.sort();
    Observed::Answered {
        safe: decision == milkglass_guard::Decision::Safe,
        decision: decision.explanation(),
        masked: prepared.masked_columns(),
        rows,
    }
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::test]
async fn no_answer_depends_on_a_sanitized_column() {
    let cases = env_number("MILKGLASS_NONINTERFERENCE_CASES", 300);
    let seed = env_number("MILKGLASS_NONINTERFERENCE_SEED", 20261202);
    let mut generator = Gen(seed | 1);
    // The scrambled copy: every name a different, unrelated string of another length.
    let scramble = |i: usize, _: &str| format!("Zed{}x{}", (i * 7919) % 1009, "q".repeat(i % 13));
    let (mut answered, mut safe, mut refused, mut violations) = (0u64, 0u64, 0u64, Vec::new());
    for _ in 0..cases {
        let sql = generator.query();
        let real = observe(&sql, titanic(|_, name| name.to_string()).await).await;
        let scrambled = observe(&sql, titanic(scramble).await).await;
        match &real {
            Observed::Answered { safe: true, .. } => {
                answered += 1;
                safe += 1;
            }
            Observed::Answered { .. } => answered += 1,
            Observed::Refused(_) => refused += 1,
        }
        if real != scrambled {
            violations.push(format!("{sql}\n  real:      {real:?}\n  scrambled: {scrambled:?}"));
        }
    }
    println!(
        "non-interference: {cases} queries (seed {seed}), {answered} ran ({safe} within the safe zone, \
         {:.1}%), {refused} refused before a result (invalid or failed), {} violations",
        100.0 * safe as f64 / cases as f64,
        violations.len()
    );
    assert!(violations.is_empty(), "{} violation(s):\n{}", violations.len(), violations.join("\n"));
    // The generator must reach the guard's interesting cases, not only errors.
    assert!(answered * 2 > cases, "only {answered} of {cases} generated queries ran");
    assert!(safe * 20 > cases, "only {safe} of {cases} generated queries were within the safe zone");
}
