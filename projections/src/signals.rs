//! Per-tenant counts of what came back after sending, for the complaint and bounce rates:
//! messages sent (from `MessageSent`) and each kind of signal (from `SignalReceived`,
//! matched or not). Keys: `n/<tenant>` → [`SignalCounts`].
use domain::message::{MessageEvent, MESSAGE_STREAM};
use domain::signals::{SignalEvent, SignalKind, MESSAGE_SIGNAL_STREAM, UNMATCHED_SIGNAL_STREAM};
use domain::DomainEvent;
use eventlog::RecordedEvent;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::model::{ModelRead, ModelWrite};
use crate::runner::Projector;

pub const NAME: &str = "signals";

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalCounts {
    pub sent: u64,
    pub delivered: u64,
    pub hard_bounces: u64,
    pub soft_bounces: u64,
    pub complaints: u64,
    pub opens: u64,
    pub clicks: u64,
    pub unsubscribes: u64,
}

impl SignalCounts {
    /// Complaints per message sent (0 before anything was sent).
    pub fn complaint_rate(&self) -> f64 {
        ratio(self.complaints, self.sent)
    }

    pub fn hard_bounce_rate(&self) -> f64 {
        ratio(self.hard_bounces, self.sent)
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        0.0
    } else {
        a as f64 / b as f64
    }
}

fn key(tenant: Uuid) -> Vec<u8> {
    let mut k = b"n/".to_vec();
    k.extend_from_slice(tenant.as_bytes());
    k
}

fn failed(e: &RecordedEvent, reason: String) -> Error {
    Error::Apply {
        projector: NAME.into(),
        position: e.position,
        reason,
    }
}

pub struct SignalsProjector;

impl Projector for SignalsProjector {
    fn name(&self) -> &'static str {
        NAME
    }

    fn apply(&self, e: &RecordedEvent, model: &mut ModelWrite<'_>) -> Result<()> {
        let kind = e.stream.kind.as_str();
        let bump: fn(&mut SignalCounts) = match kind {
            MESSAGE_STREAM if e.event_type == domain::message::MESSAGE_SENT => {
                match MessageEvent::decode(&e.event_type, e.schema_version, &e.payload) {
                    Ok(_) => |c| c.sent += 1,
                    Err(err) => return Err(failed(e, err.to_string())),
                }
            }
            MESSAGE_SIGNAL_STREAM | UNMATCHED_SIGNAL_STREAM => {
                match SignalEvent::decode(&e.event_type, e.schema_version, &e.payload)
                    .map_err(|err| failed(e, err.to_string()))?
                {
                    SignalEvent::SignalReceived(s) => match s.kind {
                        SignalKind::Delivered => |c| c.delivered += 1,
                        SignalKind::Bounced { hard: true, .. } => |c| c.hard_bounces += 1,
                        SignalKind::Bounced { hard: false, .. } => |c| c.soft_bounces += 1,
                        SignalKind::Complained => |c| c.complaints += 1,
                        SignalKind::Opened => |c| c.opens += 1,
                        SignalKind::Clicked { .. } => |c| c.clicks += 1,
                        SignalKind::Unsubscribed => |c| c.unsubscribes += 1,
                    },
                    _ => return Ok(()),
                }
            }
            _ => return Ok(()),
        };
        let k = key(e.tenant);
        let mut counts: SignalCounts = model.get(&k)?.unwrap_or_default();
        bump(&mut counts);
        model.put(&k, &counts)
    }
}

#[derive(Clone)]
pub struct SignalsRead {
    model: ModelRead,
}

impl SignalsRead {
    pub fn new(model: ModelRead) -> Self {
        SignalsRead { model }
    }

    pub fn counts(&self, tenant: Uuid) -> Result<SignalCounts> {
        Ok(self.model.get(&key(tenant))?.unwrap_or_default())
    }
}
