//! Counting what was lost and duplicated once the load has stopped, and the table.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use broker_auth_testkit::smtp::SmtpCapture;
use sqlx::Connection;

use crate::load::{Ledger, PhaseCounts, accepted_signups};
use crate::system::Result;

/// How long the mail may take to settle after the load stopped.
const MAIL_SETTLE: Duration = Duration::from_secs(60);
/// No new mail for this long means the mailer is done.
const MAIL_QUIET: Duration = Duration::from_secs(3);

#[derive(Debug)]
pub struct PhaseResult {
    pub name: &'static str,
    pub counts: PhaseCounts,
    /// Seconds from the dependency being back to every probe request succeeding, or what the
    /// last probe round's failed requests got.
    pub recovery: Result<f64, String>,
    /// For the dbproc faults: what happened to the replica that was not touched.
    pub survivor: Option<Survivor>,
    pub users_lost: u64,
    pub users_duplicated: u64,
    pub mails_lost: u64,
    pub mails_twice: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct Survivor {
    /// Partitions revoked from it during the phase.
    pub revoked: f64,
    /// Whether the target is that it keeps every partition (0 revoked).
    pub must_keep: bool,
}

impl PhaseResult {
    pub fn new(
        name: &'static str,
        recovery: Result<f64, String>,
        survivor: Option<Survivor>,
    ) -> Self {
        Self {
            name,
            counts: PhaseCounts::default(),
            recovery,
            survivor,
            users_lost: 0,
            users_duplicated: 0,
            mails_lost: 0,
            mails_twice: 0,
        }
    }
}

pub struct Table {
    phases: Vec<PhaseResult>,
}

impl Table {
    /// Waits for the mail to settle, then attributes every loss and duplicate to the phase of
    /// the request it belongs to.
    pub async fn account(
        mut phases: Vec<PhaseResult>,
        ledger: &Ledger,
        smtp: &SmtpCapture,
        database_url: &str,
    ) -> Result<Self> {
        let counts = ledger.counts();
        for (phase, counts) in phases.iter_mut().zip(counts) {
            phase.counts = counts;
        }
        let signups = accepted_signups(
            &ledger
                .signups
                .lock()
                .map_or_else(|e| e.into_inner().clone(), |s| s.clone()),
        );
        settle_mail(smtp, &signups).await;

        // Mail: a signup answered 202 owes one mail; a Message-ID seen twice is a duplicate.
        let mut message_ids: HashMap<String, (String, u64)> = HashMap::new();
        for mail in smtp.messages() {
            let id = mail.header("Message-ID").unwrap_or_default();
            let to = mail.recipients.first().cloned().unwrap_or_default();
            message_ids.entry(id).or_insert((to, 0)).1 += 1;
        }
        let mut distinct_by_email: HashMap<&str, u64> = HashMap::new();
        for (to, copies) in message_ids.values() {
            *distinct_by_email.entry(to.as_str()).or_default() += 1;
            let phase = signups.get(to).map(|(_, phase)| *phase);
            if let (true, Some(result)) = (*copies > 1, phase.and_then(|p| phases.get_mut(p))) {
                result.mails_twice += copies - 1;
            }
        }
        for (email, (accepted, phase)) in &signups {
            let delivered = distinct_by_email.get(email.as_str()).copied().unwrap_or(0);
            if let Some(result) = phases.get_mut(*phase) {
                result.mails_lost += accepted.saturating_sub(delivered);
            }
        }

        // Users: a verify answered 201 owes one user with that id.
        let verified = ledger
            .verified
            .lock()
            .map_or_else(|e| e.into_inner().clone(), |v| v.clone());
        let emails: Vec<String> = verified.iter().map(|v| v.email.clone()).collect();
        let mut connection = sqlx::PgConnection::connect(database_url).await?;
        let rows: Vec<(String, uuid::Uuid)> =
            sqlx::query_as("SELECT email, id FROM users WHERE email = ANY($1)")
                .bind(&emails)
                .fetch_all(&mut connection)
                .await?;
        connection.close().await?;
        let mut stored: HashMap<String, Vec<String>> = HashMap::new();
        for (email, id) in rows {
            stored.entry(email).or_default().push(id.to_string());
        }
        let mut answered: HashMap<&str, HashSet<&str>> = HashMap::new();
        for v in &verified {
            answered.entry(&v.email).or_default().insert(&v.user_id);
        }
        for v in &verified {
            let Some(result) = phases.get_mut(v.phase) else {
                continue;
            };
            match stored.get(&v.email) {
                Some(ids) if ids.contains(&v.user_id) => {}
                _ => result.users_lost += 1,
            }
        }
        for (email, ids) in &answered {
            let rows = stored.get(*email).map_or(0, Vec::len);
            if ids.len() > 1 || rows > 1 {
                let phase = verified
                    .iter()
                    .find(|v| v.email == *email)
                    .map_or(0, |v| v.phase);
                if let Some(result) = phases.get_mut(phase) {
                    result.users_duplicated += 1;
                }
            }
        }
        Ok(Self { phases })
    }

