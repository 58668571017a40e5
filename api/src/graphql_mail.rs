//! The send pipeline's GraphQL: sender profiles, relays, the delivery callback and
//! messages. Thin resolvers over [`crate::sending`], merged into the schema beside the
//! tenant and audit fields of [`crate::graphql`].
use std::collections::BTreeMap;

use async_graphql::connection::{Connection, Edge};
use async_graphql::{Context, Enum, InputObject, Json, Object, SimpleObject, ID};
use chrono::{DateTime, Utc};
use projections::mail_settings::{CallbackView, RelayView, SenderView};
use projections::messages::{MessageFilter as ViewFilter, MessageView};
use serde_json::Value;

use crate::error::ApiError;
use crate::graphql::{opt_id, parse_id, parts, time, GqlResult};
use crate::sending::{
    self, AddressInput as RestAddress, AddressList, AttachmentInput as RestAttachment,
    RelayInput as RestRelayInput, SendRequest, SenderInput as RestSenderInput, TimelineEntry,
};

// Domain enums as GraphQL enums; read models keep their snake_case names, which the
// domain parses.
#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(remote = "domain::message::Category")]
pub enum Category {
    Transactional,
    Marketing,
}

impl Category {
    fn from_str(s: &str) -> Category {
        domain::message::Category::parse(s)
            .unwrap_or(domain::message::Category::Transactional)
            .into()
    }

    pub(crate) fn as_str(self) -> &'static str {
        domain::message::Category::from(self).as_str()
    }
}

#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(remote = "domain::mail_settings::TlsMode")]
pub enum TlsMode {
    /// Plain SMTP.
    None,
    /// Plain connect, then STARTTLS required.
    Starttls,
    /// TLS from the first byte.
    Tls,
}

impl TlsMode {
    fn from_str(s: &str) -> TlsMode {
        domain::mail_settings::TlsMode::parse(s)
            .unwrap_or(domain::mail_settings::TlsMode::Starttls)
            .into()
    }

    fn as_str(self) -> &'static str {
        domain::mail_settings::TlsMode::from(self).as_str()
    }
}

#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(remote = "domain::message::Priority")]
pub enum Priority {
    Immediate,
    High,
    Normal,
    Low,
}

impl Priority {
    fn from_str(s: &str) -> Priority {
        domain::message::Priority::parse(s)
            .unwrap_or(domain::message::Priority::Normal)
            .into()
    }

    pub(crate) fn as_str(self) -> &'static str {
        domain::message::Priority::from(self).as_str()
    }
}

#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(remote = "domain::message::MessageStatus")]
pub enum MessageStatus {
    Queued,
    Deferred,
    Sent,
    Failed,
    Cancelled,
    // Every recipient was suppressed when the message was due; nothing was sent. (A plain
    // comment: a doc comment would become a description in the committed SDL.)
    Suppressed,
}

impl MessageStatus {
    fn from_str(s: &str) -> MessageStatus {
        domain::message::MessageStatus::parse(s)
            .unwrap_or(domain::message::MessageStatus::Queued)
            .into()
    }

    fn as_str(self) -> &'static str {
        domain::message::MessageStatus::from(self).as_str()
    }
}

