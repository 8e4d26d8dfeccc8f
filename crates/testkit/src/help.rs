//! `--help` must never print the value of a secret setting: clap shows `[env: NAME=value]` for
//! every environment fallback unless the argument hides it, and help output ends up in
//! terminals, CI logs and bug reports.

use std::path::Path;
use std::process::Command;

/// Whether an environment variable's name says it holds a secret or something that can carry
/// one (URLs carry passwords: `redis://:pw@host`, `postgres://user:pw@host/db`): it ends in
/// `_URL`, `_KEY`, `_TOKEN` or `_CREDENTIALS`, or names a secret or password anywhere.
/// (`REDIS_KEY_PREFIX` and `TLS_KEY_FILE` are not secrets; `SESSION_SIGNING_KEY` is.)
pub fn looks_secret(env: &str) -> bool {
    let last = env.rsplit('_').next().unwrap_or(env);
    ["URL", "KEY", "TOKEN", "CREDENTIALS"].contains(&last)
        || ["SECRET", "PASSWORD"].iter().any(|word| env.contains(word))
}

/// The environment variables of `command` and its subcommands whose names look secret, with
/// whether each hides its value in help.
pub fn secret_settings(command: &clap::Command) -> Vec<(String, bool)> {
    let mut found: Vec<(String, bool)> = command
        .get_arguments()
        .filter_map(|arg| {
            let env = arg.get_env()?.to_str()?.to_owned();
            looks_secret(&env).then(|| (env, arg.is_hide_env_values_set()))
        })
        .collect();
    for sub in command.get_subcommands() {
        found.extend(secret_settings(sub));
    }
    found.sort();
    found.dedup();
    found
}

fn env_names(command: &clap::Command) -> Vec<String> {
    let mut names: Vec<String> = command
        .get_arguments()
        .filter_map(|arg| Some(arg.get_env()?.to_str()?.to_owned()))
        .collect();
    for sub in command.get_subcommands() {
        names.extend(env_names(sub));
    }
    names
}

/// Runs `binary` with each of `help_invocations` while every setting of `command` holds a
/// recognisable value, and fails the test if any help text shows the value of a secret setting
/// or if a secret setting is not marked `hide_env_values`. `expect_secrets` says whether the
/// binary has secret settings today (a binary without any is still guarded against new ones).
pub fn assert_help_hides_secrets(
    binary: &Path,
    command: &clap::Command,
    help_invocations: &[&[&str]],
    expect_secrets: bool,
) {
    let secrets = secret_settings(command);
    assert_eq!(
        !secrets.is_empty(),
        expect_secrets,
        "secret settings of {}: {secrets:?}",
        command.get_name()
    );
    let shown: Vec<&str> = secrets
        .iter()
        .filter(|(_, hidden)| !hidden)
        .map(|(env, _)| env.as_str())
        .collect();
    assert!(
        shown.is_empty(),
        "these settings print their values in --help; add `hide_env_values = true`: {shown:?}"
    );
    let settings = env_names(command);
    for args in help_invocations {
        let mut run = Command::new(binary);
        run.args(*args);
        for env in &settings {
            let value = if looks_secret(env) {
                format!("scheme://user:sentinel-{env}@host/x")
            } else {
                format!("visible-{env}")
            };
            run.env(env, value);
        }
        let output = run.output().expect("the binary runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(output.status.success(), "{args:?} failed: {text}");
        // The sentinels of ordinary settings do show: help really prints env values here.
        assert!(
            text.contains("visible-"),
            "{args:?} shows no environment values at all, so the check proves nothing: {text}"
        );
        assert!(
            !text.contains("sentinel-"),
            "{args:?} printed a secret value:\n{text}"
        );
    }
}
