//! The stored record: one fixed, hand-written binary layout.
//!
//! The chain hash covers exactly the header bytes that are stored, so verification never
//! depends on a serializer's output staying stable across versions (bincode is
//! unmaintained and its output is not a contract).
//!
//! Layout, format 1, all integers big-endian:
//! ```text
//! u8 format | [16] event_id | [16] tenant | u8 len, stream kind | u16 len, stream id
//! u64 version | u64 tenant_seq | u64 position | i64 recorded_at (µs since epoch)
//! u8 actor tag, u16 len, actor id | [16] correlation | u8 has_causation, [16]?
//! u8 len, event type | u16 schema version            <- end of the hashed header
//! [32] payload digest | [32] chain hash | u32 len, payload
//! ```
use std::fmt;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Result};

/// The record format this build writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// Largest payload accepted. sled moves values over ~128 KiB into blob files that it never
/// fsyncs, so every record must stay well below that.
pub const MAX_PAYLOAD: usize = 64 * 1024;
pub const MAX_STREAM_KIND: usize = 64;
pub const MAX_STREAM_ID: usize = 256;
pub const MAX_EVENT_TYPE: usize = 128;
pub const MAX_ACTOR_ID: usize = 256;

/// A stream: the events of one aggregate, e.g. `tenant/0191…` or `message/0192…`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StreamId {
    pub kind: String,
    pub id: String,
}

impl StreamId {
    pub fn new(kind: impl Into<String>, id: impl Into<String>) -> Self {
        StreamId {
            kind: kind.into(),
            id: id.into(),
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.kind.is_empty() || self.kind.len() > MAX_STREAM_KIND {
            return Err(Error::InvalidInput(format!(
                "stream kind must be 1..={MAX_STREAM_KIND} bytes"
            )));
        }
        if self.id.is_empty() || self.id.len() > MAX_STREAM_ID {
            return Err(Error::InvalidInput(format!(
                "stream id must be 1..={MAX_STREAM_ID} bytes"
            )));
        }
        Ok(())
    }

    /// Length-prefixed encoding, so that one stream's key is never a prefix of another's.
    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        // validate() bounds both lengths, so the narrowing below cannot truncate.
        out.push(u8::try_from(self.kind.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(self.kind.as_bytes());
        out.extend_from_slice(
            &u16::try_from(self.id.len())
                .unwrap_or(u16::MAX)
                .to_be_bytes(),
        );
        out.extend_from_slice(self.id.as_bytes());
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.id)
    }
}

/// Who caused an event. Kept in every envelope so the audit timeline can say who did what.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Actor {
    /// A tenant API key, by key id (never the secret).
    ApiKey(Uuid),
    /// A human operator holding the operator token.
    Operator(String),
    /// Postledger itself (a worker, a timer, a migration).
    System(String),
}

impl Actor {
    fn tag(&self) -> u8 {
        match self {
            Actor::ApiKey(_) => 1,
            Actor::Operator(_) => 2,
            Actor::System(_) => 3,
        }
    }
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::ApiKey(id) => write!(f, "api_key:{id}"),
            Actor::Operator(name) => write!(f, "operator:{name}"),
            Actor::System(name) => write!(f, "system:{name}"),
        }
    }
}

/// What the caller hands to `append` for each event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEvent {
    /// UUID v7; also the idempotency key of the append.
    pub event_id: Uuid,
    /// Stable name, independent of any Rust type path.
    pub event_type: String,
    pub schema_version: u16,
    /// Opaque to the log (JSON in practice).
    pub payload: Vec<u8>,
}

impl NewEvent {
    /// An event with a fresh UUID v7 id: what every writer wants unless it is replaying an
    /// append under its original ids.
    pub fn new(event_type: impl Into<String>, schema_version: u16, payload: Vec<u8>) -> Self {
        NewEvent {
            event_id: Uuid::now_v7(),
            event_type: event_type.into(),
            schema_version,
            payload,
        }
    }
}

