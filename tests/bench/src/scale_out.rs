//! Scaling out: 1, 2, 4, 8 API processes on one broker, under the same total signup load. Each
//! signup is a directory round trip, so each needs one reply; every API instance reads only its
//! own reply topic, so replies read per reply needed stays at 1 whatever the instance count (it
//! grew with it while every instance read every reply partition).

use std::time::Duration;

use broker_auth_e2e::metric_sum_in;
use serde_json::json;

use crate::Result;
use crate::deploy::{Deployment, Settings};
use crate::flows::{signup_load, sourced_clients};
use crate::report::{Table, num};

/// Workers in every run, spread over the API processes.
const CONCURRENCY: usize = 64;
/// Unmeasured time at the start of each run.
const WARM_UP: Duration = Duration::from_millis(500);
const AWAITED: &str = "broker_auth_api_kafka_replies_read_total{awaited=\"true\"}";
const NOT_AWAITED: &str = "broker_auth_api_kafka_replies_read_total{awaited=\"false\"}";

pub async fn table(settings: &Settings, processes: &[usize], step: Duration) -> Result<Table> {
    let mut table = Table::new(
        &format!(
            "6. Scaling out: API processes on one broker, {CONCURRENCY} signup workers in all"
        ),
        &[
            "api processes",
            "signups/s",
            "p99 ms",
            "replies read per reply needed",
            "api CPU ms per signup",
            "extra CPU ms per signup vs 1",
        ],
    );
    let mut base_cpu = None;
    for &count in processes {
        let deployment = Deployment::start(&Settings {
            apis: count,
            ..settings.clone()
        })
        .await?;
        let before = replies(&deployment).await?;
        let cpu_before = deployment.apis_cpu_seconds();
        let clients = sourced_clients(CONCURRENCY, |i| deployment.apis[i % count].origin())?;
        let mut result = signup_load(&clients, WARM_UP, step).await;
        let after = replies(&deployment).await?;
        let cpu_after = deployment.apis_cpu_seconds();
        let awaited = after.0 - before.0;
        let read = awaited + (after.1 - before.1);
        // CPU over the whole run, warm-up included, per signup answered in it.
        let total_signups = result.ok as f64 * (1.0 + WARM_UP.as_secs_f64() / step.as_secs_f64());
        let cpu_per_signup = (cpu_after - cpu_before) * 1000.0 / total_signups.max(1.0);
        let base = *base_cpu.get_or_insert(cpu_per_signup);
        table.row(vec![
            json!(count),
            json!(result.rate()),
            num(result.latencies.quantile_ms(0.99)),
            num((awaited > 0.0).then(|| read / awaited)),
            json!(cpu_per_signup),
            json!(cpu_per_signup - base),
        ]);
        deployment.stop().await;
    }
    table.note(
        "Replies read per reply needed: each instance reads only its own reply topic, so 1.00 \
         whatever the instance count (more would be late replies). The extra CPU per signup over \
         one process is what each instance's idle fetches and its share of the shared cores cost.",
    );
    Ok(table)
}

/// The replies all API instances have read: (awaited, not awaited).
async fn replies(deployment: &Deployment) -> Result<(f64, f64)> {
    let mut awaited = 0.0;
    let mut other = 0.0;
    for api in &deployment.apis {
        let text = reqwest::get(api.metrics_url()).await?.text().await?;
        awaited += metric_sum_in(&text, AWAITED);
        other += metric_sum_in(&text, NOT_AWAITED);
    }
    Ok((awaited, other))
}
