use std::time::Duration;

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
    if let Some(Command::DeleteBrokerauths(delete)) = cli.command {
        let client = kube::Client::try_default().await?;
        let deleted = broker_auth_operator::uninstall::delete_brokerauths(
            client,
            &delete.namespace,
            &delete.selector,
            Duration::from_secs(delete.timeout_seconds),
            Duration::from_secs(2),
        )
        .await?;
        tracing::info!(?deleted, "BrokerAuths deleted and cleaned up");
        return Ok(());
    }
    broker_auth_operator::app::run(cli.config).await?;
    Ok(())
}