#[derive(SimpleObject)]
pub struct SenderProfile {
    pub id: ID,
    pub email: String,
    pub name: Option<String>,
    pub reply_to: Option<String>,
    pub category: Category,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<SenderView> for SenderProfile {
    fn from(v: SenderView) -> Self {
        SenderProfile {
            id: ID(v.id.to_string()),
            email: v.email,
            name: v.name,
            reply_to: v.reply_to,
            category: Category::from_str(&v.category),
            created_at: time(v.created_at_us),
            updated_at: time(v.updated_at_us),
        }
    }
}

/// An SMTP relay; its password is write-only and never returned.
#[derive(SimpleObject)]
pub struct Relay {
    pub id: ID,
    pub name: String,
    pub host: String,
    pub port: u16,
    pub tls: TlsMode,
    pub username: Option<String>,
    pub has_password: bool,
    /// Lower is tried first.
    pub priority: u32,
    pub max_connections: u32,
    pub per_minute: Option<u32>,
    pub per_hour: Option<u32>,
    pub per_day: Option<u32>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<RelayView> for Relay {
    fn from(v: RelayView) -> Self {
        Relay {
            id: ID(v.id.to_string()),
            name: v.name,
            host: v.host,
            port: v.port,
            tls: TlsMode::from_str(&v.tls),
            username: v.username,
            has_password: v.has_password,
            priority: v.priority,
            max_connections: v.max_connections,
            per_minute: v.per_minute,
            per_hour: v.per_hour,
            per_day: v.per_day,
            created_at: time(v.created_at_us),
            updated_at: time(v.updated_at_us),
        }
    }
}

#[derive(SimpleObject)]
pub struct DeliveryCallback {
    pub url: String,
    pub updated_at: DateTime<Utc>,
}

impl From<CallbackView> for DeliveryCallback {
    fn from(v: CallbackView) -> Self {
        DeliveryCallback {
            url: v.url,
            updated_at: time(v.updated_at_us),
        }
    }
}

/// A newly set callback: the only time its signing secret is shown.
#[derive(SimpleObject)]
pub struct DeliveryCallbackWithSecret {
    pub callback: DeliveryCallback,
    /// Key of the `Postledger-Signature` HMAC-SHA256 over `"{timestamp}.{body}"`.
    pub secret: String,
}

/// One event of a message's timeline, read from the log.
#[derive(SimpleObject)]
pub struct TimelineEvent {
    pub position: u64,
    /// `message` or `delivery-report`.
    pub stream: String,
    pub version: u64,
    pub event_id: ID,
    #[graphql(name = "type")]
    pub event_type: String,
    pub at: DateTime<Utc>,
    pub actor: String,
    pub summary: String,
    pub data: Json<Value>,
}

impl From<TimelineEntry> for TimelineEvent {
    fn from(e: TimelineEntry) -> Self {
        TimelineEvent {
            position: e.position,
            stream: e.stream,
            version: e.version,
            event_id: ID(e.event_id.to_string()),
            event_type: e.event_type,
            at: e.at,
            actor: e.actor,
            summary: e.summary,
            data: Json(e.data),
        }
    }
}

pub struct Message(MessageView);

#[Object]
impl Message {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn status(&self) -> MessageStatus {
        MessageStatus::from_str(&self.0.status)
    }
    async fn from(&self) -> &str {
        &self.0.from
    }
    async fn to(&self) -> &[String] {
        &self.0.to
    }
    async fn cc(&self) -> &[String] {
        &self.0.cc
    }
    async fn bcc_count(&self) -> u32 {
        self.0.bcc_count
    }
    async fn subject(&self) -> &str {
        &self.0.subject
    }
    async fn tags(&self) -> &[String] {
        &self.0.tags
    }
    async fn priority(&self) -> Priority {
        Priority::from_str(&self.0.priority)
    }
    async fn category(&self) -> Category {
        Category::from_str(&self.0.category)
    }
    async fn metadata(&self) -> Json<Value> {
        Json(serde_json::from_str(&self.0.metadata).unwrap_or(Value::Null))
    }
    async fn idempotency_key(&self) -> Option<&str> {
        self.0.idempotency_key.as_deref()
    }
    async fn attachments(&self) -> u32 {
        self.0.attachments
    }
    async fn scheduled_at(&self) -> Option<DateTime<Utc>> {
        self.0.scheduled_at_us.map(time)
    }
    async fn queued_at(&self) -> DateTime<Utc> {
        time(self.0.queued_at_us)
    }
    async fn updated_at(&self) -> DateTime<Utc> {
        time(self.0.updated_at_us)
    }
    /// Dispatch rounds so far.
    async fn attempts(&self) -> u32 {
        self.0.attempts
    }
    async fn last_code(&self) -> Option<u16> {
        self.0.last_code
    }
    async fn last_reply(&self) -> Option<&str> {
        self.0.last_reply.as_deref()
    }
    async fn relay(&self) -> Option<&str> {
        self.0.relay.as_deref()
    }
    async fn next_attempt_at(&self) -> Option<DateTime<Utc>> {
        self.0.next_attempt_at_us.map(time)
    }
    async fn sent_at(&self) -> Option<DateTime<Utc>> {
        self.0.sent_at_us.map(time)
    }
    /// Every event of this message, from the log.
    async fn timeline(&self, ctx: &Context<'_>) -> GqlResult<Vec<TimelineEvent>> {
        let (app, c) = parts(ctx)?;
        let events = sending::message_events(app, c, Some(self.0.tenant), self.0.id).await?;
        Ok(events.into_iter().map(TimelineEvent::from).collect())
    }
}

#[derive(SimpleObject)]
pub struct SendReceipt {
    pub id: ID,
    pub status: MessageStatus,
    /// An earlier request with the same idempotency key created this message.
    pub duplicate: bool,
}

impl From<sending::SendReceipt> for SendReceipt {
    fn from(r: sending::SendReceipt) -> Self {
        SendReceipt {
            id: ID(r.id.to_string()),
            status: MessageStatus::from_str(&r.status),
            duplicate: r.duplicate,
        }
    }
}

#[derive(InputObject)]
pub struct SenderProfileInput {
    pub email: Option<String>,
    pub name: Option<String>,
    pub reply_to: Option<String>,
    pub category: Option<Category>,
}

impl From<SenderProfileInput> for RestSenderInput {
    fn from(i: SenderProfileInput) -> Self {
        RestSenderInput {
            email: i.email,
            name: i.name,
            reply_to: i.reply_to,
            category: i.category.map(|c| c.as_str().to_string()),
        }
    }
}

#[derive(InputObject)]
pub struct RelayInput {
    pub name: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub tls: Option<TlsMode>,
    /// An empty string removes the username and the password.
    pub username: Option<String>,
    /// Write-only; an empty string removes it.
    pub password: Option<String>,
    pub priority: Option<u32>,
    pub max_connections: Option<u32>,
    pub per_minute: Option<u32>,
    pub per_hour: Option<u32>,
    pub per_day: Option<u32>,
}

impl From<RelayInput> for RestRelayInput {
    fn from(i: RelayInput) -> Self {
        RestRelayInput {
            name: i.name,
            host: i.host,
            port: i.port,
            tls: i.tls.map(|t| t.as_str().to_string()),
            username: i.username,
            password: i.password,
            priority: i.priority,
            max_connections: i.max_connections,
            per_minute: i.per_minute,
            per_hour: i.per_hour,
            per_day: i.per_day,
        }
    }
}

#[derive(InputObject)]
pub struct AddressInput {
    pub email: String,
    pub name: Option<String>,
}

impl From<AddressInput> for RestAddress {
    fn from(a: AddressInput) -> Self {
        RestAddress::Full {
            email: a.email,
            name: a.name,
        }
    }
}

#[derive(InputObject)]
pub struct HeaderInput {
    pub name: String,
    pub value: String,
}

#[derive(InputObject)]
pub struct AttachmentInput {
    pub filename: String,
    pub content_type: Option<String>,
    /// Base64.
    pub content: String,
    /// Makes the part inline, referenced from the HTML as `cid:<contentId>`.
    pub content_id: Option<String>,
}

/// The same fields and rules as `POST /api/v1/messages/send/`.
#[derive(InputObject)]
pub struct SendEmailInput {
    pub from: AddressInput,
    pub to: Vec<AddressInput>,
    pub cc: Option<Vec<AddressInput>>,
    pub bcc: Option<Vec<AddressInput>>,
    pub reply_to: Option<AddressInput>,
    pub subject: String,
    pub html: Option<String>,
    pub text: Option<String>,
    pub headers: Option<Vec<HeaderInput>>,
    pub tags: Option<Vec<String>>,
    pub metadata: Option<Json<Value>>,
    pub attachments: Option<Vec<AttachmentInput>>,
    pub priority: Option<Priority>,
    pub scheduled_at: Option<DateTime<Utc>>,
    pub category: Option<Category>,
    pub idempotency_key: Option<String>,
}

pub(crate) fn list(v: Option<Vec<AddressInput>>) -> Option<AddressList> {
    v.map(|v| AddressList::Many(v.into_iter().map(RestAddress::from).collect()))
}

pub(crate) fn headers(h: Option<Vec<HeaderInput>>) -> Option<BTreeMap<String, String>> {
    h.map(|h| h.into_iter().map(|h| (h.name, h.value)).collect())
}

pub(crate) fn attachments(a: Option<Vec<AttachmentInput>>) -> Option<Vec<RestAttachment>> {
    a.map(|a| {
        a.into_iter()
            .map(|a| RestAttachment {
                filename: a.filename,
                content_type: a.content_type,
                content: a.content,
                content_id: a.content_id,
            })
            .collect()
    })
}

impl From<SendEmailInput> for SendRequest {
    fn from(i: SendEmailInput) -> Self {
        SendRequest {
            from: Some(i.from.into()),
            to: Some(AddressList::Many(
                i.to.into_iter().map(RestAddress::from).collect(),
            )),
            cc: list(i.cc),
            bcc: list(i.bcc),
            reply_to: i.reply_to.map(RestAddress::from),
            subject: Some(i.subject),
            html: i.html,
            text: i.text,
            headers: headers(i.headers),
            tags: i.tags,
            metadata: i.metadata.map(|m| m.0),
            attachments: attachments(i.attachments),
            priority: i.priority.map(|p| p.as_str().to_string()),
            scheduled_at: i.scheduled_at.map(|t| t.to_rfc3339()),
            category: i.category.map(|c| c.as_str().to_string()),
            idempotency_key: i.idempotency_key,
        }
    }
}

#[derive(InputObject, Default)]
pub struct MessageFilter {
    pub status: Option<MessageStatus>,
    pub tag: Option<String>,
    /// A to or cc address (any case).
    pub to: Option<String>,
    pub from: Option<String>,
    /// Queued at or after.
    pub since: Option<DateTime<Utc>>,
    /// Queued before.
    pub until: Option<DateTime<Utc>>,
}

#[derive(Default)]
pub struct MailQuery;

#[Object]
impl MailQuery {
    /// The addresses the tenant may send from.
    async fn sender_profiles(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<ID>,
    ) -> GqlResult<Vec<SenderProfile>> {
        let (app, c) = parts(ctx)?;
        let list = sending::senders(app, c, opt_id("tenantId", tenant_id)?)?;
        Ok(list.into_iter().map(SenderProfile::from).collect())
    }

