//! `broker-auth-operator --help` never prints the value of a secret setting.

use broker_auth_operator::config::Cli;
use clap::CommandFactory;

#[test]
fn help_never_prints_the_value_of_a_secret_setting() {
    broker_auth_testkit::help::assert_help_hides_secrets(
        env!("CARGO_BIN_EXE_broker-auth-operator").as_ref(),
        &Cli::command(),
        &[&["--help"]],
        false,
    );
}
