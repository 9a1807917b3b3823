//! openstacksdk drives a real Ferric (tests/python/sdk_lifecycle.py), on
//! SQLite and on PostgreSQL.

use std::path::Path;
use std::process::Command;

use ferric_tests::{Ferric, Postgres, venv};

fn run_sdk(endpoint: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("python/sdk_lifecycle.py");
    let out = Command::new(venv().join("bin/python")).arg(script).arg(endpoint).output().expect("run python");
    assert!(
        out.status.success(),
        "openstacksdk lifecycle failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("openstacksdk lifecycle: ok"));
}

#[test]
fn openstacksdk_lifecycle_sqlite() {
    let ferric = Ferric::start(None, &[]);
    run_sdk(&ferric.endpoint);
}

#[test]
fn openstacksdk_lifecycle_postgres() {
    let pg = Postgres::start();
    let url = pg.database("ferric_sdk");
    let ferric = Ferric::start(Some(&url), &[]);
    run_sdk(&ferric.endpoint);
}
