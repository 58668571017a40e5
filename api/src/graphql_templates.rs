//! The templates' GraphQL: templates and versions, the review steps, test renders, LLM
//! drafting, the tenant's drafting defaults, and `sendTemplateEmail`. Thin resolvers over
//! [`crate::templates`], merged into the schema beside [`crate::graphql_mail`].
use async_graphql::connection::{Connection, Edge};
use async_graphql::{Context, Enum, InputObject, Json, Object, SimpleObject, ID};
use chrono::{DateTime, Utc};
use domain::template::{self as tpl, SubjectVariant, TemplateVariable};
use serde_json::Value;

use crate::error::ApiError;
use crate::graphql::{opt_id, parts, GqlResult};
use crate::graphql_mail::{
    attachments, headers, list, AddressInput, AttachmentInput, Category, HeaderInput, Priority,
    SendReceipt,
};
use crate::sending::AddressInput as RestAddress;
use crate::templates::{
    self, CreateTemplateInput as RestCreate, DraftOutcome, DraftingDefaultsInput, GenerateInput,
    Review, ReviseInput, SendTemplateRequest, VersionInput,
};

#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(remote = "domain::template::VersionStatus")]
pub enum VersionStatus {
    Draft,
    Submitted,
    Approved,
    Rejected,
    /// Approved once, then replaced as current; can be made current again.
    Archived,
}

#[derive(Enum, Copy, Clone, Eq, PartialEq)]
#[graphql(remote = "domain::template::VersionSource")]
pub enum VersionSource {
    Human,
    Llm,
}

#[derive(SimpleObject)]
pub struct ReviewRecord {
    pub by: String,
    pub at: DateTime<Utc>,
    pub note: String,
}

impl From<&tpl::Review> for ReviewRecord {
    fn from(r: &tpl::Review) -> Self {
        ReviewRecord {
            by: r.by.clone(),
            at: r.at,
            note: r.note.clone(),
        }
    }
}

#[derive(SimpleObject)]
pub struct LockedSection {
    pub name: String,
    pub content: String,
}

pub struct TemplateVersion {
    version: tpl::TemplateVersion,
    current: bool,
}

#[Object]
impl TemplateVersion {
    async fn number(&self) -> u32 {
        self.version.number
    }
    async fn status(&self) -> VersionStatus {
        self.version.status.into()
    }
    /// The version live sends use.
    async fn current(&self) -> bool {
        self.current
    }
    async fn based_on(&self) -> Option<u32> {
        self.version.based_on
    }
    async fn source(&self) -> VersionSource {
        self.version.source.into()
    }
    async fn author(&self) -> &str {
        &self.version.author
    }
    async fn subject(&self) -> &str {
        &self.version.content.subject
    }
    async fn subject_variants(&self) -> Json<&Vec<SubjectVariant>> {
        Json(&self.version.content.subject_variants)
    }
    async fn preview(&self) -> Option<&str> {
        self.version.content.preview.as_deref()
    }
    async fn html(&self) -> Option<&str> {
        self.version.content.html.as_deref()
    }
    async fn text(&self) -> Option<&str> {
        self.version.content.text.as_deref()
    }
    /// The declared variables: name, required, default, description.
    async fn variables(&self) -> Json<&Vec<TemplateVariable>> {
        Json(&self.version.content.variables)
    }
    async fn locked_sections(&self) -> Vec<LockedSection> {
        self.version
            .locked_sections
            .iter()
            .map(|(name, content)| LockedSection {
                name: name.clone(),
                content: content.clone(),
            })
            .collect()
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.version.created_at
    }
    async fn updated_at(&self) -> DateTime<Utc> {
        self.version.updated_at
    }
    async fn submitted(&self) -> Option<ReviewRecord> {
        self.version.submitted.as_ref().map(Into::into)
    }
    /// The approval or rejection.
    async fn reviewed(&self) -> Option<ReviewRecord> {
        self.version.reviewed.as_ref().map(Into::into)
    }
}

pub struct Template(tpl::Template);

impl Template {
    fn version_view(&self, n: u32) -> Option<TemplateVersion> {
        self.0.versions.get(&n).map(|v| TemplateVersion {
            version: v.clone(),
            current: self.0.current == Some(n),
        })
    }
}

#[Object]
impl Template {
    async fn key(&self) -> Option<&str> {
        self.0.created.as_ref().map(|c| c.key.as_str())
    }
    async fn name(&self) -> Option<&str> {
        self.0.created.as_ref().map(|c| c.name.as_str())
    }
    async fn category(&self) -> Option<Category> {
        self.0.created.as_ref().map(|c| c.category.into())
    }
    async fn current_version(&self) -> Option<u32> {
        self.0.current
    }
    async fn created_at(&self) -> Option<DateTime<Utc>> {
        self.0.created.as_ref().map(|c| c.at)
    }
    /// Every version, oldest first.
    async fn versions(&self) -> Vec<TemplateVersion> {
        self.0
            .versions
            .keys()
            .filter_map(|n| self.version_view(*n))
            .collect()
    }
    async fn version(&self, number: u32) -> Option<TemplateVersion> {
        self.version_view(number)
    }
}

