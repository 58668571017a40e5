//! `postledger bench suppressions`: a CSV import of N distinct addresses through the same
//! function the REST endpoint uses (timed until durable, and until the read model has
//! caught up), then 100,000 look-ups (half hits, half misses, in random order), each timed:
//! once cold (straight after the import) and, as reported, after the model was read
//! through once ([`projections::suppressions::SuppressionsRead::warm`]).
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::Utc;
use domain::message::Category;
use domain::suppression::Scope;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::app::App;
use crate::auth::Principal;
use crate::config::{Config, Overrides};
use crate::service::{self, Ctx};

const LOOKUPS: usize = 100_000;

/// splitmix64's finaliser: a bijection on u64, so distinct inputs give distinct addresses.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn address(i: u64) -> String {
    format!("{:016x}@example{}.com", mix(i), i % 100)
}

/// A small deterministic generator for the look-up order.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn csv(entries: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(usize::try_from(entries).unwrap_or(0) * 48 + 64);
    out.extend_from_slice(b"address,reason,applies_to,expires_at,note\n");
    for i in 0..entries {
        let a = address(i);
        out.extend_from_slice(a.as_bytes());
        // Mostly hard bounces; every tenth a marketing-only unsubscribe with a note.
        if i % 10 == 0 {
            out.extend_from_slice(b",unsubscribe,marketing,,from the old platform\n");
        } else {
            out.extend_from_slice(b",hard_bounce,,,\n");
        }
    }
    out
}

fn micros(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)].as_secs_f64() * 1e6
}

/// Times `LOOKUPS` look-ups; fails if any answer is wrong.
fn lookups(
    app: &App,
    tenant: Uuid,
    entries: u64,
    plus: bool,
    seed: u64,
) -> anyhow::Result<Vec<Duration>> {
    let mut rng = Rng(seed);
    let mut probes: Vec<(String, bool)> = (0..LOOKUPS)
        .map(|n| {
            if n % 2 == 0 {
                (address(rng.below(entries)), true)
            } else {
                (address(entries + rng.below(u64::MAX / 2)), false)
            }
        })
        .collect();
    // Fisher–Yates.
    for i in (1..probes.len()).rev() {
        let j = usize::try_from(rng.below(i as u64 + 1)).unwrap_or(0);
        probes.swap(i, j);
    }
    let now = Utc::now();
    let mut times = Vec::with_capacity(probes.len());
    let mut wrong = 0usize;
    for (a, hit) in &probes {
        // Marketing: every entry of the import stops it.
        let started = Instant::now();
        let found = app
            .suppressions
            .lookup(tenant, a, plus, Category::Marketing, now)?;
        times.push(started.elapsed());
        if found.is_some() != *hit {
            wrong += 1;
        }
    }
    anyhow::ensure!(wrong == 0, "{wrong} look-ups answered wrongly");
    times.sort();
    Ok(times)
}

#[allow(clippy::cast_precision_loss)]
pub fn run(entries: usize, cache_mb: u64, dir: Option<PathBuf>) -> anyhow::Result<Value> {
    anyhow::ensure!(entries > 0, "--entries must be at least 1");
    let tmp = tempfile::tempdir()?;
    let path = dir.unwrap_or_else(|| tmp.path().join("bench"));
    let mut config = Config::load(&Overrides {
        data_dir: Some(path),
        ..Overrides::default()
    })?;
    config.cache_bytes = cache_mb.max(1).saturating_mul(1024 * 1024);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let ctx = Ctx {
        principal: Principal::Operator,
        correlation_id: Uuid::now_v7(),
    };
    let n = entries as u64;
    let body = csv(n);
    let (app, tenant, report, durable, projected) = rt.block_on(async {
        let app = App::open(&config).context("open the benchmark's data folder")?;
        let tenant = service::create_tenant(&app, &ctx, "bench suppressions")
            .await
            .map_err(|e| anyhow::anyhow!("create tenant: {}", e.message))?
            .id;
        let started = Instant::now();
        let report = crate::suppressions::import_csv(&app, &ctx, Some(tenant), Scope::Tenant, body)
            .await
            .map_err(|e| anyhow::anyhow!("import: {} ({})", e.message, e.code))?;
        let durable = started.elapsed();
        let caught_up = app
            .projections
            .wait_for(report.last_position, Duration::from_secs(3600))
            .await;
        let projected = started.elapsed();
        anyhow::ensure!(caught_up, "the read model did not catch up");
        anyhow::Ok((app, tenant, report, durable, projected))
    })?;
    anyhow::ensure!(
        report.imported == n && report.skipped == 0,
        "imported {} and skipped {} of {n} rows: {:?}",
        report.imported,
        report.skipped,
        report.errors.first()
    );
    // Look-ups are measured on a settled store: what the import wrote is flushed first, so
    // sled's background flush does not run during them.
    app.log.models_db().flush()?;
    let stored = app.suppressions.count(tenant)?;
    anyhow::ensure!(stored == n, "the read model holds {stored} of {n} entries");
    // A first pass straight after the import: sled loads pages lazily, so it pays for
    // reading cold pages. Then the model is read through once (what a server does in the
    // background at start) and the figures are taken warm.
    let cold = lookups(&app, tenant, n, false, 1)?;
    let started = Instant::now();
    app.suppressions.warm()?;
    let warm_s = started.elapsed().as_secs_f64();
    let exact = lookups(&app, tenant, n, false, 2)?;
    let plus = lookups(&app, tenant, n, true, 3)?;
    rt.block_on(app.projections.stop());
    drop(app);
    Ok(json!({
        "entries": entries,
        "import_per_s": n as f64 / durable.as_secs_f64().max(1e-9),
        "import_projected_per_s": n as f64 / projected.as_secs_f64().max(1e-9),
        "lookup_p50_us": micros(&exact, 0.50),
        "lookup_p99_us": micros(&exact, 0.99),
        "lookup_max_us": micros(&exact, 1.0),
        "import_durable_s": durable.as_secs_f64(),
        "import_projected_s": projected.as_secs_f64(),
        "import_chunks": report.chunks,
        "lookup_plus_addressing_p50_us": micros(&plus, 0.50),
        "lookup_plus_addressing_p99_us": micros(&plus, 0.99),
        "lookup_cold_p50_us": micros(&cold, 0.50),
        "lookup_cold_p99_us": micros(&cold, 0.99),
        "warm_s": warm_s,
        "cache_mb": config.cache_bytes / (1024 * 1024),
    }))
}
