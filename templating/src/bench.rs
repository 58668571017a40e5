//! A render benchmark on a realistic template, so the send path's budget can be checked
//! against a number rather than a guess.

use std::time::{Duration, Instant};

use domain::template::{SubjectVariant, TemplateContent, TemplateVariable};
use serde_json::json;

use crate::{Compiled, Limits};

const HTML: &str = r#"<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>Order {{ order.number }} confirmed</title>
  <style>
    body { margin: 0; padding: 0; background: #f4f4f7; font-family: Helvetica, Arial, sans-serif; color: #33334d; }
    .wrapper { width: 100%; background: #f4f4f7; padding: 24px 0; }
    .card { max-width: 600px; margin: 0 auto; background: #ffffff; border-radius: 6px; padding: 32px; }
    .items td { padding: 8px 0; border-bottom: 1px solid #eaeaec; font-size: 14px; }
    .total td { padding-top: 12px; font-weight: bold; }
    .muted { color: #8a8aa0; font-size: 12px; }
  </style>
</head>
<body>
<div class="wrapper">
  <div class="card">
    <h1>Thanks for your order, {{ customer.first_name|title }}!</h1>
    <p>We have received order <strong>#{{ order.number }}</strong> placed on {{ order.placed_on }}.
    {% if order.express %}It ships by express delivery and should arrive within two working days.{% else %}It ships by standard delivery and should arrive within five working days.{% endif %}</p>
    <table class="items" width="100%" cellpadding="0" cellspacing="0" role="presentation">
      <tr><th align="left">Item</th><th align="right">Qty</th><th align="right">Price</th></tr>
      {% for item in order.items %}
      <tr class="{{ loop.cycle('odd', 'even') }}">
        <td>{{ item.name }}{% if item.variant %} <span class="muted">({{ item.variant }})</span>{% endif %}</td>
        <td align="right">{{ item.quantity }}</td>
        <td align="right">{{ order.currency }} {{ "%.2f"|format(item.unit_price * item.quantity) }}</td>
      </tr>
      {% endfor %}
      <tr><td colspan="2">Subtotal</td><td align="right">{{ order.currency }} {{ "%.2f"|format(order.subtotal) }}</td></tr>
      {% if coupon %}<tr><td colspan="2">Coupon {{ coupon.code|upper }}</td><td align="right">-{{ order.currency }} {{ "%.2f"|format(coupon.amount) }}</td></tr>{% endif %}
      <tr><td colspan="2">Shipping</td><td align="right">{% if order.shipping == 0 %}Free{% else %}{{ order.currency }} {{ "%.2f"|format(order.shipping) }}{% endif %}</td></tr>
      <tr class="total"><td colspan="2">Total</td><td align="right">{{ order.currency }} {{ "%.2f"|format(order.total) }}</td></tr>
    </table>
    <h2>Shipping to</h2>
    <p>{{ shipping_address.name }}<br>{{ shipping_address.line1 }}<br>{% if shipping_address.line2 %}{{ shipping_address.line2 }}<br>{% endif %}{{ shipping_address.postcode }} {{ shipping_address.city }}<br>{{ shipping_address.country|upper }}</p>
    <p><a href="{{ order_url }}" style="background:#3869d4;color:#ffffff;padding:10px 18px;border-radius:4px;text-decoration:none;">View your order</a></p>
    <p>Questions? Reply to this email or visit <a href="{{ support_url }}">our help centre</a>.</p>
  </div>
  {# locked: legal-footer #}
  <p class="muted" style="text-align:center;">
    Example Shop Ltd, 1 High Street, London EC1A 1AA, United Kingdom. Registered in England and Wales, company number 01234567.
    You receive this email because you placed an order with us. This is a transactional message about your purchase.
  </p>
  {# endlocked #}
</div>
</body>
</html>
"#;

const TEXT: &str = r#"Thanks for your order, {{ customer.first_name|title }}!

Order #{{ order.number }}, placed on {{ order.placed_on }}.
{% for item in order.items %}
- {{ item.quantity }} x {{ item.name }}{% if item.variant %} ({{ item.variant }}){% endif %}: {{ order.currency }} {{ "%.2f"|format(item.unit_price * item.quantity) }}
{%- endfor %}

Subtotal: {{ order.currency }} {{ "%.2f"|format(order.subtotal) }}
{% if coupon %}Coupon {{ coupon.code|upper }}: -{{ order.currency }} {{ "%.2f"|format(coupon.amount) }}
{% endif %}Shipping: {% if order.shipping == 0 %}free{% else %}{{ order.currency }} {{ "%.2f"|format(order.shipping) }}{% endif %}
Total: {{ order.currency }} {{ "%.2f"|format(order.total) }}

Shipping to: {{ shipping_address.name }}, {{ shipping_address.line1 }}, {{ shipping_address.postcode }} {{ shipping_address.city }}

View your order: {{ order_url }}
Help: {{ support_url }}

{# locked: legal-footer-text #}
Example Shop Ltd, 1 High Street, London EC1A 1AA, United Kingdom. Company number 01234567.
{# endlocked #}
"#;

fn var(name: &str, required: bool, default: Option<serde_json::Value>) -> TemplateVariable {
    TemplateVariable {
        name: name.to_owned(),
        required,
        default,
        description: None,
    }
}

/// An order confirmation: a subject with a variable and two variants, a preview, ~3 KB of
/// HTML with a loop over 8 line items, conditionals, filters and a locked legal footer, and a
/// text part with the same loop. Returns the content and a context for it.
pub fn realistic() -> (TemplateContent, serde_json::Value) {
    let content = TemplateContent {
        subject: "Your order #{{ order.number }} is confirmed".to_owned(),
        subject_variants: vec![
            SubjectVariant {
                subject: "Your order #{{ order.number }} is confirmed".to_owned(),
                weight: 1,
            },
            SubjectVariant {
                subject: "{{ customer.first_name|title }}, order #{{ order.number }} is on its way soon"
                    .to_owned(),
                weight: 1,
            },
        ],
        preview: Some(
            "{{ order.items|length }} items, {{ order.currency }} {{ \"%.2f\"|format(order.total) }}"
                .to_owned(),
        ),
        html: Some(HTML.to_owned()),
        text: Some(TEXT.to_owned()),
        variables: vec![
            var("customer", true, None),
            var("order", true, None),
            var("shipping_address", true, None),
            var("order_url", true, None),
            var("coupon", false, None),
            var(
                "support_url",
                false,
                Some(json!("https://shop.example.com/help")),
            ),
        ],
    };
    let items: Vec<serde_json::Value> = [
        ("Linen shirt", Some("M, sand"), 2, 39.5),
        ("Chino trousers", Some("32/32, navy"), 1, 59.0),
        ("Wool socks", None, 3, 7.25),
        ("Leather belt", Some("95 cm"), 1, 45.0),
        ("Canvas tote <limited>", None, 1, 18.0),
        ("Cotton T-shirt", Some("L, white"), 4, 14.99),
        ("Baseball cap", None, 1, 22.0),
        ("Gift wrapping", None, 1, 3.5),
    ]
    .iter()
    .map(|(name, variant, quantity, unit_price)| {
        json!({ "name": name, "variant": variant, "quantity": quantity, "unit_price": unit_price })
    })
    .collect();
    let context = json!({
        "customer": { "first_name": "ada", "last_name": "Lovelace", "email": "ada@example.com" },
        "order": {
            "number": "100-4821-7731",
            "placed_on": "12 March 2025",
            "express": false,
            "currency": "EUR",
            "items": items,
            "subtotal": 366.21,
            "shipping": 0,
            "total": 356.21
        },
        "coupon": { "code": "spring10", "amount": 10.0 },
        "shipping_address": {
            "name": "Ada Lovelace", "line1": "12 St James's Square", "line2": null,
            "postcode": "SW1Y 4JH", "city": "London", "country": "gb"
        },
        "order_url": "https://shop.example.com/orders/100-4821-7731?utm_source=email&utm_medium=transactional"
    });
    (content, context)
}

/// Renders [`realistic`] on the current thread for `duration`, with a different variant key
/// each time, and returns
/// `{"renders": n, "elapsed_s": f, "renders_per_s": f, "template_bytes": n}`.
pub fn run(duration: Duration) -> serde_json::Value {
    let (content, context) = realistic();
    let template_bytes = content.subject.len()
        + content
            .subject_variants
            .iter()
            .map(|v| v.subject.len())
            .sum::<usize>()
        + content.preview.as_ref().map_or(0, String::len)
        + content.html.as_ref().map_or(0, String::len)
        + content.text.as_ref().map_or(0, String::len);
    let compiled = match Compiled::new(&content, Limits::default()) {
        Ok(compiled) => compiled,
        Err(issues) => return json!({ "error": "the bench template is invalid", "issues": issues }),
    };
    let mut renders: u64 = 0;
    let mut failures: u64 = 0;
    let mut key = String::new();
    let start = Instant::now();
    loop {
        // Check the clock every 64 renders: reading it costs about as much as a small render.
        for _ in 0..64 {
            key.clear();
            key.push_str("recipient-");
            key.push_str(&renders.to_string());
            match compiled.render(&context, &key) {
                Ok(rendered) => {
                    std::hint::black_box(rendered);
                }
                Err(_) => failures += 1,
            }
            renders += 1;
        }
        if start.elapsed() >= duration {
            break;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    json!({
        "renders": renders,
        "elapsed_s": elapsed,
        "renders_per_s": renders as f64 / elapsed,
        "template_bytes": template_bytes,
        "failures": failures,
    })
}
