use anyhow::Context;
use broker_auth_api::{App, Config};
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let _telemetry = broker_auth_telemetry::init("broker-auth-api")?;
    let app = App::build(config)
        .await
        .context("broker-auth-api failed to start")?;
    app.run_until_stopped(broker_auth_api::shutdown_signal())
        .await
        .context("broker-auth-api stopped with an error")
}
