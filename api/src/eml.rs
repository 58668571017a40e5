//! Turns a ready `.eml` file into a send request, for `postledger send --eml`. The message
//! is taken apart with mail-parser and queued like any API send, so it gets the same
//! validation, the same events and a MIME rebuilt by the dispatcher.
use std::collections::BTreeMap;

use anyhow::{bail, Context};
use base64::Engine;
use mail_parser::{Address, HeaderName, MessageParser, MimeHeaders};

use crate::sending::{AddressInput, AddressList, AttachmentInput, SendRequest};

fn addresses(a: Option<&Address<'_>>) -> Option<AddressList> {
    let list: Vec<AddressInput> = a?
        .iter()
        .filter_map(|addr| {
            Some(AddressInput::Full {
                email: addr.address.as_deref()?.to_string(),
                name: addr.name.as_deref().map(str::to_string),
            })
        })
        .collect();
    if list.is_empty() {
        None
    } else {
        Some(AddressList::Many(list))
    }
}

pub fn send_request(bytes: &[u8]) -> anyhow::Result<SendRequest> {
    let msg = MessageParser::default()
        .parse(bytes)
        .context("the file is not a MIME message")?;
    let from = msg
        .from()
        .and_then(Address::first)
        .and_then(|a| {
            Some(AddressInput::Full {
                email: a.address.as_deref()?.to_string(),
                name: a.name.as_deref().map(str::to_string),
            })
        })
        .context("the message has no From address")?;
    let to = addresses(msg.to());
    if to.is_none() {
        bail!("the message has no To address");
    }
    let reply_to = msg
        .reply_to()
        .and_then(Address::first)
        .and_then(|a| Some(AddressInput::Plain(a.address.as_deref()?.to_string())));
    let mut headers = BTreeMap::new();
    for h in msg.headers() {
        if let HeaderName::Other(name) = &h.name {
            if let Some(v) = h.value.as_text() {
                if domain::message::settable_header(name) {
                    headers.insert(name.to_string(), v.to_string());
                }
            }
        }
    }
    let attachments: Vec<AttachmentInput> = msg
        .attachments()
        .map(|part| AttachmentInput {
            filename: part
                .attachment_name()
                .unwrap_or("attachment.bin")
                .to_string(),
            content_type: part.content_type().map(|ct| match ct.subtype() {
                Some(sub) => format!("{}/{}", ct.ctype(), sub),
                None => ct.ctype().to_string(),
            }),
            content: base64::engine::general_purpose::STANDARD.encode(part.contents()),
            content_id: part.content_id().map(str::to_string),
        })
        .collect();
    Ok(SendRequest {
        from: Some(from),
        to,
        cc: addresses(msg.cc()),
        bcc: addresses(msg.bcc()),
        reply_to,
        subject: msg.subject().map(str::to_string),
        html: msg.body_html(0).map(|b| b.into_owned()),
        text: msg.body_text(0).map(|b| b.into_owned()),
        headers: (!headers.is_empty()).then_some(headers),
        attachments: (!attachments.is_empty()).then_some(attachments),
        ..SendRequest::default()
    })
}
