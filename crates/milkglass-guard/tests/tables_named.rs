//! A statement refused before planning still names the tables it tried to reach.

use milkglass_guard::{TableReference, tables_named};

fn tables() -> Vec<(String, TableReference)> {
    vec![
        ("titanic".to_string(), TableReference::bare("titanic")),
        ("shapes/frames".to_string(), TableReference::partial("shapes", "frames")),
    ]
}

#[test]
fn statements_that_parse_name_their_tables() {
    assert_eq!(tables_named("DELETE FROM titanic", &tables()), ["titanic"]);
    assert_eq!(
        tables_named("SELECT 1 FROM titanic; SELECT 2 FROM shapes.frames", &tables()),
        ["titanic", "shapes/frames"]
    );
    assert_eq!(tables_named("SELECT * FROM other", &tables()), Vec::<String>::new());
}

#[test]
fn statements_that_do_not_parse_name_tables_by_their_words() {
    assert_eq!(tables_named("SELECT * FROM titanic WHERE", &tables()), ["titanic"]);
    // A dataset table is named only by its qualified name, which needs a parse.
    assert_eq!(tables_named("SELECT frames FROM WHERE", &tables()), Vec::<String>::new());
}