    /// The tenant's SMTP relays, in the order they are tried.
    async fn relays(&self, ctx: &Context<'_>, tenant_id: Option<ID>) -> GqlResult<Vec<Relay>> {
        let (app, c) = parts(ctx)?;
        let list = sending::relays(app, c, opt_id("tenantId", tenant_id)?)?;
        Ok(list.into_iter().map(Relay::from).collect())
    }

    async fn delivery_callback(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<ID>,
    ) -> GqlResult<Option<DeliveryCallback>> {
        let (app, c) = parts(ctx)?;
        Ok(sending::callback(app, c, opt_id("tenantId", tenant_id)?)?.map(Into::into))
    }

    /// One message with its current state and its timeline.
    async fn message(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<ID>,
        id: ID,
    ) -> GqlResult<Message> {
        let (app, c) = parts(ctx)?;
        let id = parse_id("id", &id)?;
        Ok(Message(
            sending::get_message(app, c, opt_id("tenantId", tenant_id)?, id).await?,
        ))
    }

    /// Messages, newest first; `after` is the cursor of a previous page.
    async fn messages(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<ID>,
        filter: Option<MessageFilter>,
        first: Option<i32>,
        after: Option<String>,
    ) -> GqlResult<Connection<String, Message>> {
        let (app, c) = parts(ctx)?;
        let f = filter.unwrap_or_default();
        let filter = ViewFilter {
            status: f.status.map(|s| s.as_str().to_string()),
            tag: f.tag,
            to: f.to,
            from: f.from,
            since_us: f.since.map(|t| t.timestamp_micros()),
            until_us: f.until.map(|t| t.timestamp_micros()),
        };
        let first = match first {
            None => 50,
            Some(n) if (1..=100).contains(&n) => usize::try_from(n).unwrap_or(50),
            Some(_) => return Err(ApiError::invalid("first", "must be between 1 and 100").into()),
        };
        let cursor = after
            .as_deref()
            .map(|a| {
                a.parse::<u64>()
                    .map_err(|_| ApiError::invalid("after", "not a cursor from this listing"))
            })
            .transpose()?;
        let page = sending::list_messages(
            app,
            c,
            opt_id("tenantId", tenant_id)?,
            &filter,
            cursor,
            first,
        )?;
        let mut conn = Connection::new(cursor.is_some(), page.next.is_some());
        conn.edges.extend(
            page.items
                .into_iter()
                .map(|v| Edge::new(v.position.to_string(), Message(v))),
        );
        Ok(conn)
    }
}

#[derive(Default)]
pub struct MailMutation;

#[Object]
impl MailMutation {
    async fn create_sender_profile(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<ID>,
        input: SenderProfileInput,
    ) -> GqlResult<SenderProfile> {
        let (app, c) = parts(ctx)?;
        Ok(
            sending::create_sender(app, c, opt_id("tenantId", tenant_id)?, input.into())
                .await?
                .into(),
        )
    }