#[derive(SimpleObject)]
pub struct RenderedTemplate {
    pub version: u32,
    pub subject: String,
    pub preview: Option<String>,
    pub html: Option<String>,
    pub text: Option<String>,
    /// Index of the subject variant used, when the version has variants.
    pub variant: Option<u32>,
    /// The context the template saw, defaults included.
    pub context: Json<Value>,
}

#[derive(SimpleObject)]
pub struct DraftResult {
    /// The draft version it was saved as.
    pub version: Option<u32>,
    pub provider: String,
    pub requested_provider: String,
    pub model: String,
    pub failed_over: bool,
    pub provider_error: Option<String>,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub latency_ms: u64,
}

impl From<DraftOutcome> for DraftResult {
    fn from(o: DraftOutcome) -> Self {
        DraftResult {
            version: o.version,
            provider: o.provider,
            requested_provider: o.requested_provider,
            model: o.model,
            failed_over: o.failed_over,
            provider_error: o.provider_error,
            input_tokens: o.input_tokens,
            output_tokens: o.output_tokens,
            latency_ms: o.latency_ms,
        }
    }
}

#[derive(SimpleObject)]
pub struct DraftingDefaults {
    pub provider: String,
    pub model: Option<String>,
    pub temperature: f32,
    pub brand_voice: Option<String>,
    pub failover: bool,
}

impl From<domain::drafting::DraftingDefaults> for DraftingDefaults {
    fn from(d: domain::drafting::DraftingDefaults) -> Self {
        DraftingDefaults {
            provider: d.provider,
            model: d.model,
            temperature: d.temperature,
            brand_voice: d.brand_voice,
            failover: d.failover,
        }
    }
}

#[derive(InputObject)]
pub struct SubjectVariantInput {
    pub subject: String,
    pub weight: u32,
}

#[derive(InputObject)]
pub struct TemplateVariableInput {
    pub name: String,
    #[graphql(default)]
    pub required: bool,
    pub default: Option<Json<Value>>,
    pub description: Option<String>,
}

/// The content of a version; every text part is minijinja source.
#[derive(InputObject)]
pub struct TemplateVersionInput {
    pub subject: String,
    pub subject_variants: Option<Vec<SubjectVariantInput>>,
    pub preview: Option<String>,
    pub html: Option<String>,
    pub text: Option<String>,
    pub variables: Option<Vec<TemplateVariableInput>>,
    /// Says a change to a locked section is intended (operator or approver only).
    #[graphql(default)]
    pub edit_locked: bool,
}

impl From<TemplateVersionInput> for VersionInput {
    fn from(i: TemplateVersionInput) -> Self {
        VersionInput {
            subject: i.subject,
            subject_variants: i
                .subject_variants
                .unwrap_or_default()
                .into_iter()
                .map(|v| SubjectVariant {
                    subject: v.subject,
                    weight: v.weight,
                })
                .collect(),
            preview: i.preview,
            html: i.html,
            text: i.text,
            variables: i
                .variables
                .unwrap_or_default()
                .into_iter()
                .map(|v| TemplateVariable {
                    name: v.name,
                    required: v.required,
                    default: v.default.map(|d| d.0),
                    description: v.description,
                })
                .collect(),
            edit_locked: i.edit_locked,
        }
    }
}

#[derive(InputObject)]
pub struct CreateTemplateInput {
    pub key: String,
    pub name: String,
    pub category: Option<Category>,
    /// Version 1, a draft.
    pub version: TemplateVersionInput,
}

#[derive(InputObject)]
pub struct BriefInput {
    pub purpose: String,
    pub audience: Option<String>,
    pub tone: Option<String>,
    pub call_to_action: Option<String>,
    pub mandatory_facts: Option<Vec<String>>,
    pub prohibited_claims: Option<Vec<String>>,
}

#[derive(InputObject, Default)]
pub struct DraftOptionsInput {
    /// `dummy`, `openai`, `anthropic` or `deepseek`; default the tenant's.
    pub provider: Option<String>,
    pub model: Option<String>,
    pub temperature: Option<f32>,
}

#[derive(InputObject)]
pub struct DraftingDefaultsGqlInput {
    pub provider: Option<String>,
    pub model: Option<String>,
    pub temperature: Option<f32>,
    pub brand_voice: Option<String>,
    pub failover: Option<bool>,
}

