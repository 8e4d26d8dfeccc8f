use std::process::ExitCode;

use broker_auth_api::{App, Config, StartError};
use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    // Settings are checked before anything starts, so a bad one is one clear line.
    if let Err(error) = config.validate() {
        eprintln!("broker-auth-api: invalid configuration: {error}");
        return ExitCode::from(2);
    }
    let _telemetry = match broker_auth_telemetry::init("broker-auth-api") {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("broker-auth-api: could not set up logging: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = match App::build(config).await {
        Ok(app) => {
            app.run_until_stopped(broker_auth_api::shutdown_signal())
                .await
        }
        Err(error) => Err(error),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error @ StartError::Config(_)) => {
            eprintln!("broker-auth-api: {error}");
            ExitCode::from(2)
        }
        Err(error) => {
            tracing::error!(%error, "broker-auth-api stopped");
            eprintln!("broker-auth-api: {error}");
            ExitCode::FAILURE
        }
    }
}
