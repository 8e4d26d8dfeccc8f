//! `broker-auth-api --help` never prints the value of a secret setting.

use broker_auth_api::Config;
use clap::CommandFactory;

#[test]
fn help_never_prints_the_value_of_a_secret_setting() {
    broker_auth_testkit::help::assert_help_hides_secrets(
        env!("CARGO_BIN_EXE_broker-auth-api").as_ref(),
        &Config::command(),
        &[&["--help"], &["-h"]],
        true,
    );
}