/// Envelope fields shared by every event of one append.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metadata {
    pub actor: Actor,
    /// Ties together everything one request caused.
    pub correlation_id: Uuid,
    /// The event (or command) that directly caused this one.
    pub causation_id: Option<Uuid>,
}

impl Metadata {
    pub fn new(actor: Actor, correlation_id: Uuid) -> Self {
        Metadata {
            actor,
            correlation_id,
            causation_id: None,
        }
    }
}

/// An event as stored: the full envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedEvent {
    pub event_id: Uuid,
    pub tenant: Uuid,
    pub stream: StreamId,
    /// 1-based, gapless within the stream.
    pub version: u64,
    /// 1-based, gapless within the tenant; the order of the tenant's hash chain.
    pub tenant_seq: u64,
    /// 1-based, gapless across all tenants; commit order.
    pub position: u64,
    /// Microseconds since the epoch; never decreases along the log.
    pub recorded_at_us: i64,
    pub actor: Actor,
    pub correlation_id: Uuid,
    pub causation_id: Option<Uuid>,
    pub event_type: String,
    pub schema_version: u16,
    /// Keyed blake3 of the payload; the chain covers this, not the payload itself, so a
    /// payload can later be erased (crypto-shredding) while the chain still verifies.
    pub payload_digest: [u8; 32],
    /// This record's link in the tenant's chain.
    pub hash: [u8; 32],
    pub payload: Vec<u8>,
}

impl RecordedEvent {
    pub fn recorded_at(&self) -> DateTime<Utc> {
        Utc.timestamp_micros(self.recorded_at_us)
            .single()
            .unwrap_or_default()
    }

    /// The hashed part of the record.
    pub(crate) fn encode_header(&self, out: &mut Vec<u8>) {
        out.push(FORMAT_VERSION);
        out.extend_from_slice(self.event_id.as_bytes());
        out.extend_from_slice(self.tenant.as_bytes());
        self.stream.encode_into(out);
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.tenant_seq.to_be_bytes());
        out.extend_from_slice(&self.position.to_be_bytes());
        out.extend_from_slice(&self.recorded_at_us.to_be_bytes());
        out.push(self.actor.tag());
        let actor_id = match &self.actor {
            Actor::ApiKey(id) => id.as_bytes().to_vec(),
            Actor::Operator(s) | Actor::System(s) => s.as_bytes().to_vec(),
        };
        out.extend_from_slice(
            &u16::try_from(actor_id.len())
                .unwrap_or(u16::MAX)
                .to_be_bytes(),
        );
        out.extend_from_slice(&actor_id);
        out.extend_from_slice(self.correlation_id.as_bytes());
        match self.causation_id {
            Some(c) => {
                out.push(1);
                out.extend_from_slice(c.as_bytes());
            }
            None => out.push(0),
        }
        out.push(u8::try_from(self.event_type.len()).unwrap_or(u8::MAX));
        out.extend_from_slice(self.event_type.as_bytes());
        out.extend_from_slice(&self.schema_version.to_be_bytes());
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(160 + self.payload.len());
        self.encode_header(&mut out);
        out.extend_from_slice(&self.payload_digest);
        out.extend_from_slice(&self.hash);
        out.extend_from_slice(
            &u32::try_from(self.payload.len())
                .unwrap_or(u32::MAX)
                .to_be_bytes(),
        );
        out.extend_from_slice(&self.payload);
        out
    }

    /// Decodes a stored record. Also returns the length of the hashed header.
    pub fn decode(bytes: &[u8]) -> std::result::Result<(Self, usize), String> {
        let v = RecordView::parse(bytes)?;
        let actor = match v.actor_tag {
            1 => Actor::ApiKey(
                Uuid::from_slice(v.actor_id).map_err(|_| "bad api key actor".to_string())?,
            ),
            2 => Actor::Operator(utf8(v.actor_id)?),
            3 => Actor::System(utf8(v.actor_id)?),
            t => return Err(format!("unknown actor tag {t}")),
        };
        Ok((
            RecordedEvent {
                event_id: v.event_id,
                tenant: v.tenant,
                stream: StreamId {
                    kind: utf8(v.stream_kind)?,
                    id: utf8(v.stream_id)?,
                },
                version: v.version,
                tenant_seq: v.tenant_seq,
                position: v.position,
                recorded_at_us: v.recorded_at_us,
                actor,
                correlation_id: v.correlation_id,
                causation_id: v.causation_id,
                event_type: utf8(v.event_type)?,
                schema_version: v.schema_version,
                payload_digest: v.payload_digest,
                hash: v.hash,
                payload: v.payload.to_vec(),
            },
            v.header.len(),
        ))
    }
}