/// The same fields and rules as `POST /api/v1/messages/send-template/`.
#[derive(InputObject)]
pub struct SendTemplateEmailInput {
    pub template: String,
    pub context: Option<Json<Value>>,
    pub from: AddressInput,
    pub to: Vec<AddressInput>,
    pub cc: Option<Vec<AddressInput>>,
    pub bcc: Option<Vec<AddressInput>>,
    pub reply_to: Option<AddressInput>,
    pub headers: Option<Vec<HeaderInput>>,
    pub tags: Option<Vec<String>>,
    pub metadata: Option<Json<Value>>,
    pub attachments: Option<Vec<AttachmentInput>>,
    pub priority: Option<Priority>,
    pub scheduled_at: Option<DateTime<Utc>>,
    pub category: Option<Category>,
    pub idempotency_key: Option<String>,
}

impl From<SendTemplateEmailInput> for SendTemplateRequest {
    fn from(i: SendTemplateEmailInput) -> Self {
        SendTemplateRequest {
            template: Some(i.template),
            context: i.context.map(|c| c.0),
            from: Some(i.from.into()),
            to: list(Some(i.to)),
            cc: list(i.cc),
            bcc: list(i.bcc),
            reply_to: i.reply_to.map(RestAddress::from),
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

#[derive(Default)]
pub struct TemplateQuery;

#[Object]
impl TemplateQuery {
    /// Templates in key order; `after` is the key of the last template of the previous page.
    async fn templates(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<ID>,
        first: Option<i32>,
        after: Option<String>,
    ) -> GqlResult<Connection<String, Template>> {
        let (app, c) = parts(ctx)?;
        let first = match first {
            None => 50,
            Some(n) if (1..=200).contains(&n) => usize::try_from(n).unwrap_or(50),
            Some(_) => return Err(ApiError::invalid("first", "must be between 1 and 200").into()),
        };
        let page = templates::list(
            app,
            c,
            opt_id("tenantId", tenant_id)?,
            after.as_deref(),
            first + 1,
        )?;
        let mut conn = Connection::new(after.is_some(), page.len() > first);
        conn.edges.extend(page.into_iter().take(first).map(|t| {
            let key = t
                .created
                .as_ref()
                .map(|c| c.key.clone())
                .unwrap_or_default();
            Edge::new(key, Template(t))
        }));
        Ok(conn)
    }

    /// One template with all its versions.
    async fn template(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<ID>,
        key: String,
    ) -> GqlResult<Template> {
        let (app, c) = parts(ctx)?;
        Ok(Template(templates::get(
            app,
            c,
            opt_id("tenantId", tenant_id)?,
            &key,
        )?))
    }

    async fn drafting_defaults(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<ID>,
    ) -> GqlResult<DraftingDefaults> {
        let (app, c) = parts(ctx)?;
        Ok(
            templates::drafting_defaults(app, c, opt_id("tenantId", tenant_id)?)
                .await?
                .into(),
        )
    }
}

#[derive(Default)]
pub struct TemplateMutation;

#[Object]
impl TemplateMutation {
    /// Creates a template with version 1 as a draft.
    async fn create_template(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<ID>,
        input: CreateTemplateInput,
    ) -> GqlResult<Template> {
        let (app, c) = parts(ctx)?;
        let input = RestCreate {
            key: input.key,
            name: input.name,
            category: input.category.map(|c| c.as_str().to_string()),
            version: input.version.into(),
        };
        Ok(Template(
            templates::create(app, c, opt_id("tenantId", tenant_id)?, input).await?,
        ))
    }

    /// A new draft version, started from `basedOn` (default: the current version).
    async fn create_template_version(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<ID>,
        key: String,
        based_on: Option<u32>,
        input: TemplateVersionInput,
    ) -> GqlResult<TemplateVersion> {
        let (app, c) = parts(ctx)?;
        let (t, n) = templates::create_version(
            app,
            c,
            opt_id("tenantId", tenant_id)?,
            &key,
            based_on,
            input.into(),
        )
        .await?;
        Template(t)
            .version_view(n)
            .ok_or_else(|| ApiError::internal("the new version is missing").into())
    }

    async fn edit_template_draft(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<ID>,
        key: String,
        version: u32,
        input: TemplateVersionInput,
    ) -> GqlResult<TemplateVersion> {
        let (app, c) = parts(ctx)?;
        let t = templates::edit_draft(
            app,
            c,
            opt_id("tenantId", tenant_id)?,
            &key,
            version,
            input.into(),
        )
        .await?;
        version_of(t, version)
    }

    async fn submit_template_version(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<ID>,
        key: String,
        version: u32,
        note: Option<String>,
    ) -> GqlResult<TemplateVersion> {
        step(ctx, tenant_id, key, version, Review::Submit, note).await
    }

    /// Approves a submitted version and makes it current (operator or approver key).
    async fn approve_template_version(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<ID>,
        key: String,
        version: u32,
        note: Option<String>,
    ) -> GqlResult<TemplateVersion> {
        step(ctx, tenant_id, key, version, Review::Approve, note).await
    }

    async fn reject_template_version(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<ID>,
        key: String,
        version: u32,
        note: Option<String>,
    ) -> GqlResult<TemplateVersion> {
        step(ctx, tenant_id, key, version, Review::Reject, note).await
    }

    /// Makes an approved or archived version current again: the rollback.
    async fn make_template_version_current(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<ID>,
        key: String,
        version: u32,
    ) -> GqlResult<TemplateVersion> {
        step(ctx, tenant_id, key, version, Review::MakeCurrent, None).await
    }

    /// A test render; the exact context is recorded on the template's render log.
    async fn render_template(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<ID>,
        key: String,
        version: u32,
        context: Option<Json<Value>>,
        to: Option<String>,
    ) -> GqlResult<RenderedTemplate> {
        let (app, c) = parts(ctx)?;
        let r = templates::test_render(
            app,
            c,
            opt_id("tenantId", tenant_id)?,
            &key,
            version,
            context.map_or(Value::Null, |c| c.0),
            to,
        )
        .await?;
        Ok(RenderedTemplate {
            version,
            subject: r.subject,
            preview: r.preview,
            html: r.html,
            text: r.text,
            variant: r.variant,
            context: Json(r.context),
        })
    }

    /// Drafts a new version from a brief with a language model; saved as a draft only if
    /// it passes the same validation as a human edit.
    async fn generate_template_draft(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<ID>,
        key: String,
        brief: BriefInput,
        options: Option<DraftOptionsInput>,
    ) -> GqlResult<DraftResult> {
        let (app, c) = parts(ctx)?;
        let o = options.unwrap_or_default();
        let input = GenerateInput {
            brief: drafting::Brief {
                purpose: brief.purpose,
                audience: brief.audience,
                tone: brief.tone,
                call_to_action: brief.call_to_action,
                mandatory_facts: brief.mandatory_facts.unwrap_or_default(),
                prohibited_claims: brief.prohibited_claims.unwrap_or_default(),
            },
            variables: None,
            provider: o.provider,
            model: o.model,
            temperature: o.temperature,
        };
        Ok(
            templates::generate(app, c, opt_id("tenantId", tenant_id)?, &key, input)
                .await?
                .into(),
        )
    }

    /// Revises a version with a language model, following an instruction.
    async fn revise_template_draft(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<ID>,
        key: String,
        version: u32,
        instruction: String,
        options: Option<DraftOptionsInput>,
    ) -> GqlResult<DraftResult> {
        let (app, c) = parts(ctx)?;
        let o = options.unwrap_or_default();
        let input = ReviseInput {
            instruction,
            provider: o.provider,
            model: o.model,
            temperature: o.temperature,
        };
        Ok(
            templates::revise(app, c, opt_id("tenantId", tenant_id)?, &key, version, input)
                .await?
                .into(),
        )
    }

    async fn set_drafting_defaults(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<ID>,
        input: DraftingDefaultsGqlInput,
    ) -> GqlResult<DraftingDefaults> {
        let (app, c) = parts(ctx)?;
        let input = DraftingDefaultsInput {
            provider: input.provider,
            model: input.model,
            temperature: input.temperature,
            brand_voice: input.brand_voice,
            failover: input.failover,
        };
        Ok(
            templates::set_drafting_defaults(app, c, opt_id("tenantId", tenant_id)?, input)
                .await?
                .into(),
        )
    }

    /// Renders the template's current approved version and queues it, like `sendEmail`.
    async fn send_template_email(
        &self,
        ctx: &Context<'_>,
        tenant_id: Option<ID>,
        input: SendTemplateEmailInput,
    ) -> GqlResult<SendReceipt> {
        let (app, c) = parts(ctx)?;
        let r =
            templates::send_template(app, c, opt_id("tenantId", tenant_id)?, input.into(), None)
                .await?;
        Ok(r.into())
    }
}

fn version_of(t: tpl::Template, n: u32) -> GqlResult<TemplateVersion> {
    Template(t).version_view(n).ok_or_else(|| {
        ApiError::from(domain::DomainError::TemplateVersionNotFound { version: n }).into()
    })
}

async fn step(
    ctx: &Context<'_>,
    tenant_id: Option<ID>,
    key: String,
    version: u32,
    review: Review,
    note: Option<String>,
) -> GqlResult<TemplateVersion> {
    let (app, c) = parts(ctx)?;
    let t = templates::review(
        app,
        c,
        opt_id("tenantId", tenant_id)?,
        &key,
        version,
        review,
        note,
    )
    .await?;
    version_of(t, version)
}
