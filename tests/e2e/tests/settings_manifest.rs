//! `docs/settings.json` lists the environment variables each binary reads, taken from their clap
//! definitions. The chart and the operator are checked against it, so a renamed setting cannot
//! silently break a deployment. Regenerate with `UPDATE_SETTINGS=1 cargo nextest run -p broker-auth-e2e settings`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::CommandFactory;

fn env_names(command: clap::Command) -> Vec<String> {
    let mut names: Vec<String> = command
        .get_arguments()
        .filter_map(|arg| arg.get_env())
        .map(|env| env.to_string_lossy().into_owned())
        .collect();
    for sub in command.get_subcommands() {
        names.extend(env_names(sub.clone()));
    }
    // Read by the telemetry setup of every binary, outside clap.
    names.extend(["RUST_LOG", "LOG_FORMAT", "OTEL_EXPORTER_OTLP_ENDPOINT"].map(str::to_owned));
    names.sort();
    names.dedup();
    names
}

fn manifest() -> String {
    let settings = BTreeMap::from([
        ("api", env_names(broker_auth_api::Config::command())),
        ("dbproc", env_names(broker_auth_dbproc::Cli::command())),
    ]);
    serde_json::to_string_pretty(&settings).expect("serializable") + "\n"
}

#[test]
fn the_settings_manifest_matches_what_the_binaries_read() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/settings.json");
    let expected = manifest();
    if std::env::var_os("UPDATE_SETTINGS").is_some() {
        std::fs::write(&path, &expected).expect("write docs/settings.json");
    }
    let actual = std::fs::read_to_string(&path).unwrap_or_default();
    assert_eq!(
        actual, expected,
        "docs/settings.json is out of date; regenerate it with \
         `UPDATE_SETTINGS=1 cargo nextest run -p broker-auth-e2e settings`"
    );
}