    async fn update_sender_profile(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<ID>,
        id: ID,
        input: SenderProfileInput,
    ) -> GqlResult<SenderProfile> {
        let (app, c) = parts(ctx)?;
        let id = parse_id("id", &id)?;
        Ok(
            sending::update_sender(app, c, opt_id("tenantId", tenant_id)?, id, input.into())
                .await?
                .into(),
        )
    }

    async fn delete_sender_profile(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<ID>,
        id: ID,
    ) -> GqlResult<bool> {
        let (app, c) = parts(ctx)?;
        let id = parse_id("id", &id)?;
        sending::delete_sender(app, c, opt_id("tenantId", tenant_id)?, id).await?;
        Ok(true)
    }

    async fn create_relay(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<ID>,
        input: RelayInput,
    ) -> GqlResult<Relay> {
        let (app, c) = parts(ctx)?;
        Ok(
            sending::create_relay(app, c, opt_id("tenantId", tenant_id)?, input.into())
                .await?
                .into(),
        )
    }

    async fn update_relay(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<ID>,
        id: ID,
        input: RelayInput,
    ) -> GqlResult<Relay> {
        let (app, c) = parts(ctx)?;
        let id = parse_id("id", &id)?;
        Ok(
            sending::update_relay(app, c, opt_id("tenantId", tenant_id)?, id, input.into())
                .await?
                .into(),
        )
    }