    pub fn print(&self) {
        println!(
            "\n| fault | 2xx | 503 + Retry-After | other | recovery s | users lost | users duplicated | mails lost | mails sent twice | survivor partitions revoked |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        let mut others: BTreeMap<String, u64> = BTreeMap::new();
        for phase in &self.phases {
            let recovery = phase
                .recovery
                .as_ref()
                .map_or_else(|_| "never".to_owned(), |s| format!("{s:.1}"));
            let survivor = phase
                .survivor
                .map_or_else(|| "-".to_owned(), |s| format!("{}", s.revoked));
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                phase.name,
                phase.counts.ok,
                phase.counts.unavailable,
                phase.counts.others(),
                recovery,
                phase.users_lost,
                phase.users_duplicated,
                phase.mails_lost,
                phase.mails_twice,
                survivor,
            );
            for (what, count) in &phase.counts.other {
                *others.entry(format!("{}: {what}", phase.name)).or_default() += count;
            }
        }
        for phase in &self.phases {
            if let Err(failures) = &phase.recovery {
                println!(
                    "\n{}: never recovered; the last probe round got {failures}",
                    phase.name
                );
            }
        }
        let superseded: Vec<String> = self
            .phases
            .iter()
            .filter(|p| p.counts.superseded > 0)
            .map(|p| format!("{} x{}", p.name, p.counts.superseded))
            .collect();
        if !superseded.is_empty() {
            println!(
                "\nverifies answered 400 invalid_code on a code a newer one then replaced (a signup \
                 answered 503 whose mail still went out, then the retry's; expected): {}",
                superseded.join(", ")
            );
        }
        if !others.is_empty() {
            println!("\nanswers other than 2xx and 503 with Retry-After:");
            for (what, count) in others {
                println!("- {what} x{count}");
            }
        }
    }

    /// 0 users lost or duplicated, 0 mails lost, nothing but 2xx and 503 with Retry-After, every
    /// fault recovered from, and a killed replica's peer kept its partitions.
    pub fn targets_met(&self) -> bool {
        self.phases.iter().all(|p| {
            p.users_lost == 0
                && p.users_duplicated == 0
                && p.mails_lost == 0
                && p.counts.others() == 0
                && p.recovery.is_ok()
                && p.survivor.is_none_or(|s| !s.must_keep || s.revoked == 0.0)
        })
    }
}

/// Waits until every accepted signup has a mail, or the mail stops coming.
async fn settle_mail(smtp: &SmtpCapture, signups: &HashMap<String, (u64, usize)>) {
    let deadline = Instant::now() + MAIL_SETTLE;
    let mut last_count = smtp.message_count();
    let mut last_change = Instant::now();
    while Instant::now() < deadline {
        let messages = smtp.messages();
        let delivered: HashSet<&str> = messages
            .iter()
            .filter_map(|m| m.recipients.first().map(String::as_str))
            .collect();
        if signups
            .keys()
            .all(|email| delivered.contains(email.as_str()))
            && last_change.elapsed() >= MAIL_QUIET
        {
            return;
        }
        if messages.len() != last_count {
            last_count = messages.len();
            last_change = Instant::now();
        }
        // Polling the capture: a short pause between looks, bounded by the deadline.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
