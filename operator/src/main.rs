use clap::Parser;

use broker_auth_operator::config::{Cli, Command};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Crd) = cli.command {
        print!("{}", broker_auth_operator::crd::crd_yaml()?);
        return Ok(());
    }
    // RUST_LOG, LOG_FORMAT and OTEL_EXPORTER_OTLP_ENDPOINT are read by the telemetry crate.
    let _telemetry = broker_auth_telemetry::init("broker-auth-operator")?;
    broker_auth_operator::app::run(cli.config).await?;
    Ok(())
}
