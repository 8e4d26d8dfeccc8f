use std::process::ExitCode;

use broker_auth_dbproc::{App, Cli, Command};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse_or_exit();
    let _telemetry = match broker_auth_telemetry::init("broker-auth-dbproc") {
        Ok(guard) => guard,
        Err(error) => {
            eprintln!("broker-auth-dbproc: could not set up logging: {error}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = match cli.command {
        Command::Migrate(config) => broker_auth_dbproc::migrate(&config).await.map(|()| {
            tracing::info!("migrations applied");
        }),
        Command::Serve(config) => serve(config).await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!(%error, "broker-auth-dbproc failed");
            eprintln!("broker-auth-dbproc: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: broker_auth_dbproc::Config) -> broker_auth_dbproc::Result<()> {
    let app = App::build(config).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    app.run(shutdown).await
}

/// Cancels `shutdown` on SIGINT or SIGTERM (what Kubernetes sends before killing a pod).
async fn cancel_on_signal(shutdown: CancellationToken) {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {}
        () = terminate => {}
    }
    tracing::info!(
        "shutdown requested; a mail being sent is finished, any other record in hand is left uncommitted for redelivery"
    );
    shutdown.cancel();
}