/// A stored record parsed in place, without allocating: what verification needs.
pub(crate) struct RecordView<'a> {
    pub event_id: Uuid,
    pub tenant: Uuid,
    pub stream_kind: &'a [u8],
    pub stream_id: &'a [u8],
    pub version: u64,
    pub tenant_seq: u64,
    pub position: u64,
    pub recorded_at_us: i64,
    pub actor_tag: u8,
    pub actor_id: &'a [u8],
    pub correlation_id: Uuid,
    pub causation_id: Option<Uuid>,
    pub event_type: &'a [u8],
    pub schema_version: u16,
    /// The hashed header bytes, exactly as stored.
    pub header: &'a [u8],
    pub payload_digest: [u8; 32],
    pub hash: [u8; 32],
    pub payload: &'a [u8],
}

impl<'a> RecordView<'a> {
    pub fn parse(bytes: &'a [u8]) -> std::result::Result<Self, String> {
        let mut r = Reader { bytes, at: 0 };
        let format = r.u8()?;
        if format != FORMAT_VERSION {
            return Err(format!("unknown record format {format}"));
        }
        let event_id = r.uuid()?;
        let tenant = r.uuid()?;
        let kind_len = usize::from(r.u8()?);
        let stream_kind = r.take(kind_len)?;
        let id_len = usize::from(r.u16()?);
        let stream_id = r.take(id_len)?;
        let version = r.u64()?;
        let tenant_seq = r.u64()?;
        let position = r.u64()?;
        let recorded_at_us = i64::from_be_bytes(r.array()?);
        let actor_tag = r.u8()?;
        let actor_len = usize::from(r.u16()?);
        let actor_id = r.take(actor_len)?;
        let correlation_id = r.uuid()?;
        let causation_id = match r.u8()? {
            0 => None,
            1 => Some(r.uuid()?),
            t => return Err(format!("bad causation flag {t}")),
        };
        let type_len = usize::from(r.u8()?);
        let event_type = r.take(type_len)?;
        let schema_version = r.u16()?;
        let header = &bytes[..r.at];
        let payload_digest = r.array()?;
        let hash = r.array()?;
        let payload_len = usize::try_from(u32::from_be_bytes(r.array()?))
            .map_err(|_| "payload length overflows".to_string())?;
        let payload = r.take(payload_len)?;
        if r.at != bytes.len() {
            return Err("trailing bytes after payload".into());
        }
        Ok(RecordView {
            event_id,
            tenant,
            stream_kind,
            stream_id,
            version,
            tenant_seq,
            position,
            recorded_at_us,
            actor_tag,
            actor_id,
            correlation_id,
            causation_id,
            event_type,
            schema_version,
            header,
            payload_digest,
            hash,
            payload,
        })
    }
}

fn utf8(b: &[u8]) -> std::result::Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|_| "invalid utf-8".to_string())
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|e| *e <= self.bytes.len())
            .ok_or_else(|| format!("record truncated at byte {}", self.at))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn array<const N: usize>(&mut self) -> std::result::Result<[u8; N], String> {
        let s = self.take(N)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }
    fn u8(&mut self) -> std::result::Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> std::result::Result<u16, String> {
        Ok(u16::from_be_bytes(self.array()?))
    }
    fn u64(&mut self) -> std::result::Result<u64, String> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    fn uuid(&mut self) -> std::result::Result<Uuid, String> {
        Ok(Uuid::from_bytes(self.array()?))
    }
}
