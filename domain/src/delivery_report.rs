//! Delivery reports: the signed HTTP callbacks that tell a tenant's application what
//! happened to each message. Every try to deliver one report is recorded on the stream
//! [`DELIVERY_REPORT_STREAM`]` / <message id>`, so a restart knows which reports are still
//! owed and an auditor can see each callback's fate.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::codec::{from_json, require_v1, to_json, DomainEvent};
use crate::error::Result;

pub const DELIVERY_REPORT_STREAM: &str = "delivery-report";
pub const CALLBACK_ATTEMPTED: &str = "CallbackAttempted";

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallbackAttempted {
    /// The event id of the message event being reported (MessageSent, …).
    pub report_of: Uuid,
    /// `sent`, `deferred`, `failed` or `cancelled`.
    pub report: String,
    pub url: String,
    /// 1-based try number for this report.
    pub attempt: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub duration_ms: u64,
    /// The receiver answered 2xx.
    pub delivered: bool,
    /// No more tries will be made.
    pub gave_up: bool,
    pub at: DateTime<Utc>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum DeliveryReportEvent {
    CallbackAttempted(CallbackAttempted),
}

impl DomainEvent for DeliveryReportEvent {
    fn event_type(&self) -> &'static str {
        CALLBACK_ATTEMPTED
    }

    fn schema_version(&self) -> u16 {
        1
    }

    fn encode(&self) -> Vec<u8> {
        match self {
            DeliveryReportEvent::CallbackAttempted(p) => to_json(p),
        }
    }

    fn decode(event_type: &str, schema_version: u16, payload: &[u8]) -> Result<Self> {
        require_v1(event_type, schema_version, &[CALLBACK_ATTEMPTED])?;
        Ok(DeliveryReportEvent::CallbackAttempted(from_json(
            event_type, payload,
        )?))
    }

    fn summary(&self) -> String {
        let DeliveryReportEvent::CallbackAttempted(a) = self;
        let how = match (a.status, &a.error) {
            (Some(s), _) => format!("HTTP {s}"),
            (None, Some(e)) => e.clone(),
            (None, None) => "no answer".to_string(),
        };
        format!(
            "Callback '{}' try {} to {}: {}{}",
            a.report,
            a.attempt,
            a.url,
            how,
            if a.gave_up { " (gave up)" } else { "" }
        )
    }
}