    async fn delete_relay(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<ID>,
        id: ID,
    ) -> GqlResult<bool> {
        let (app, c) = parts(ctx)?;
        let id = parse_id("id", &id)?;
        sending::delete_relay(app, c, opt_id("tenantId", tenant_id)?, id).await?;
        Ok(true)
    }

    /// Sets the delivery report URL and a new signing secret, shown only in this answer.
    async fn set_delivery_callback(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<ID>,
        url: String,
    ) -> GqlResult<DeliveryCallbackWithSecret> {
        let (app, c) = parts(ctx)?;
        let (view, secret) =
            sending::set_callback(app, c, opt_id("tenantId", tenant_id)?, &url).await?;
        Ok(DeliveryCallbackWithSecret {
            callback: view.into(),
            secret,
        })
    }

    async fn clear_delivery_callback(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<ID>,
    ) -> GqlResult<bool> {
        let (app, c) = parts(ctx)?;
        sending::clear_callback(app, c, opt_id("tenantId", tenant_id)?).await?;
        Ok(true)
    }

    /// Queues a message; answers once `MessageQueued` is durable.
    async fn send_email(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<ID>,
        input: SendEmailInput,
    ) -> GqlResult<SendReceipt> {
        let (app, c) = parts(ctx)?;
        let r = sending::send(app, c, opt_id("tenantId", tenant_id)?, input.into(), None).await?;
        Ok(r.into())
    }

    /// Cancels a message that has not been sent yet.
    async fn cancel_message(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<ID>,
        id: ID,
        reason: Option<String>,
    ) -> GqlResult<Message> {
        let (app, c) = parts(ctx)?;
        let id = parse_id("id", &id)?;
        Ok(Message(
            sending::cancel_message(app, c, opt_id("tenantId", tenant_id)?, id, reason).await?,
        ))
    }
}
